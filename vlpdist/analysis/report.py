"""`vlpdist report STUDY`: the paper's tables and plots, rebuilt from the result records.

One table per architecture x fine-tuning mode x train fraction; rows are pretraining sets
(scratch, the baseline, and text-only, the control without regions, always first),
columns are downstream tasks by their study names (with the metric where the name does not
say it: a task of your own), and a cell is the best validation value of each run's
primary metric in %, mean ± sample std over seeds. Beside each task, the same models scored
with regions shuffled between samples: a score the shuffle does not lower (its gap within
the spread over seeds) is flagged "not grounded", since the image is not what it rests on.
Nothing is computed anywhere else: every number of report.md and the plots is in
results.csv, and every row of results.csv is a mean over `<study>/results/<run>.json`
records.

STUDY is a study config (its `run.output`/`study.name` locate the study) or a study root URL
(a directory holding results/), on any storage URL.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field

from vlpdist.analysis import findings
from vlpdist.analysis.plots import plots
from vlpdist.config import Config, load
from vlpdist.errors import VlpdistError
from vlpdist.storage import Storage, join
from vlpdist.study.grid import SCRATCH, TEXT_ONLY, study_root
from vlpdist.study.results import Results

BASELINES = (SCRATCH, TEXT_ONLY)  # first in every table, in this order
GROUNDED_MIN_GAP = 0.01  # a shuffle gap of at most 1 point is never taken as grounding
MODES = ("full", "frozen")  # the paper's order
TABLE_LABELS = ("arch", "pretrain", "task", "mode", "train_fraction")
CSV_COLUMNS = ("arch", "mode", "train_fraction", "pretrain", "pretrain_fraction", "task",
               "metric", "mean", "std", "n", "failed", "shuffled_mean", "gap_mean",
               "gap_spread", "grounded")  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One pretraining set x task: values as in the records (0..1)."""

    mean: float | None
    std: float | None  # sample std (ddof=1); None below two seeds
    n: int  # seeds that finished with a value
    failed: int  # runs recorded as failed (or finished without a value)
    shuffled: float | None = None  # mean score with regions shuffled between samples
    gap: float | None = None  # mean of each run's score minus its shuffled score
    gap_spread: float | None = None  # max - min of the gaps over seeds
    text_only: bool = False  # the control: no regions, nothing to shuffle

    @property
    def grounded(self) -> bool | None:
        """Whether the score rests on the image: its shuffle gap beyond the spread of the
        gaps over seeds (and above 1 point). None where there is nothing to judge."""
        if self.text_only or self.gap is None:
            return None
        return self.gap > max(self.gap_spread or 0.0, GROUNDED_MIN_GAP)

    def text(self) -> str:
        """The paper's style: '63.2 ± 0.4 (n=3)', in %; flagged when not grounded."""
        if self.n == 0:
            return f"failed ({self.failed} run{'s' * (self.failed != 1)})" if self.failed else ""
        value = f"{100 * self.mean:.1f}" + (f" ± {100 * self.std:.1f}" if self.n >= 2 else "")
        value += f" (n={self.n}" + (f", {self.failed} failed)" if self.failed else ")")
        return value + (" · not grounded" if self.grounded is False else "")

    def shuffled_text(self) -> str:
        """The score with shuffled regions and its gap, in %: '41.0 (−3.2)'."""
        if self.text_only:
            return "no regions"
        if self.shuffled is None or self.gap is None:
            return ""
        return f"{100 * self.shuffled:.1f} ({-100 * self.gap:+.1f})"


@dataclass
class Table:
    arch: str
    mode: str
    train_fraction: float
    tasks: list[str]  # columns, sorted
    rows: list[tuple[str, dict[str, Cell]]]  # (pretraining set label, cells by task)
    metrics: dict[str, str] = field(default_factory=dict)  # task -> primary metric name
    origins: dict[str, tuple[str, float]] = field(default_factory=dict)  # label -> (set, frac)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (run, error)

    @property
    def heading(self) -> str:
        return f"{self.arch} · {self.mode} · {_pct(self.train_fraction)} of train"

    def column(self, task: str) -> str:
        """A task's column: its name, with its metric unless the metric already says it
        ('vqa' for vqa_accuracy; 'memes (accuracy)' for a task of your own)."""
        metric = self.metrics.get(task)
        return task if not metric or metric.startswith(task) else f"{task} ({metric})"


# ---------------------------------------------------------------- records


def load_records(root_url: str, storage: Storage | None = None) -> list[dict]:
    """Every record under `<root_url>/results/` (the study's results store), by run name; an
    unreadable one becomes a failed record naming its file, so that it is reported rather
    than dropped."""
    records = Results(storage or Storage(), root_url).all()
    return sorted(records.values(), key=lambda r: str(r.get("run", "")))


