"""`vlpdist demo`: the main job on the embedded default, the synthetic world.

Today: synthetic world → shards → verify → inspect. Later stages (streaming, pretraining,
fine-tuning, the study and its report) join here as they land.
"""

from __future__ import annotations

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
    return 1 if failed else 0
