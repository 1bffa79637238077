"""`vlpdist demo`: the main job on the embedded default, the synthetic world.

1. build the synthetic world's shard sets under <out>/shards and verify them
2. CCG: train a tiny captioner on the in-domain captions and caption the VQA-like task's
   images: a generated in-domain pretraining set (<out>/shards/ccg_vqa)
3. the demo study (configs/study/demo.yaml) on a local Ray with DeepSpeed on CPU
4. the report: the paper-layout table printed, tables and plots under <out>/studies/demo/report

Rerunning it reuses what exists: the captions, and every run that has a result record.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from vlpdist.config import Config, load
from vlpdist.errors import VlpdistError
from vlpdist.shards.reader import verify
from vlpdist.storage import Storage, join

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS / "synth" / "demo.yaml"


def run_demo(out: str, overrides: list[str] | tuple[str, ...] = ()) -> int:
    from vlpdist.shards.synthetic import synthesize

    if not DEMO_CONFIG.exists():
        raise VlpdistError(f"{DEMO_CONFIG}: demo config not found (run from a vlpdist checkout)")
    cfg = load(Config, str(DEMO_CONFIG), overrides, command="synth")
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
    if failed:
        return 1
    shards = join(out, "shards")
    ccg = join(shards, "ccg_vqa")
    if storage.exists(join(ccg, "index.json")):
        print(f"\nCCG: {ccg} exists; kept")
    else:
        print("\nCCG: a tiny captioner learns coco_like's captions and captions vqa_train's images")
        from vlpdist.ccg import caption_set

        cap = load(Config, str(CONFIGS / "caption" / "tiny.yaml"), [
            f"data.sources=[{{url: {join(shards, 'coco_like')}}}]",
            f"caption.images={join(shards, 'vqa_train')}", f"caption.out={ccg}",
            f"run.output={join(out, 'runs')}", "caption.overwrite=true",
        ], command="caption")  # fmt: skip
        result = caption_set(cap, progress=False)
        print(f"  {result['samples']} images captioned in {time.time() - t0:.0f}s since start")
    return run_study_demo(out, t0)


def run_study_demo(out: str, t0: float) -> int:
    from vlpdist.analysis.report import (
        grounding,
        grounding_markdown,
        load_records,
        markdown,
        report,
        tables,
    )
    from vlpdist.study.runner import run_study

    study_cfg = load(Config, str(CONFIGS / "study" / "demo.yaml"), [
        f"study.shards={join(out, 'shards')}", f"run.output={join(out, 'studies')}",
        f"study.pretrain_config={CONFIGS / 'pretrain' / 'tiny.yaml'}",
        f"study.finetune_config={CONFIGS / 'finetune' / 'tiny.yaml'}",
    ], command="study")  # fmt: skip
    print("\nstudy: 2 architectures x (4 pretraining sets + scratch + the text-only control) "
          "-> VQA-like task at 10%, full and frozen, 3 seeds, each also scored with shuffled "
          "regions; every pretrained model probed for grounding; on a local Ray (DeepSpeed on "
          "CPU)")  # fmt: skip
    summary = run_study(study_cfg)
    root = join(out, "studies", "demo")
    written = report(root)
    print()
    records = load_records(root)
    print(markdown(tables(records)))
    print(grounding_markdown(grounding(records)))
    failed = [r["run"] for r in summary["rows"] if r["state"] != "done"]
    print(f"report: {written['markdown']} ({len(written['plots'])} plots); "
          f"{summary['executed']} runs executed, {summary['skipped']} reused; "
          f"demo done in {time.time() - t0:.0f}s")  # fmt: skip
    if failed:
        print(f"FAILED runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
