"""The paper's research questions answered from a study's tables, one sentence each.

Singh, Goswami and Parikh (2020) ask which pretraining data transfers best; their findings
compare named pretraining sets. Each question here is a comparison of table cells (means over
seeds) made in every context the study holds (architecture x mode x train fraction x task),
then summed up in one sentence: how often it goes which way, by how many points, how often the
difference exceeds the spread over seeds, and whether the scores it rests on are grounded
(their shuffled-regions gap beyond the spread; `report.Cell.grounded`). A question whose sets
the study lacks says so rather than guessing.

The sets are known by the paper's names (the study config's `pretrain_sets` keys): that is the
vocabulary of the question, not a guess about the data. In-domain means COCO images and their
text, as in the paper's VQA experiments.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vlpdist.study.grid import SCRATCH, TEXT_ONLY

if TYPE_CHECKING:  # report imports this module to write the section
    from vlpdist.analysis.report import Cell, Table

BASELINES = (SCRATCH, TEXT_ONLY)

IN_DOMAIN = ("coco", "vqa_p")  # COCO images with human captions / VQA questions
OUT_OF_DOMAIN = "cc"  # Conceptual Captions: web images and alt-text
OUT_OF_DOMAIN_SMALL = "cc_small"  # CC cut to COCO's size
GENERATED = "ccg"  # captions generated for COCO images by a CC-trained captioner
ARCHS = ("visual_bert", "vilbert")

Context = tuple[str, str, float, str]  # arch, mode, train fraction, task


@dataclass(frozen=True)
class Score:
    """A derived value with a spread, compared like a cell (a gain over scratch)."""

    mean: float
    std: float | None
    grounded: bool | None = None


@dataclass(frozen=True)
class Comparison:
    """One context's `a` against `b`: the difference of their means and the spreads."""

    context: Context
    a: str
    b: str
    cell_a: Cell | Score
    cell_b: Cell | Score

    @property
    def delta(self) -> float:
        return self.cell_a.mean - self.cell_b.mean

    @property
    def beyond_spread(self) -> bool | None:
        """|a - b| above the two sample stds together; None with a single seed."""
        if self.cell_a.std is None or self.cell_b.std is None:
            return None
        return abs(self.delta) > self.cell_a.std + self.cell_b.std


@dataclass(frozen=True)
class Finding:
    question: str
    sentence: str
    comparisons: int  # 0: the study cannot answer it


def _cells(tables: list[Table]) -> dict[Context, dict[str, Cell]]:
    """context -> pretraining set -> cell, whole sets only (a fraction of a set is another
    question), cells with a value only."""
    out: dict[Context, dict[str, Cell]] = {}
    for t in tables:
        for label, cells in t.rows:
            name, fraction = t.origins[label]
            if name not in BASELINES and fraction != 1.0:
                continue
            for task, cell in cells.items():
                if cell.mean is not None:
                    out.setdefault((t.arch, t.mode, t.train_fraction, task), {})[name] = cell
    return out


def _best(cells: dict[str, Cell], names) -> str | None:
    present = [n for n in names if n in cells]
    return max(present, key=lambda n: cells[n].mean) if present else None


def _pretrained(cells: dict[str, Cell]) -> list[str]:
    return [n for n in cells if n not in BASELINES]


def _where(c: Context) -> str:
    arch, mode, frac, task = c
    return f"{arch} · {mode} · {frac * 100:g}% · {task}"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _grounding(cells: list[Cell | Score]) -> str:
    unique = {id(c): c for c in cells}.values()  # a cell can be in several comparisons
    judged = [c.grounded for c in unique if c.grounded is not None]
    if not judged:
        return ""
    if not any(judged):
        return (" None of these scores is grounded (shuffling the regions costs no more than "
                "the spread over seeds): this compares language priors, not visio-linguistic "
                "transfer.")  # fmt: skip
    return (f" {sum(judged)} of the {len(judged)} scores compared "
            f"{'is' if sum(judged) == 1 else 'are'} grounded; the others compare language "
            "priors.")  # fmt: skip


