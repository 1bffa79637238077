"""`vlpdist` command line: a table of subcommands → functions, no logic of its own.

A user mistake (`VlpdistError`) prints one line `vlpdist: error: ...` and exits 2; a failed
check (`shards verify`) exits 1; anything else is a bug and keeps its stack trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from vlpdist.errors import VlpdistError


def _config(args, command: str) -> object:
    from vlpdist.config import Config, load

    return load(Config, args.config, args.overrides, command=command)


def _storage(args):
    from vlpdist.config import Config, command_of, load
    from vlpdist.storage import Storage

    # any config file may lend its storage section; it is checked as what it is
    read = command_of(args.config) if args.config else None
    cfg = load(Config, args.config, args.overrides, command=read) if args.config else None
    return Storage(cfg.storage if cfg else None)


def cmd_config_show(args) -> int:
    from vlpdist.config import Config, Recipe, command_of, dump_yaml, load

    if args.recipe or args.extract:
        given = [f for f, on in (("--recipe", args.recipe), ("--extract", args.extract),
                                 ("--command", args.command_of_config)) if on]  # fmt: skip
        if len(given) > 1:
            raise VlpdistError(f"vlpdist config show: {' and '.join(given)} do not go together")
        from vlpdist.config.extract import ExtractConfig

        schema = Recipe if args.recipe else ExtractConfig
        sys.stdout.write(dump_yaml(load(schema, args.config, args.overrides), redact=True))
        return 0
    command = args.command_of_config or command_of(args.config)
    cfg = load(Config, args.config, args.overrides, command=command)
    sys.stdout.write(f"# read by the {command} command\n")
    sys.stdout.write(dump_yaml(cfg, redact=True, command=command))
    return 0


def cmd_shards_build(args) -> int:
    from vlpdist.config import Recipe, load
    from vlpdist.shards.build import build

    recipe = load(Recipe, args.recipe, args.overrides)
    manifest = build(recipe, args.out, overwrite=args.overwrite, trust_pickle=args.trust_pickle)
    print(
        f"wrote {manifest['num_samples']} samples in {len(manifest['shards'])} shards to {args.out}"
    )
    return 0


def cmd_shards_extract(args) -> int:
    from vlpdist.config import load
    from vlpdist.config.extract import ExtractConfig
    from vlpdist.shards.extract.pipeline import extract

    m = extract(
        load(ExtractConfig, args.config, args.overrides), args.out, overwrite=args.overwrite
    )
    skipped = m["build_report"]["skipped_count"]
    print(f"wrote {m['num_samples']} images' regions in {len(m['shards'])} shards to {args.out}"
          f" ({skipped} images skipped, listed in index.json build_report)")  # fmt: skip
    return 0


def cmd_shards_synth(args) -> int:
    from vlpdist.shards.synthetic import synthesize

    manifests = synthesize(_config(args, "synth"), args.out, overwrite=args.overwrite)
    for name, m in manifests.items():
        print(f"{name}: {m['num_samples']} samples, {len(m['shards'])} shards")
    print(f"SYNTHETIC world written to {args.out}")
    return 0


def cmd_shards_caption(args) -> int:
    from vlpdist.ccg import caption_set

    result = caption_set(_config(args, "caption"))
    if result["rank"] == 0:
        print(result["report"], file=sys.stderr)
        keys = ("run", "export", "out", "samples", "metric", "steps", "resumed_from")
        print(json.dumps({k: result[k] for k in keys if k in result}))
    return 0


def cmd_shards_inspect(args) -> int:
    from vlpdist.shards.reader import format_inspect, inspect

    info = inspect(_storage(args), args.url, n_samples=args.samples)
    print(json.dumps(info, indent=1) if args.json else format_inspect(info))
    return 0


def cmd_shards_verify(args) -> int:
    from vlpdist.shards.reader import verify

    report = verify(_storage(args), args.url)
    for p in report.problems:
        print(f"FAIL {p}", file=sys.stderr)
    status = "OK" if report.ok else "FAILED"
    print(
        f"{status} {args.url}: {report.shards} shards, {report.samples} samples, {report.bytes / 1e6:.1f} MB"
    )
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    from vlpdist.demo import run_demo

    return run_demo(args.out, overrides=args.overrides)


OVERRIDES = "trailing key=value arguments override the config, e.g. optim.lr=1e-4"


def _train(command: str, args) -> int:
    from vlpdist import engine
    from vlpdist.engine.setup import check_command

    cfg = _config(args, command)
    check_command(cfg, command)
    result = engine.run(cfg)
    if result["rank"] == 0:  # one summary per job, not one per rank
        keys = ("run", "export", "record", "metric", "steps", "resumed_from", "history")
        print(json.dumps({k: result[k] for k in keys if k in result}))
    return 0


def cmd_pretrain(args) -> int:
    return _train("pretrain", args)


def cmd_finetune(args) -> int:
    return _train("finetune", args)


def cmd_study(args) -> int:
    from vlpdist.config import Config, load

    if args.first != "status" and args.config and "=" in args.config:
        args.overrides.insert(0, args.config)  # an override, taken by the optional positional
        args.config = None
    if args.first == "status":
        if not args.config:
            raise VlpdistError("vlpdist study status CONFIG: name the study's config file")
        from vlpdist.study.runner import status

        print(status(load(Config, args.config, args.overrides, command="study")))
        return 0
    if args.config:
        raise VlpdistError(f"vlpdist study: unexpected {args.config!r} after the config file")
    from vlpdist.study.results import table
    from vlpdist.study.runner import run_study

    cfg = load(Config, args.first, args.overrides, command="study")
    result = run_study(cfg, retry_failed=args.retry_failed)
    print(table(result.pop("rows")))
    print(json.dumps(result))
    return 0


def cmd_bench_study(args) -> int:
    from vlpdist.bench.study import main as bench_study

    return bench_study(args)


def cmd_analyze_drift(args) -> int:
    from vlpdist.analysis.drift import main as drift_main

    return drift_main(args)


def cmd_analyze_grounding(args) -> int:
    from vlpdist.analysis.grounding import main as grounding_main

    return grounding_main(args)


def cmd_report(args) -> int:
    from vlpdist.analysis.report import main as report_main

    return report_main(args)


def cmd_bench_train(args) -> int:
    from vlpdist.bench.train import main as bench_train

    return bench_train(args)


def cmd_bench_data(args) -> int:
    from vlpdist.bench.data import main as bench_data

    return bench_data(args)


def cmd_bench_extract(args) -> int:
    from vlpdist.bench.extract import main as bench_extract

    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)  # an override, taken by the optional positional
        args.config = None

    return bench_extract(args)


def cmd_bench_gpu(args) -> int:
    from vlpdist.bench.gpu import main as bench_gpu

    return bench_gpu(args)


def cmd_bench_model(args) -> int:
    from vlpdist.bench.model import main as bench_model

    return bench_model(args)


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    if required:
        p.add_argument("config", help="YAML config file")
    else:
        p.add_argument("--config", help="YAML config whose storage section to use")
    p.epilog = OVERRIDES


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vlpdist", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    # the deepspeed launcher passes --local_rank=N before the script's own arguments; the
    # engine reads LOCAL_RANK from the environment, as for torchrun
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="configs").add_subparsers(dest="sub", required=True)
    from vlpdist.config import COMMANDS  # light: yaml and dataclasses

    p = cfg.add_parser(
        "show", help="print the resolved config as its command reads it, secrets redacted"
    )
    p.add_argument("--recipe", action="store_true", help="the file is a shard build recipe")
    p.add_argument(
        "--extract", action="store_true", help="the file is an extraction config (configs/extract/)"
    )
    p.add_argument(
        "--command",
        dest="command_of_config",
        choices=tuple(COMMANDS),
        help="the command that reads the file (synth: `shards synth`, caption: `shards "
        "caption`); a key it does not read is an error. Default: from the sections the file "
        "sets (with its includes): study, else synth, else caption, else eval (finetune), "
        "else pretrain",
    )
    _add_config_args(p)
    p.set_defaults(fn=cmd_config_show)

    p = sub.add_parser("pretrain", help="pretrain with DeepSpeed (resumes automatically)")
    _add_config_args(p)
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser(
        "study",
        help="run a study grid on Ray (`vlpdist study CONFIG`), or `vlpdist study status CONFIG`",
    )
    p.add_argument("first", metavar="CONFIG|status", help="the study's config file, or 'status'")
    p.add_argument("config", nargs="?", help="with status: the study's config file")
    p.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    p.epilog = OVERRIDES
    p.set_defaults(fn=cmd_study)

    an = sub.add_parser("analyze", help="analyses of trained models").add_subparsers(
        dest="sub", required=True
    )
    p = an.add_parser("drift", help="per-layer L1 and angle between pretrained and fine-tuned")
    p.add_argument("pretrained", help="export directory URL of the pretrained model")
    p.add_argument("finetuned", help="export directory URL of the fine-tuned model (best/)")
    p.add_argument("--out", help="directory URL for drift.csv, drift.json and drift.png")
    p.add_argument("--json", action="store_true", help="one JSON line per row")
    p.set_defaults(fn=cmd_analyze_drift)

    p = an.add_parser(
        "grounding", help="masked object/colour/size/count words with true vs shuffled regions"
    )
    p.add_argument("export", help="export directory URL of a pretrained model (with MLM)")
    p.add_argument("--data", required=True, help="caption shard set to probe on (held-out images)")
    p.add_argument("--samples", type=int, default=512, help="images probed (one caption each)")
    p.add_argument("--out", help="directory URL for grounding.json")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    _add_config_args(p, required=False)
    p.set_defaults(fn=cmd_analyze_grounding)

    p = sub.add_parser("report", help="tables (Markdown, CSV) and plots of a study's records")
    p.add_argument("study", help="the study's config file, or its root URL")
    p.add_argument("--out", help="output directory URL (default <study root>/report)")
    p.epilog = OVERRIDES
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser(
        "finetune", help="fine-tune on a downstream task, from an export or from scratch"
    )
    _add_config_args(p)
    p.set_defaults(fn=cmd_finetune)

    sh = sub.add_parser("shards", help="build, inspect, verify shards").add_subparsers(
        dest="sub", required=True
    )
    p = sh.add_parser("build", help="build a shard set from a public dataset recipe")
    p.add_argument("recipe", help="recipe YAML (see shards/)")
    p.add_argument("--out", required=True, help="dataset directory URL to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    p.add_argument(
        "--trust-pickle", action="store_true", help="allow pickle-based inputs (MMF LMDB features)"
    )
    p.epilog = OVERRIDES
    p.set_defaults(fn=cmd_shards_build)

    p = sh.add_parser("extract", help="region features from images (Ray Data), as a shard set")
    p.add_argument("config", help="extraction config YAML (see configs/extract/)")
    p.add_argument("--out", required=True, help="dataset directory URL to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    p.epilog = "trailing key=value arguments override the config, e.g. images=DIR batch_size=16"
    p.set_defaults(fn=cmd_shards_extract)

    p = sh.add_parser("synth", help="build the synthetic world's shard sets")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="root URL; sets go to <out>/shards/<name>/")
    p.add_argument("--overwrite", action="store_true", help="replace existing shard sets")
    p.set_defaults(fn=cmd_shards_synth)

    p = sh.add_parser("inspect", help="counts, dims, sizes and a few samples")
    p.add_argument("url", help="dataset directory URL (holding index.json)")
    p.add_argument("--samples", type=int, default=3, help="samples to show")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_config_args(p, required=False)
    p.set_defaults(fn=cmd_shards_inspect)

    p = sh.add_parser(
        "caption", help="train a captioner, caption another set's images: a new (CCG) set"
    )
    _add_config_args(p)
    p.set_defaults(fn=cmd_shards_caption)

    p = sh.add_parser("verify", help="check sha256, sizes and offsets; exit 1 naming bad shards")
    p.add_argument("url", help="dataset directory URL (holding index.json)")
    _add_config_args(p, required=False)
    p.set_defaults(fn=cmd_shards_verify)

    bench = sub.add_parser("bench", help="benchmarks, as JSON").add_subparsers(
        dest="sub", required=True
    )
    p = bench.add_parser("data", help="loader vs raw reads vs a plain webdataset pipeline")
    p.add_argument("--source", choices=("file", "s3"), default="file", help="where shards live")
    p.add_argument("--samples", type=int, default=1024, help="samples in the generated shards")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    p.add_argument(
        "--cache",
        action="store_true",
        help="also the node-local cache, --epochs epochs from empty (--source s3)",
    )
    p.add_argument("--epochs", type=int, default=2, help="epochs of the cached loader")
    p.add_argument("--json", action="store_true", help="one-line JSON (default: indented)")
    p.set_defaults(fn=cmd_bench_data)

    p = bench.add_parser("extract", help="extraction pipeline vs a plain loop vs the model alone")
    p.add_argument("config", nargs="?", help="extraction config (default: the grid extractor)")
    p.add_argument("--images", type=int, default=48, help="photos drawn for the run")
    p.add_argument("--size", default="640x480", help="their size, WxH")
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.epilog = "trailing key=value arguments override the config, e.g. actors=2 batch_size=4"
    p.set_defaults(fn=cmd_bench_extract)

    p = bench.add_parser("model", help="params, FLOPs, CPU step time vs transformers")
    p.add_argument("--flavors", nargs="+", default=["tiny", "small"], help="flavors to time")
    p.add_argument("--batch", type=int, default=32, help="samples per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    p.add_argument("--json", action="store_true", help="one JSON line per model")
    p.set_defaults(fn=cmd_bench_model)

    p = bench.add_parser("gpu", help="pretraining samples/s, TFLOP/s and MFU on one device")
    p.add_argument("--archs", nargs="+", default=["visual_bert", "vilbert"], help="architectures")
    p.add_argument("--flavor", help="model flavor (default: base on CUDA, tiny on CPU)")
    p.add_argument("--max-batch", type=int, help="largest batch tried (default 256 CUDA, 8 CPU)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--samples", type=int, default=1024, help="samples in the generated shards")
    p.add_argument("--workers", type=int, help="loader workers (default 8 CUDA, 0 CPU)")
    p.add_argument("--peak-tflops", type=float, help="the device's bf16 peak, if not in the table")
    p.add_argument("--json", action="store_true", help="one JSON line per architecture")
    p.set_defaults(fn=cmd_bench_gpu)

    p = bench.add_parser("train", help="engine step vs a plain PyTorch AdamW loop (CPU)")
    p.add_argument("--arch", default="visual_bert", help="architecture")
    p.add_argument("--flavor", default="tiny", help="model flavor")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per loop (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.set_defaults(fn=cmd_bench_train)

    p = bench.add_parser("study", help="scheduling efficiency of a tiny study on Ray")
    p.add_argument("--seeds", type=int, default=2, help="fine-tuning seeds per export")
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.set_defaults(fn=cmd_bench_study)

    p = sub.add_parser("demo", help="the main job on the embedded synthetic world")
    p.add_argument("--out", default="demo_out", help="output root (any storage URL)")
    p.epilog = OVERRIDES
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    # key=value overrides may stand anywhere (`shards build R --out URL split=val`); argparse
    # cannot intermix positionals with subcommands, so they are taken from the leftovers.
    args, rest = ap.parse_known_args(argv)
    args.overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    unknown = [a for a in rest if a not in args.overrides]
    if unknown:
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="vlpdist: %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.fn(args)
    except VlpdistError as e:
        print(f"vlpdist: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlpdist: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
