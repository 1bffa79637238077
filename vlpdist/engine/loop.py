"""`vlpdist pretrain CONFIG`: setup → build → fit, readable top to bottom.

One code path for a laptop (one CPU process), `deepspeed --num_gpus N -m vlpdist pretrain`,
torchrun and Ray Train workers. Rerunning the same command continues from the newest
complete checkpoint at the exact next sample.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time

import torch
from torch.optim.lr_scheduler import LambdaLR

from vlpdist.config import Config, dump_yaml
from vlpdist.data.index import download_tokenizer
from vlpdist.data.loader import Loader
from vlpdist.engine import checkpoint
from vlpdist.engine.dist import Dist, init
from vlpdist.engine.schedule import param_groups, warmup_linear
from vlpdist.errors import VlpdistError
from vlpdist.models.flavors import DataDims
from vlpdist.models.losses import model_inputs, pretrain_losses
from vlpdist.models.model import build_model
from vlpdist.storage import Storage, join

log = logging.getLogger(__name__)


def deepspeed_config(cfg: Config, world: int) -> dict:
    """DeepSpeed's config from ours; the global batch is kept when the world size changes
    (micro-batch x accumulation x world), or the run refuses."""
    micro, total = cfg.data.batch_size, cfg.deepspeed.global_batch_size
    if total % (micro * world):
        raise VlpdistError(
            f"deepspeed.global_batch_size {total} is not data.batch_size {micro} x {world} ranks "
            "x a whole number of accumulation steps; change one of them"
        )
    ds = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": total // (micro * world),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "steps_per_print": 10**9,  # our own logging
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.deepspeed.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
    if cfg.deepspeed.offload_optimizer:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    return ds


def data_dims(loader: Loader) -> DataDims:
    s = loader.stream
    m = s.sources[0].manifest
    return DataDims(vocab_size=s.collator.tok.vocab_size, visual_dim=m["feature_dim"],
                    num_classes=m.get("cls_prob_dim"), num_labels=len(s.labels or []) or None)  # fmt: skip


def pretrain(cfg: Config) -> dict:
    import deepspeed

    # -- setup
    dist = init()
    torch.manual_seed(cfg.run.seed)
    storage = Storage(cfg.storage)
    run_url = join(cfg.run.output, cfg.run.name)
    config_yaml = dump_yaml(cfg, redact=True)

    # -- build
    loader = Loader(cfg.data, cfg.storage, rank=dist.rank, world_size=dist.world)
    m = cfg.model
    model = build_model(m.arch, m.flavor, data_dims(loader), sizes=m.sizes, objectives=m.objectives,
                        task="pretrain", text_init=m.text_init)  # fmt: skip
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr,
                                  betas=tuple(o.betas), eps=o.eps)  # fmt: skip
    schedule = LambdaLR(optimizer, lambda s: warmup_linear(s, o.warmup_steps, o.total_steps))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                      config=deepspeed_config(cfg, dist.world))  # fmt: skip
    step, resumed_from = 0, None
    latest = checkpoint.committed(storage, run_url)
    if latest:
        resumed_from = latest[-1][1]
        state = checkpoint.load(engine, dist, storage, resumed_from, cfg.deepspeed.zero_stage)
        loader.load_state_dict(state["data"])
        step = state["step"]
    history = _fit(cfg, dist, engine, loader, storage, run_url, config_yaml, step)
    export_url = export(engine, dist, storage, run_url, cfg, loader)
    return {"export": export_url, "run": run_url, "resumed_from": resumed_from, "steps": engine.global_steps,
            "history": history, "rank": dist.rank}  # fmt: skip


def _fit(cfg, dist: Dist, engine, loader: Loader, storage, run_url, config_yaml, step) -> list:
    """Updates until optim.total_steps; checkpoint every run.checkpoint_every."""
    r, history = cfg.run, []
    t0, seen = time.perf_counter(), 0
    trace = _tracer(r.trace, dist.rank)
    while step < cfg.optim.total_steps:
        for batch in loader:
            trace(step + 1, batch)
            batch = batch.to(dist.device)
            losses = pretrain_losses(engine(**model_inputs(batch)), batch)
            loss = sum(losses.values())
            engine.backward(loss)
            # read before step(): DeepSpeed advances its micro-step counter inside step()
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            seen += len(batch)
            if not boundary:
                continue
            step += 1
            if step % r.log_every == 0 or step == cfg.optim.total_steps:
                rec = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in losses.items()},
                       "lr": engine.get_lr()[0], "samples_per_s": seen / (time.perf_counter() - t0)}  # fmt: skip
                history.append(rec)
                if dist.is_main:
                    log.info("step %d %s", step, json.dumps(rec))
            if r.checkpoint_every and step % r.checkpoint_every == 0:
                state = {"step": step, "data": loader.state_dict()}
                checkpoint.save(
                    engine, dist, storage, run_url, step, state, config_yaml, r.keep_last
                )
            if step >= cfg.optim.total_steps:
                break
        if math.isnan(loss.item()):
            raise VlpdistError(f"{run_url}: loss became NaN at step {step}")
    return history


def _tracer(directory: str | None, rank: int):
    """Append (update, sample keys, text ids) of each micro-batch to rank<r>.jsonl."""
    if not directory:
        return lambda step, batch: None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"rank{rank}.jsonl")

    def write(step: int, batch) -> None:
        real = (~batch.is_pad).tolist()
        keys = [k for k, keep in zip(batch.keys, real, strict=True) if keep]
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "keys": keys}) + "\n")

    return write


def export(engine, dist: Dist, storage: Storage, run_url: str, cfg: Config, loader: Loader) -> str:
    """Consolidated weights in the models' HF-style format at <run>/export/ (what fine-tuning
    takes as `run.init_from`), with the shard set's tokenizer; COMMITTED is written last."""
    import deepspeed

    from vlpdist.models.export import save_pretrained

    url = join(run_url, "export")
    params = list(engine.module.parameters())
    gather = cfg.deepspeed.zero_stage == 3  # ZeRO-3 partitions parameters: gather them first
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=gather):
        if dist.is_main:
            with tempfile.TemporaryDirectory() as tmp:
                tok_dir = download_tokenizer(
                    storage, loader.stream.sources[0], os.path.join(tmp, "tokenizer")
                )
                out = os.path.join(tmp, "export")
                save_pretrained(engine.module, out, arch=cfg.model.arch, flavor=cfg.model.flavor,
                                tokenizer_dir=tok_dir, extra={"run": run_url})  # fmt: skip
                for name in sorted(os.listdir(out)):
                    storage.put_file(os.path.join(out, name), join(url, name))
            storage.write_text(join(url, checkpoint.COMMIT), json.dumps({"run": run_url}))
    torch.distributed.barrier()
    return url