Name = str | tuple[str, str]  # a side of a comparison: (short, long) or one name for both


def _summary(question: str, comps: list[Comparison], a: Name, b: Name, missing: str) -> Finding:
    """'A beats B: a ahead in w, b ahead in l, level in t of n comparisons; mean a - b +x
    points (j of n beyond the spread over seeds); largest: ...' plus the grounding of the
    cells compared. The verdict counts the comparisons each way; level ones (the same
    score: often one constant answer) count for neither."""
    (a, long_a), (b, long_b) = (x if isinstance(x, tuple) else (x, x) for x in (a, b))
    if not comps:
        return Finding(question, f"Not in this study: {missing}.", 0)
    n = len(comps)
    ahead = sum(c.delta > 0 for c in comps)
    behind = sum(c.delta < 0 for c in comps)
    mean = statistics.mean(c.delta for c in comps)
    judged = [c for c in comps if c.beyond_spread is not None]
    beyond = [c for c in judged if c.beyond_spread]
    spread = (f"{len(beyond)} of {len(judged)} beyond the spread over seeds" if judged
              else "one seed each, so no spread to judge by")  # fmt: skip
    top = max(comps, key=lambda c: abs(c.delta))
    verdict = (f"{long_a} beats {long_b}" if ahead > behind else f"{long_b} beats {long_a}"
               if behind > ahead else f"neither {long_a} nor {long_b} wins")  # fmt: skip
    sentence = (f"{verdict}: {a} ahead in {ahead}, {b} ahead in "
                f"{behind}, level in {n - ahead - behind} of {n} comparisons; mean {a} - {b} "
                f"{_pts(mean)} points ({spread}); largest at {_where(top.context)}: {top.a} "
                f"{100 * top.cell_a.mean:.1f} vs {top.b} {100 * top.cell_b.mean:.1f}.")  # fmt: skip
    sentence += _grounding([x for c in comps for x in (c.cell_a, c.cell_b)])
    return Finding(question, sentence, n)


def _pairwise(index, pick_a: Callable, pick_b: Callable) -> list[Comparison]:
    out = []
    for ctx, cells in sorted(index.items()):
        a, b = pick_a(cells), pick_b(cells)
        if a and b and a != b:
            out.append(Comparison(ctx, a, b, cells[a], cells[b]))
    return out


def _named(name: str) -> Callable:
    return lambda cells: name if name in cells else None


def findings(tables: list[Table]) -> list[Finding]:
    index = _cells(tables)
    out = [
        _summary("Does pretraining on data close to the task's domain help most?",
                 _pairwise(index, lambda c: _best(c, IN_DOMAIN), _named(OUT_OF_DOMAIN)),
                 ("in-domain", "in-domain pretraining (the better of coco and vqa_p)"),
                 ("cc", "out-of-domain cc"),
                 "it needs coco or vqa_p and cc"),
        _summary("Is bigger pretraining data always better?",
                 _pairwise(index, _named(OUT_OF_DOMAIN), _named(OUT_OF_DOMAIN_SMALL)),
                 "cc", "cc_small",
                 "it needs cc and cc_small"),
        _summary("Do generated in-domain captions beat out-of-domain text?",
                 _pairwise(index, _named(GENERATED), _named(OUT_OF_DOMAIN)),
                 ("ccg", "generated in-domain captions (ccg)"), "cc",
                 "it needs ccg and cc"),
    ]  # fmt: skip
    out.append(_low_resource(index))
    out.append(_architectures(index))
    out.append(_full_vs_frozen(index))
    out.append(_controls(index))
    return out


