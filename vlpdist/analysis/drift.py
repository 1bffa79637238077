"""Representation drift: how far fine-tuning moved each self-attention weight.

After Singh, Goswami & Parikh (2020), "Are we pretraining it right?": for every layer and
every attention projection (query, key, value, output) of a pretrained model and of a model
fine-tuned from it, two distances between the *weight matrices* (biases and LayerNorms are
left out, as in the paper):

- `l1`: the mean absolute difference, mean |a - b| over the matrix's entries;
- `angle_deg`: the angle between the flattened matrices, arccos(cos(a, b)) in degrees.
  It is computed in float64 as 2 atan2(|â - b̂|, |â + b̂|) (â = a/|a|), which equals
  arccos(clip(cos, -1, 1)) but keeps its precision near 0° and 180°, where arccos of a
  rounded cosine loses half the digits; identical matrices give exactly 0.

Rows are named by `stream`:
- VisualBERT: `single` (its one BERT), layers `encoder.encoder.layer.{i}`.
- ViLBERT: `text` (`layer.{i}`), `visual` (`v_layer.{i}`) and `co`, the co-attention
  blocks (`c_layer.{i}`, in the order they run). A co-attention block has one set of
  projections per stream, so its weights carry the stream they belong to: `query_v`,
  `key_v`, `value_v` project the visual stream and `output_v` writes the visual stream's
  update (vilbert's query1/key1/value1/dense1); `query_t`, `key_t`, `value_t`, `output_t`
  likewise for text (query2/key2/value2/dense2). Visual regions attending to text thus use
  query_v with key_t/value_t and output_v; text attending to regions uses query_t with
  key_v/value_v and output_t.

The two exports must be the same architecture and sizes; their heads (pretraining vs task)
differ and are never read. Exports at storage URLs are fetched to a temporary directory.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import tempfile

import torch
from safetensors import safe_open

from vlpdist.errors import VlpdistError
from vlpdist.models.export import CONFIG, WEIGHTS, read_config
from vlpdist.storage import Storage, is_local, join, split_protocol

SELF_ATTENTION = {
    "query": "attention.self.query.weight",
    "key": "attention.self.key.weight",
    "value": "attention.self.value.weight",
    "output": "attention.output.dense.weight",
}
CO_ATTENTION = {
    "query_v": "biattention.query1.weight",
    "key_v": "biattention.key1.weight",
    "value_v": "biattention.value1.weight",
    "output_v": "biOutput.dense1.weight",
    "query_t": "biattention.query2.weight",
    "key_t": "biattention.key2.weight",
    "value_t": "biattention.value2.weight",
    "output_t": "biOutput.dense2.weight",
}
# arch -> (stream, parameter prefix of layer i, number of layers from the export's sizes, weights)
STREAMS = {
    "visual_bert": [
        ("single", "encoder.encoder.layer.{}.", lambda s: s["num_layers"], SELF_ATTENTION),
    ],
    "vilbert": [
        ("text", "encoder.encoder.layer.{}.", lambda s: s["num_layers"], SELF_ATTENTION),
        ("visual", "encoder.encoder.v_layer.{}.", lambda s: s["v_num_layers"], SELF_ATTENTION),
        ("co", "encoder.encoder.c_layer.{}.", lambda s: len(s["t_biattention_id"]), CO_ATTENTION),
    ],
}  # fmt: skip
COLUMNS = ["arch", "stream", "layer", "weight", "param", "l1", "angle_deg"]


# ---------------------------------------------------------------- the measure


def distances(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(mean |a - b|, angle in degrees between the flattened a and b), in float64. The
    angle of a zero matrix with a non-zero one is undefined: NaN."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    l1 = float((a - b).abs().mean())
    if torch.equal(a, b):
        return l1, 0.0
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return l1, math.nan
    ua, ub = a / na, b / nb
    return l1, math.degrees(2.0 * math.atan2(float((ua - ub).norm()), float((ua + ub).norm())))


@contextlib.contextmanager
def local_export(url: str, tmp: str, storage: Storage | None = None):
    """A local directory holding `url`'s config and weights (the tokenizer is not needed)."""
    if is_local(url):
        yield split_protocol(url)[1]
        return
    storage = storage or Storage()
    present = set(storage.find(url))
    for name in (CONFIG, WEIGHTS):
        if join(url, name) not in present:
            raise VlpdistError(f"{join(url, name)}: not found (not a vlpdist export or incomplete)")
    local = os.path.join(tmp, "export")
    for name in (CONFIG, WEIGHTS):
        storage.get_file(join(url, name), os.path.join(local, name))
    try:
        read_config(local)  # format errors name the URL, not our temporary copy
    except VlpdistError as e:
        raise VlpdistError(str(e).replace(local, url.rstrip("/"))) from None
    yield local


