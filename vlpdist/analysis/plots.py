"""The report's plots, drawn from what report.py computed: scores per pretraining set,
low-resource curves, the grounding of each pretrained model and drift per layer. One
plotting style: matplotlib `Figure` objects (no pyplot, no global figure state)."""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vlpdist.analysis.report import Table


def _pct(f: float) -> str:
    return f"{f * 100:g}%"


def _slug(*parts: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(str(p) for p in parts))


def _frac_slug(f: float) -> str:
    return f"{f * 100:g}pct"


def _pct_or_nan(x: float | None) -> float:
    return float("nan") if x is None else 100 * x


def plots(tables: list[Table], probes: dict[str, list[tuple[str, dict]]],
          curves: dict[str, dict[tuple[str, str], dict]], out_dir: str) -> list[str]:  # fmt: skip
    """Scores per pretraining set per task, low-resource curves, the grounding of each
    pretrained model and drift per layer, as PNG files in `out_dir`; returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global figure state to leak
    from matplotlib.ticker import MaxNLocator

    os.makedirs(out_dir, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        written.append(name)

    for t in tables:  # (1) grouped bars, one figure per table
        fig = Figure(figsize=(max(5.0, 1.0 + 0.45 * len(t.rows) * len(t.tasks)), 3.8))
        ax = fig.add_subplot()
        width = 0.8 / len(t.rows)
        for i, (label, cells) in enumerate(t.rows):
            xs = np.arange(len(t.tasks)) + (i - (len(t.rows) - 1) / 2) * width
            means = [_pct_or_nan(cells[k].mean) for k in t.tasks]
            stds = [0.0 if cells[k].std is None else 100 * cells[k].std for k in t.tasks]
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=label)
        ax.set_xticks(range(len(t.tasks)), [t.column(k) for k in t.tasks])
        ax.set_ylabel("best val score (%)")
        ax.set_title(t.heading)
        ax.legend(fontsize="small")
        save(fig, f"scores-{_slug(t.arch, t.mode, _frac_slug(t.train_fraction))}.png")

    by_curve: dict[tuple[str, str], list[Table]] = defaultdict(list)
    for t in tables:
        by_curve[(t.arch, t.mode)].append(t)
    for (arch, mode), group in by_curve.items():  # (2) score vs train fraction
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda t: t.train_fraction)
        fracs = [t.train_fraction for t in group]
        for task in sorted({k for t in group for k in t.tasks}):
            fig = Figure(figsize=(5.5, 3.8))
            ax = fig.add_subplot()
            for label in dict.fromkeys(label for t in group for label, _ in t.rows):
                pts = [(t.train_fraction, dict(t.rows)[label].get(task)) for t in group]
                pts = [(f, c) for f, c in pts if c is not None and c.n]
                if pts:
                    ax.errorbar([f for f, _ in pts], [100 * c.mean for _, c in pts],
                                yerr=[0.0 if c.std is None else 100 * c.std for _, c in pts],
                                marker="o", capsize=2, label=label)  # fmt: skip
            if max(fracs) / min(fracs) > 10:
                ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(fracs, [_pct(f) for f in fracs])
            ax.set_xlabel("fraction of the train split")
            ax.set_ylabel("best val score (%)")
            ax.set_title(f"{arch} · {mode} · {task}")
            ax.legend(fontsize="small")
            save(fig, f"lowres-{_slug(arch, task, mode)}.png")

    for arch, rows in probes.items():  # (3) grounding per pretraining set
        kinds = list(dict.fromkeys(k for _, p in rows for k in p["kinds"]))
        fig = Figure(figsize=(max(5.0, 1.2 + 0.5 * len(rows) * len(kinds)), 3.8))
        ax = fig.add_subplot()
        width = 0.8 / len(rows)
        for i, (label, p) in enumerate(rows):
            xs = np.arange(len(kinds)) + (i - (len(rows) - 1) / 2) * width
            gaps = [100 * ((p["kinds"].get(k) or {}).get("gap") or math.nan) for k in kinds]
            ax.bar(xs, gaps, width, label=label)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(kinds)), kinds)
        ax.set_ylabel("accuracy: own regions − shuffled (points)")
        ax.set_title(f"{arch} · grounding of the pretrained model")
        ax.legend(fontsize="small")
        save(fig, f"grounding-{_slug(arch)}.png")

    for arch, per_set in sorted(curves.items()):  # (4) drift per layer
        streams = sorted({s for per in per_set.values() for s in per}, key=_stream_order)
        fig = Figure(figsize=(4.2 * len(streams), 6.4))
        axes = fig.subplots(2, len(streams), squeeze=False)
        for j, stream in enumerate(streams):
            for (label, mode), per in sorted(per_set.items()):
                if stream not in per:
                    continue
                for i, stat in enumerate(("angle_deg", "l1")):
                    if stat not in per[stream]:
                        continue
                    ys = per[stream][stat]
                    axes[i][j].plot(range(len(ys)), ys, marker="o", label=f"{label} · {mode}")
            axes[0][j].set_title(f"{arch} · {stream}")
            axes[0][j].set_ylabel("drift: mean angle (deg)")
            axes[1][j].set_ylabel("drift: mean L1")
            for ax in axes[:, j]:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[1][j].set_xlabel("layer")
            axes[0][j].legend(fontsize="small")
        save(fig, f"drift-{_slug(arch)}.png")
    return written


def _stream_order(stream: str) -> tuple:
    known = ("single", "text", "visual", "co")  # VisualBERT's one stream; ViLBERT's three
    return (known.index(stream) if stream in known else len(known)), stream