def _low_resource(index) -> Finding:
    """The best pretrained set's gain over scratch, at the smallest vs the largest fraction."""
    q = "Does pretraining help more when the downstream data is scarce?"
    fracs = sorted({ctx[2] for ctx in index})
    comps = []
    for (arch, mode, frac, task), cells in sorted(index.items()):
        high = index.get((arch, mode, fracs[-1], task), {})
        if frac != fracs[0] or len(fracs) < 2 or SCRATCH not in cells or SCRATCH not in high:
            continue
        best_low, best_high = _best(cells, _pretrained(cells)), _best(high, _pretrained(high))
        if best_low and best_high:
            comps.append(Comparison((arch, mode, frac, task), f"{best_low}'s gain at "
                                    f"{frac * 100:g}%", f"{best_high}'s at {fracs[-1] * 100:g}%",
                                    _gain(cells, best_low), _gain(high, best_high)))  # fmt: skip
    low, high = f"{fracs[0] * 100:g}%", f"{fracs[-1] * 100:g}%"
    return _summary(q, comps, (low, f"the best set's gain over scratch at {low}"),
                    (high, f"its gain at {high}"),
                    "it needs scratch and two train fractions")  # fmt: skip


def _gain(cells: dict[str, Cell], name: str) -> Score:
    """A set's gain over scratch; its spread is the two cells' stds together."""
    a, b = cells[name], cells[SCRATCH]
    return Score(a.mean - b.mean, None if a.std is None or b.std is None else a.std + b.std)


def _architectures(index) -> Finding:
    comps = []
    for (arch, mode, frac, task), cells in sorted(index.items()):
        other = index.get(("vilbert", mode, frac, task))
        if arch != "visual_bert" or not other:
            continue
        a, b = _best(cells, _pretrained(cells)), _best(other, _pretrained(other))
        if a and b:
            comps.append(Comparison((arch, mode, frac, task), f"visual_bert/{a}",
                                    f"vilbert/{b}", cells[a], other[b]))  # fmt: skip
    return _summary("VisualBERT or ViLBERT?", comps,
                    ("VisualBERT", "VisualBERT (its best set)"),
                    ("ViLBERT", "ViLBERT (its best set)"),
                    "it needs both architectures")  # fmt: skip


def _full_vs_frozen(index) -> Finding:
    """Whether fine-tuning and a frozen base rank the pretraining sets alike."""
    q = "Do the best fine-tuned and the best frozen-base pretraining agree?"
    pairs = []
    for (arch, mode, frac, task), cells in sorted(index.items()):
        frozen = index.get((arch, "frozen", frac, task))
        if mode != "full" or not frozen:
            continue
        a, b = _best(cells, _pretrained(cells)), _best(frozen, _pretrained(frozen))
        if a and b:
            pairs.append(((arch, frac, task), a, b, [cells[a], frozen[b]]))
    if not pairs:
        return Finding(q, "Not in this study: it needs full and frozen runs.", 0)
    agree = sum(a == b for _ctx, a, b, _cells in pairs)
    shown = "; ".join(f"{arch} · {frac * 100:g}% · {task}: {a} {100 * c[0].mean:.1f} / "
                      f"{b} {100 * c[1].mean:.1f}"
                      for (arch, frac, task), a, b, c in pairs[:4])  # fmt: skip
    more = f"; and {len(pairs) - 4} more" if len(pairs) > 4 else ""
    sentence = (f"The best pretraining set fine-tuned and frozen is the same in {agree} of "
                f"{len(pairs)} contexts (fine-tuned / frozen: {shown}{more}).")  # fmt: skip
    return Finding(q, sentence + _grounding([x for *_, c in pairs for x in c]), len(pairs))


def _controls(index) -> Finding:
    """The best pretrained model against the text-only control of the same context."""
    comps = _pairwise(index, lambda c: _best(c, _pretrained(c)), _named(TEXT_ONLY))
    return _summary("Do the models use the image at all?", comps,
                    ("pretrained", "the best pretrained model"),
                    ("text-only", "the text-only control"),
                    "it needs the text-only control (study.controls)")  # fmt: skip


def markdown(found: list[Finding]) -> str:
    if not found:
        return ""
    lines = ["## Findings", "",
             "The paper's questions, answered from the tables above (differences in points; "
             "\"beyond the spread\": larger than the two cells' sample stds over seeds "
             "together).", ""]  # fmt: skip
    lines += [f"- **{f.question}** {f.sentence}" for f in found]
    return "\n".join(lines) + "\n"