def labels(record: dict) -> dict | None:
    """A run's grid coordinates, under "study" in done and failed records alike (results.py)."""
    found = (record.get("study") or {}).get("labels")
    return found if isinstance(found, dict) else None


def _placed(record: dict) -> dict | None:
    """The labels of a fine-tuning record that belongs in a table, else None."""
    lab = labels(record)
    if record.get("kind") != "finetune" or not lab or any(k not in lab for k in TABLE_LABELS):
        return None
    return lab


def _set_key(lab: dict) -> tuple[str, float]:
    pretrain = str(lab["pretrain"])
    default = 0.0 if pretrain == SCRATCH else 1.0
    return pretrain, float(lab.get("pretrain_fraction", default))


def _set_order(key: tuple[str, float]) -> tuple:
    base = BASELINES.index(key[0]) if key[0] in BASELINES else len(BASELINES)
    return base, key[0], -key[1]


def _table_order(key: tuple[str, str, float]) -> tuple:
    arch, mode, frac = key  # full before frozen, then the whole train split first
    return arch, MODES.index(mode) if mode in MODES else len(MODES), mode, -frac


def _pct(f: float) -> str:
    return f"{f * 100:g}%"


def row_label(pretrain: str, fraction: float) -> str:
    """'coco', or 'coco (50%)' for a part of the set; the baselines as they are."""
    whole = pretrain in BASELINES or fraction == 1
    return pretrain if whole else f"{pretrain} ({_pct(fraction)})"


def _value(record: dict) -> float | None:
    value = (record.get("metric") or {}).get("value")
    ok = record.get("status") == "done" and isinstance(value, int | float) and math.isfinite(value)
    return float(value) if ok else None


def _cell(runs: list[dict]) -> Cell:
    done = [r for r in runs if _value(r) is not None]
    values = [_value(r) for r in done]
    n = len(values)
    mean = statistics.mean(values) if n else None
    std = statistics.stdev(values) if n >= 2 else None
    metric = [r.get("metric") or {} for r in done]
    text_only = bool(metric) and all(m.get("text_only") for m in metric)
    shuffled = [m.get("shuffled") for m in metric]
    gaps = [m.get("image_shuffle_gap") for m in metric]
    if not n or text_only or any(not isinstance(x, int | float) for x in shuffled + gaps):
        return Cell(mean, std, n, len(runs) - n, text_only=text_only)
    return Cell(mean, std, n, len(runs) - n, statistics.mean(shuffled), statistics.mean(gaps),
                max(gaps) - min(gaps), text_only)  # fmt: skip


def tables(records: list[dict]) -> list[Table]:
    """The paper's tables: arch x mode x train fraction; every table of an architecture has
    the same rows (scratch first, present even without records), so tables line up."""
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    sets: dict[str, set] = defaultdict(lambda: {(SCRATCH, 0.0)})
    for rec in records:
        if lab := _placed(rec):
            groups[(lab["arch"], lab["mode"], float(lab["train_fraction"]))].append((lab, rec))
            sets[lab["arch"]].add(_set_key(lab))
    out = []
    for arch, mode, frac in sorted(groups, key=_table_order):
        group = groups[(arch, mode, frac)]
        tasks = sorted({str(lab["task"]) for lab, _ in group})
        t = Table(arch, mode, frac, tasks, [])
        for key in sorted(sets[arch], key=_set_order):
            label = row_label(*key)
            t.origins[label] = key
            cells = {}
            for task in tasks:
                runs = [r for lab, r in group if _set_key(lab) == key and str(lab["task"]) == task]
                cells[task] = _cell(runs)
                for r in runs:
                    if _value(r) is None:
                        t.failures.append((str(r.get("run")), r.get("error") or "no metric value"))
                    elif name := (r.get("metric") or {}).get("name"):
                        t.metrics.setdefault(task, name)
            t.rows.append((label, cells))
        t.failures.sort()
        out.append(t)
    return out


def grounding(records: list[dict]) -> dict[str, list[tuple[str, dict]]]:
    """arch -> [(pretraining set label, the probe's result)] of the pretraining records that
    carry one (`vlpdist analyze grounding`, run by the study on every export)."""
    out: dict[str, list] = defaultdict(list)
    for rec in records:
        lab, probe = labels(rec), rec.get("grounding")
        if rec.get("kind") != "pretrain" or not lab or not isinstance(probe, dict):
            continue
        if isinstance(probe.get("kinds"), dict):
            out[str(lab["arch"])].append((row_label(*_set_key(lab)), probe))
    return {arch: sorted(rows, key=lambda r: r[0]) for arch, rows in sorted(out.items())}