def _check_same_model(pretrained: str, a: dict, finetuned: str, b: dict) -> None:
    if a["arch"] != b["arch"]:
        raise VlpdistError(
            f"{pretrained} is {a['arch']}/{a['flavor']} but {finetuned} is "
            f"{b['arch']}/{b['flavor']}: drift compares one architecture before and after "
            f"fine-tuning"
        )
    if a["arch"] not in STREAMS:
        raise VlpdistError(f"{pretrained}: no drift layout for architecture {a['arch']!r}")
    differ = sorted(
        k for k in a["sizes"].keys() | b["sizes"].keys() if a["sizes"].get(k) != b["sizes"].get(k)
    )
    if differ:
        k = differ[0]
        raise VlpdistError(
            f"{pretrained} and {finetuned} differ in size ({k}: {a['sizes'].get(k)} vs "
            f"{b['sizes'].get(k)}): drift compares one model before and after fine-tuning"
        )


def drift(pretrained: str, finetuned: str, storage: Storage | None = None) -> list[dict]:
    """One row per (stream, layer, weight) of the attention weight matrices (not biases, as in
    the paper): {"arch", "stream", "layer", "weight", "param", "l1", "angle_deg"}; `param` is
    the parameter's name in the exports. Streams and weight names: see the module docstring.
    `pretrained`/`finetuned` are export directories or storage URLs."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="vlpdist-drift-"))
        dir_a = stack.enter_context(local_export(pretrained, os.path.join(tmp, "a"), storage))
        dir_b = stack.enter_context(local_export(finetuned, os.path.join(tmp, "b"), storage))
        ca, cb = read_config(dir_a), read_config(dir_b)
        _check_same_model(pretrained, ca, finetuned, cb)
        fa = stack.enter_context(safe_open(os.path.join(dir_a, WEIGHTS), "pt"))
        fb = stack.enter_context(safe_open(os.path.join(dir_b, WEIGHTS), "pt"))
        keys = {pretrained: set(fa.keys()), finetuned: set(fb.keys())}
        arch, rows = ca["arch"], []
        for stream, prefix, count, weights in STREAMS[arch]:
            for layer in range(count(ca["sizes"])):
                for weight, suffix in weights.items():
                    param = prefix.format(layer) + suffix
                    for url, have in keys.items():
                        if param not in have:
                            raise VlpdistError(f"{url}: no weight {param} (not as its config says)")
                    a, b = fa.get_tensor(param), fb.get_tensor(param)
                    if a.shape != b.shape:
                        raise VlpdistError(
                            f"{pretrained} and {finetuned}: {param} has shape "
                            f"{tuple(a.shape)} vs {tuple(b.shape)}"
                        )
                    l1, angle = distances(a, b)
                    rows.append(
                        {
                            "arch": arch,
                            "stream": stream,
                            "layer": layer,
                            "weight": weight,
                            "param": param,
                            "l1": l1,
                            "angle_deg": angle,
                        }
                    )
    return rows


# ---------------------------------------------------------------- reporting


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else v


def _streams(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["stream"], []).append(r)
    return out


def summary(rows: list[dict]) -> dict:
    """The compact, JSON-able form for a study's result record:
    {"arch", "mean_l1", "mean_angle_deg", "streams": {stream: {"layers": [...],
    "mean_l1", "mean_angle_deg", "weights": {weight: {"l1": [...], "angle_deg": [...]}}}}},
    the lists following "layers"; means are over all rows (undefined angles, None in the
    lists, are left out of them)."""
    streams = {}
    for stream, rs in _streams(rows).items():
        layers = sorted({r["layer"] for r in rs})
        weights: dict[str, dict[str, list]] = {}
        for r in sorted(rs, key=lambda r: r["layer"]):
            w = weights.setdefault(r["weight"], {"l1": [], "angle_deg": []})
            w["l1"].append(r["l1"])
            w["angle_deg"].append(_json_float(r["angle_deg"]))
        streams[stream] = {
            "layers": layers,
            "mean_l1": _mean([r["l1"] for r in rs]),
            "mean_angle_deg": _mean([r["angle_deg"] for r in rs]),
            "weights": weights,
        }
    return {
        "arch": rows[0]["arch"] if rows else None,
        "mean_l1": _mean([r["l1"] for r in rows]),
        "mean_angle_deg": _mean([r["angle_deg"] for r in rows]),
        "streams": streams,
    }


def table(rows: list[dict]) -> str:
    """A fixed-width table, one line per row, streams separated by a blank line."""
    header = f"{'stream':<8} {'layer':>5}  {'weight':<9} {'l1':>11} {'angle_deg':>10}"
    lines = [header, "-" * len(header)]
    for n, rs in enumerate(_streams(rows).values()):
        if n:
            lines.append("")
        lines += [
            f"{r['stream']:<8} {r['layer']:>5}  {r['weight']:<9} {r['l1']:>11.4e} "
            f"{r['angle_deg']:>10.4f}"
            for r in rs
        ]
    return "\n".join(lines)


def plot(rows: list[dict], path_png: str) -> list[str]:
    """One PNG: a row of two panels (L1, angle) per stream, against layer, one line per
    weight. Returns the paths written."""
    from matplotlib.figure import Figure  # as plots.py: no pyplot, no global figure state

    streams = _streams(rows)
    if not streams:
        raise VlpdistError(f"{path_png}: no drift rows to plot")
    fig = Figure(figsize=(11, 3.4 * len(streams)), layout="constrained")
    axes = fig.subplots(len(streams), 2, squeeze=False)
    arch = rows[0]["arch"]
    for (stream, rs), (ax_l1, ax_angle) in zip(streams.items(), axes, strict=True):
        weights = list(dict.fromkeys(r["weight"] for r in rs))
        for w in weights:
            pts = sorted((r["layer"], r["l1"], r["angle_deg"]) for r in rs if r["weight"] == w)
            layers = [p[0] for p in pts]
            ax_l1.plot(layers, [p[1] for p in pts], marker="o", label=w)
            ax_angle.plot(layers, [p[2] for p in pts], marker="o", label=w)
        for ax, what in ((ax_l1, "L1 (mean |Δw|)"), (ax_angle, "angle (degrees)")):
            ax.set_title(f"{arch} {stream}: {what}")
            ax.set_xlabel("co-attention block" if stream == "co" else "layer")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
        ax_angle.legend(fontsize="small", ncol=2 if len(weights) > 4 else 1)
    os.makedirs(os.path.dirname(os.path.abspath(path_png)), exist_ok=True)
    fig.savefig(path_png, dpi=110)
    return [path_png]


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(args) -> int:
    """`vlpdist analyze drift PRETRAINED FINETUNED [--out DIR] [--json]`: prints the table
    (or the rows as JSON lines); with `out`, writes drift.csv, drift.json and drift.png
    there (a local directory or a storage URL)."""
    rows = drift(args.pretrained, args.finetuned)
    if getattr(args, "json", False):
        for r in rows:
            print(json.dumps({**r, "angle_deg": _json_float(r["angle_deg"])}))
    else:
        print(table(rows))
    out = getattr(args, "out", None)
    if out:
        with tempfile.TemporaryDirectory(prefix="vlpdist-drift-") as tmp:
            local = split_protocol(out)[1] if is_local(out) else tmp
            os.makedirs(local, exist_ok=True)
            write_csv(rows, os.path.join(local, "drift.csv"))
            record = {
                "pretrained": args.pretrained,
                "finetuned": args.finetuned,
                "summary": summary(rows),
                "rows": [{**r, "angle_deg": _json_float(r["angle_deg"])} for r in rows],
            }
            with open(os.path.join(local, "drift.json"), "w") as f:
                json.dump(record, f, indent=1)
            plot(rows, os.path.join(local, "drift.png"))
            if not is_local(out):
                storage = Storage()
                for name in ("drift.csv", "drift.json", "drift.png"):
                    storage.put_file(os.path.join(tmp, name), join(out, name))
        print(f"wrote drift.csv, drift.json, drift.png to {out}", file=sys.stderr)
    return 0
