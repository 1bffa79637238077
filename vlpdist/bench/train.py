"""`vlpdist bench train [--json]`: what our training engine costs per step over plain PyTorch.

In one process, on CPU, the same model (built once, copied) takes optimizer steps on the same
batch (one real `Batch` of the tiny synthetic world, reused every step so that data time is
excluded) in two loops:
  engine_step_s   our engine: DeepSpeed as `vlpdist pretrain` configures it
                  (`engine.loop.build_engine`, one-rank gloo group, ZeRO 0, fp32);
                  forward, `engine.backward`, `engine.step`
  torch_step_s    AdamW by hand: forward, backward, clip_grad_norm_, step, schedule, zero_grad
Both: AdamW over `param_groups` (lr 1e-4, decay 0.01), warmup_linear schedule, clip 1.0.
Each figure is the median of the timed steps after untimed warm-up steps (steady state);
overhead_ratio = engine / torch, target <= 1.15. Both loops draw the same dropout masks, so
loss_engine_first == loss_torch_first shows they train the same model on the same batch.
Other work on the machine shows up as noise in both figures: run it on an idle one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vlpdist.config import Config, DataConfig, DataSource, DeepSpeedConfig, OptimConfig, load
from vlpdist.models.losses import model_inputs, pretrain_losses
from vlpdist.models.model import build_model

TARGET = 1.15
SYNTH = Path(__file__).resolve().parents[2] / "configs" / "synth" / "tiny.yaml"


def _batch(batch_size: int, max_regions: int = 36):
    """The first batch of the tiny synthetic world's coco_like set, and the data's dims."""
    from vlpdist.data.loader import Loader
    from vlpdist.engine.loop import data_dims
    from vlpdist.shards.synthetic import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        synthesize(load(Config, str(SYNTH), command="synth"), tmp, progress=False)
        cfg = DataConfig(sources=[DataSource(url=os.path.join(tmp, "shards", "coco_like"))],
                         batch_size=batch_size, num_workers=0, max_regions=max_regions)  # fmt: skip
        loader = Loader(cfg, None)
        it = iter(loader)
        batch = next(it)
        it.close()  # the tensors are ours; the shards may go
        return batch, data_dims(loader)


def _loss(model, batch) -> torch.Tensor:
    return sum(pretrain_losses(model(**model_inputs(batch)), batch).values())


def _engine_step(cfg: Config, model, batch):
    from vlpdist.engine.loop import build_engine

    engine = build_engine(cfg, model, world=1)

    def step() -> torch.Tensor:
        loss = _loss(engine, batch)
        engine.backward(loss)
        engine.step()
        return loss

    return step


def _torch_step(cfg: Config, model, batch):
    from vlpdist.engine.schedule import optimizer

    opt, sched = optimizer(model, cfg.optim)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> torch.Tensor:
        loss = _loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def run(arch: str = "visual_bert", flavor: str = "tiny", batch_size: int = 32, steps: int = 20,
        warmup: int = 5, block: int = 1, seed: int = 0) -> dict:  # fmt: skip
    from vlpdist.engine.dist import init

    init()  # before anything DeepSpeed: it picks its accelerator at import
    threads = torch.get_num_threads()  # process-wide: both loops run on the same pool
    batch, dims = _batch(batch_size)
    cfg = Config(
        data=DataConfig(sources=[DataSource(url="unused")], batch_size=batch_size),
        deepspeed=DeepSpeedConfig(zero_stage=0, precision="fp32", global_batch_size=batch_size),
        optim=OptimConfig(lr=1e-4, weight_decay=0.01, warmup_steps=warmup,
                          total_steps=warmup + steps + 1, grad_clip=1.0),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = build_model(arch, flavor, dims, objectives=["mlm", "mrc"], task="pretrain")
    twin = copy.deepcopy(model)  # before DeepSpeed sees `model`: identical weights
    loops = {"engine": _engine_step(cfg, model, batch), "torch": _torch_step(cfg, twin, batch)}

    # Each loop has its own RNG stream, both starting from `seed` and swapped in around its
    # steps: the loops draw identical dropout masks step for step, so their first losses are
    # bitwise equal, whatever order the steps run in.
    rng = {name: torch.manual_seed(seed).get_state() for name in loops}
    times: dict[str, list[float]] = {name: [] for name in loops}
    first: dict[str, float] = {}

    def steps_of(name: str, n: int, timed: bool) -> None:
        torch.set_rng_state(rng[name])
        for _ in range(n):
            t0 = time.perf_counter()
            loss = loops[name]()
            dt = time.perf_counter() - t0
            first.setdefault(name, loss.item())
            if timed:
                times[name].append(dt)
        rng[name] = torch.get_rng_state()

    for name in loops:
        steps_of(name, warmup, timed=False)
    # Timed steps in blocks (default one step), the loops taking turns and swapping who goes
    # first each round (E T T E E T ...): CPU frequency and thermal drift, and bursts of other
    # work on a shared machine, fall on both loops alike.
    done, order = 0, list(loops)
    while done < steps:
        n = min(block, steps - done)
        for name in order:
            steps_of(name, n, timed=True)
        done, order = done + n, order[::-1]

    engine_s, torch_s = statistics.median(times["engine"]), statistics.median(times["torch"])
    ratio = round(engine_s / torch_s, 3)
    return {
        "bench": "train", "arch": arch, "flavor": flavor, "batch_size": batch_size,
        "steps": steps, "warmup": warmup, "threads": threads,
        "engine_step_s": round(engine_s, 5), "torch_step_s": round(torch_s, 5),
        "overhead_ratio": ratio, "samples_per_s_engine": round(batch_size / engine_s, 1),
        "target": TARGET, "ok": ratio <= TARGET,
        "loss_engine_first": first["engine"], "loss_torch_first": first["torch"],
    }  # fmt: skip


def main(args) -> int:
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints; stdout is the result's
        r = run(args.arch, args.flavor, args.batch_size, args.steps, args.warmup)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['arch']}/{r['flavor']} batch {r['batch_size']}, median of {r['steps']} steps "
              f"({r['threads']} threads): engine {r['engine_step_s'] * 1e3:.1f} ms, "
              f"torch {r['torch_step_s'] * 1e3:.1f} ms, overhead x{r['overhead_ratio']} "
              f"(target <= {r['target']}: {'ok' if r['ok'] else 'MISSED'})")  # fmt: skip
    return 0