def grounding_markdown(found: dict[str, list[tuple[str, dict]]]) -> str:
    if not found:
        return ""
    parts = ["## Grounding of the pretrained models", "",
             "Masked words of each kind predicted with the image's own regions / with another "
             "image's (% correct; the difference in brackets), on held-out captions. A model "
             "that reads the word off the image loses it when the regions are shuffled.", ""]  # fmt: skip
    for arch, rows in found.items():
        kinds = list(dict.fromkeys(k for _, p in rows for k in p["kinds"]))
        itm = any("itm" in p for _, p in rows)
        head = ["pretraining", *kinds, *(["itm (own / other's)"] if itm else [])]
        parts += [f"### {arch}", "", "| " + " | ".join(head) + " |",
                  "|:---|" + "---:|" * (len(head) - 1)]  # fmt: skip
        for label, p in rows:
            cells = []
            for k in kinds:
                v = p["kinds"].get(k) or {}
                t, sh = v.get("true"), v.get("shuffled")
                cells.append("" if t is None else f"{100 * t:.1f} / {100 * sh:.1f} "
                             f"({100 * (t - sh):+.1f})")  # fmt: skip
            if itm:
                i = p.get("itm") or {}
                cells.append("" if not i else f"{100 * i['true']:.1f} / {100 * i['shuffled']:.1f}")
            parts.append(f"| {label} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- text outputs


def markdown(tables: list[Table]) -> str:
    if not tables:
        return "No fine-tuning records yet.\n"
    parts = []
    for t in tables:
        metrics = ", ".join(f"{k}: {t.metrics.get(k, '?')}" for k in t.tasks)
        lines = [f"## {t.heading}", "",
                 f"Best validation score (%), mean ± std over seeds. Metrics: {metrics}. "
                 "Shuffled regions: the same models with each text paired with another "
                 "image's regions (change in points); \"not grounded\": the shuffle costs no "
                 "more than the spread over seeds. text-only: the control without regions.",
                 "", "| pretraining | " + " | ".join(
                     f"{t.column(k)} | {t.column(k)} · shuffled regions" for k in t.tasks) + " |",
                 "|:---|" + "---:|---:|" * len(t.tasks)]  # fmt: skip
        for label, cells in t.rows:
            lines.append(f"| {label} | " + " | ".join(
                f"{cells[k].text()} | {cells[k].shuffled_text()}" for k in t.tasks) + " |")  # fmt: skip
        if t.failures:
            lines += ["", "Failed runs:"] + [f"- `{run}`: {err}" for run, err in t.failures]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def csv_text(tables: list[Table]) -> str:
    """Long format, one row per table cell, values as in the records (0..1)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for t in tables:
        for label, cells in t.rows:
            pretrain, pfrac = t.origins[label]
            for task in t.tasks:
                c = cells[task]
                w.writerow([t.arch, t.mode, repr(t.train_fraction), pretrain, repr(pfrac), task,
                            t.metrics.get(task, ""), _num(c.mean), _num(c.std), c.n, c.failed,
                            _num(c.shuffled), _num(c.gap), _num(c.gap_spread),
                            "" if c.grounded is None else str(c.grounded).lower()])  # fmt: skip
    return buf.getvalue()


def _num(x: float | None) -> str:
    return "" if x is None else repr(x)


# ---------------------------------------------------------------- drift curves (for the plots)


def _floats(x) -> list[float] | None:
    """A per-layer list of numbers; None entries (undefined values) become NaN."""
    if not isinstance(x, list) or not x:
        return None
    if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in x):
        return None
    return [math.nan if v is None else float(v) for v in x]


def _layer_mean(arrays: list[list[float]]) -> list[float]:
    """Per-layer mean of arrays that may differ in length; NaN and padding do not count."""
    depth = max(map(len, arrays))
    out = []
    for i in range(depth):
        values = [a[i] for a in arrays if i < len(a) and not math.isnan(a[i])]
        out.append(statistics.mean(values) if values else math.nan)
    return out


def _weights(stream: dict) -> dict:
    """{weight: {"l1": [...], "angle_deg": [...]}} of one stream of a record's drift field,
    which holds it under "weights" (with "layers" and means beside it) or directly."""
    inner = stream.get("weights")
    return inner if isinstance(inner, dict) else stream


def drift_curves(records: list[dict]) -> dict[str, dict[tuple[str, str], dict]]:
    """arch -> (pretraining label, mode) -> stream -> {"angle_deg"|"l1": per-layer means}:
    over a run's weights (query, key, ...) first, then over the runs of the group."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for rec in records:
        lab, drift = _placed(rec), rec.get("drift")
        if not lab or _value(rec) is None or not isinstance(drift, dict):
            continue
        streams = drift.get("streams")
        if not isinstance(streams, dict):
            continue
        group = acc[str(lab["arch"])][(row_label(*_set_key(lab)), str(lab["mode"]))]
        for stream, body in streams.items():
            if not isinstance(body, dict):
                continue
            for stat in ("angle_deg", "l1"):
                per_weight = [_floats(w.get(stat)) for w in _weights(body).values()
                              if isinstance(w, dict)]  # fmt: skip
                per_weight = [p for p in per_weight if p]
                if per_weight:
                    group[str(stream)][stat].append(_layer_mean(per_weight))
    curves = {
        arch: {
            key: {
                s: {stat: _layer_mean(v) for stat, v in stats.items()} for s, stats in per.items()
            }
            for key, per in groups.items()
            if per  # a run whose drift field held nothing usable
        }
        for arch, groups in acc.items()
    }
    return {arch: groups for arch, groups in curves.items() if groups}


# ---------------------------------------------------------------- the command


def _resolve(study: str, overrides) -> tuple[str, Storage]:
    """(study root URL, storage) from a study config file or a study root URL."""
    if study.endswith((".yaml", ".yml")):
        cfg = load(Config, study, list(overrides), command="study")
        return study_root(cfg), Storage(cfg.storage)
    bad = [o for o in overrides if not o.startswith("storage.")]
    if bad:
        raise VlpdistError(
            f"vlpdist report {study}: with a study root URL only storage.* overrides apply, "
            f"not {bad[0]!r} (pass the study's config file instead)"
        )
    return study.rstrip("/"), Storage(load(Config, None, list(overrides), command="study").storage)


def report(study: str, out: str | None = None, overrides=()) -> dict:
    """Write report.md, results.csv and plots/*.png to `out` (default <study root>/report);
    returns their URLs and the number of tables."""
    return _report(study, out, overrides)[0]


def _report(study: str, out: str | None, overrides) -> tuple[dict, list[Table], str]:
    root, storage = _resolve(study, overrides)
    records = load_records(root, storage)
    if not records:
        raise VlpdistError(
            f"no result records under {join(root, 'results')}: run `vlpdist study` first"
        )
    out = (out or join(root, "report")).rstrip("/")
    tabs = tables(records)
    probes = grounding_markdown(grounding(records))
    unplaced = [r for r in records if r.get("kind") != "pretrain" and not _placed(r)]
    with tempfile.TemporaryDirectory(prefix="vlpdist-report-") as tmp:
        written = plots(tabs, grounding(records), drift_curves(records), os.path.join(tmp, "plots"))
        names = [f"plots/{n}" for n in written]
        done = [r for r in records if r.get("status") == "done"]
        doc = [f"# Report: {root}", "",
               f"{len(records)} result records: {len(done)} done, "
               f"{len(records) - len(done)} failed; "
               f"{sum(r.get('kind') == 'pretrain' for r in records)} pretraining runs. "
               "Every number below is in results.csv (values as recorded, 0..1).", "",
               markdown(tabs), probes, findings.markdown(findings.findings(tabs))]  # fmt: skip
        if names:
            doc += ["## Plots", ""] + [f"![{n}]({n})" for n in names] + [""]
        if unplaced:
            doc += ["## Records in no table", ""]
            doc += [f"- `{r.get('run')}`: {r.get('error') or 'no grid labels'}" for r in unplaced]
        files = {"report.md": "\n".join(doc).rstrip() + "\n", "results.csv": csv_text(tabs)}
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        for name in [*files, *names]:
            storage.put_file(os.path.join(tmp, name), join(out, name))
    result = {
        "markdown": join(out, "report.md"),
        "csv": join(out, "results.csv"),
        "plots": [join(out, n) for n in names],
        "tables": len(tabs),
    }
    return result, tabs, probes


def main(args) -> int:
    """CLI entry (args.study, args.out, args.overrides): writes the report, prints the tables."""
    result, tabs, probes = _report(args.study, args.out, getattr(args, "overrides", None) or ())
    sys.stdout.write(markdown(tabs) + (f"\n{probes}" if probes else ""))
    sys.stdout.write("\n" + findings.markdown(findings.findings(tabs)))
    print(f"\nwrote {result['markdown']}, {result['csv']} and {len(result['plots'])} plots "
          f"({result['tables']} tables)")  # fmt: skip
    return 0
