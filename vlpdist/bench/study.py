"""`vlpdist bench study [--json]`: how well the study runner keeps a cluster busy.

A tiny study (two pretraining sets + scratch, fine-tuned on the VQA-like task over seeds) on
the tiny synthetic world, on the Ray cluster of RAY_ADDRESS or a local one:
  makespan_s              the driver's wall time from the first submission to the last record
  sum_run_s               the runs' own durations (Ray task start to record), summed
  slots                   runs the cluster holds at once (CPUs / CPUs per run)
  scheduling_efficiency   sum_run_s / (slots x makespan_s): 1.0 = no slot ever idle
  submit_to_first_step_s  the driver's first submission to the first optimizer update of
                          any run (start-up latency: Ray Train workers, imports, data)
Target: scheduling_efficiency >= 0.8. Dependencies cost idle slots (fine-tuning waits for
its export), so the figure measures the scheduler, not just the cluster's size.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from vlpdist.config import Config, load

TARGET = 0.8
REPO = Path(__file__).resolve().parents[2]


def run(seeds: int = 2, progress: bool = False) -> dict:
    from vlpdist.shards.synthetic import synthesize
    from vlpdist.study.runner import run_study

    with tempfile.TemporaryDirectory() as tmp:
        synthesize(load(Config, str(REPO / "configs/synth/tiny.yaml"), command="synth"), tmp,
                   progress=False)  # fmt: skip
        cfg = load(Config, str(REPO / "configs/study/tiny.yaml"), [
            f"study.shards={tmp}/shards", f"run.output={tmp}/out", "study.name=bench",
            "study.pretrain_sets={coco: [{url: coco_like}], cc: [{url: cc_like}]}",
            f"study.seeds={list(range(seeds))}",
            f"study.pretrain_config={REPO / 'configs/pretrain/tiny.yaml'}",
            f"study.finetune_config={REPO / 'configs/finetune/tiny.yaml'}",
        ], command="study")  # fmt: skip
        out = run_study(cfg, progress=progress)
        records = [
            json.loads(p.read_text()) for p in (Path(tmp) / "out/bench/results").glob("*.json")
        ]
        cpus = out["cluster"]["cpus"] or 1.0
    per_run = cfg.study.pretrain_resources.workers * cfg.study.pretrain_resources.cpus_per_worker
    slots = int(cpus // per_run)
    timing = [r["study"]["timing"] for r in records]
    first_submit = min(t["submitted"] for t in timing)
    first_step = min(r["timing"]["first_step"] for r in records if r["timing"]["first_step"])
    sum_run = sum(r["study"]["run_s"] for r in records)
    failed = [r["run"] for r in records if r.get("status") != "done"]
    eff = sum_run / (slots * out["makespan_s"])
    return {
        "bench": "study", "runs": len(records), "failed": failed, "ray": out["ray"],
        "slots": slots, "makespan_s": out["makespan_s"], "sum_run_s": round(sum_run, 2),
        "scheduling_efficiency": round(eff, 3),
        "submit_to_first_step_s": round(first_step - first_submit, 2),
        "target": TARGET, "ok": eff >= TARGET and not failed,
    }  # fmt: skip


def main(args) -> int:
    result = run(seeds=args.seeds, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['runs']} runs on {result['slots']} slots: makespan {result['makespan_s']} s, "
              f"efficiency {result['scheduling_efficiency']} (target {TARGET}), first step after "
              f"{result['submit_to_first_step_s']} s", file=sys.stdout)  # fmt: skip
    return 0
