"""`vlpdist demo`: the main job on the embedded default, the synthetic world.

Today: synthetic world → shards → verify → inspect → stream a few batches (pretraining
mix and the VQA-like task) with the loader's telemetry. Later stages (pretraining,
fine-tuning, the study and its report) join here as they land.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from vlpdist.config import Config, load
from vlpdist.errors import VlpdistError
from vlpdist.shards.reader import format_inspect, inspect, verify
from vlpdist.storage import Storage, join

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS / "synth" / "demo.yaml"


def run_demo(out: str, overrides: list[str] | tuple[str, ...] = ()) -> int:
    from vlpdist.shards.synthetic import synthesize

    if not DEMO_CONFIG.exists():
        raise VlpdistError(f"{DEMO_CONFIG}: demo config not found (run from a vlpdist checkout)")
    cfg = load(Config, str(DEMO_CONFIG), overrides)
    print(f"vlpdist demo: building the SYNTHETIC world (seed {cfg.synth.seed}) under {out}")
    t0 = time.time()
    manifests = synthesize(cfg, out, overwrite=True)
    built_s = time.time() - t0
    storage = Storage(cfg.storage)
    rows, failed = [], 0
    for name, m in manifests.items():
        report = verify(storage, join(out, "shards", name))
        failed += not report.ok
        for p in report.problems:
            print(f"FAIL {p}", file=sys.stderr)
        rows.append((name, m["num_samples"], m["num_texts"], len(m["shards"]),
                     m["total_bytes"] / 1e6, "ok" if report.ok else "FAILED"))  # fmt: skip
    print(f"\nbuilt {len(rows)} shard sets in {built_s:.1f}s; verified:")
    print(f"  {'dataset':<16} {'samples':>8} {'texts':>8} {'shards':>6} {'MB':>8}  verify")
    for r in rows:
        print(f"  {r[0]:<16} {r[1]:>8} {r[2]:>8} {r[3]:>6} {r[4]:>8.1f}  {r[5]}")
    for name in list(manifests)[:1] + [n for n in manifests if n.startswith("vqa")][:1]:
        print()
        print(format_inspect(inspect(storage, join(out, "shards", name), n_samples=2)))
    stream_some(cfg, out)
    return 1 if failed else 0


def stream_some(cfg: Config, out: str, batches: int = 4) -> None:
    """A few batches of the in-domain pretraining mix and of the VQA-like task, with the
    loader's telemetry."""
    from vlpdist.config import DataSource
    from vlpdist.data.loader import Loader

    runs = {
        "pretrain (coco_like 0.5 + vqa_p 0.5)": dataclasses.replace(
            cfg.data,
            sources=[DataSource(join(out, "shards", n), 0.5) for n in ("coco_like", "vqa_p")],
            task="pretrain",
        ),
        "vqa (vqa_train)": dataclasses.replace(
            cfg.data, sources=[DataSource(join(out, "shards", "vqa_train"))], task="vqa"
        ),
    }
    for title, data in runs.items():
        loader = Loader(data, cfg.storage)
        print(f"\nstreaming {title}: {len(loader)} batches of {data.batch_size} per epoch")
        for i, batch in enumerate(loader):
            if i == 0:
                shapes = {
                    f.name: list(v.shape)
                    for f in dataclasses.fields(batch)
                    for v in [getattr(batch, f.name)]
                    if hasattr(v, "shape")
                }
                print(f"  batch 0: {shapes}")
            if i + 1 == batches:
                break
        print("  telemetry: " + json.dumps(loader.telemetry()))
