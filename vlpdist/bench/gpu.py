"""`vlpdist bench gpu [--json]`: pretraining throughput and MFU on one device.

For each architecture: VisualBERT or ViLBERT pretraining steps (MLM + masked region
classification) through the engine as `vlpdist pretrain` builds it (DeepSpeed, ZeRO-1,
bf16), fed by the real loader from local shards shaped like bottom-up-attention data (100
regions x 2048 fp16 features, a 1601-class detector distribution, 5 captions per image),
pinned batches copied asynchronously, padding trimmed per batch. The batch is the largest
that fits, up to --max-batch (halved on out-of-memory). It prints
  samples_per_s          over the timed steps (after --warmup untimed ones)
  tflops_per_device      model FLOPs counted by torch's FlopCounter for each batch's own
                         shape (models/flops.py TrainFlops), per second
  mfu                    over the device's bf16 peak (run.peak_tflops's table; --peak-tflops
                         for a device not in it); absent on CPU
  peak_memory_gib        the device allocator's peak (CUDA), the process's peak RSS (CPU)
  data_wait_fraction     time the step waited for the loader, over the step time
Defaults: the base flavor and batches up to 256 on CUDA; on CPU (what the suite runs) the
tiny flavor, batch 8. Target on an H100/H200-class device: mfu >= 0.40 for VisualBERT-base.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time

import torch

from vlpdist.config import (
    CacheConfig,
    Config,
    DataConfig,
    DataSource,
    DeepSpeedConfig,
    ModelConfig,
    OptimConfig,
)

TARGET_MFU = 0.40


def _engine(cfg: Config, dims):
    from vlpdist.engine.loop import build_engine
    from vlpdist.models.model import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model.arch, cfg.model.flavor, dims, objectives=cfg.model.objectives,
                        task="pretrain")  # fmt: skip
    return model, build_engine(cfg, model, world=1)


def _config(arch: str, flavor: str, url: str, batch: int, steps: int, workers: int,
            precision: str) -> Config:  # fmt: skip
    return Config(
        model=ModelConfig(arch=arch, flavor=flavor, objectives=["mlm", "mrc"]),
        data=DataConfig(
            sources=[DataSource(url)],
            batch_size=batch,
            num_workers=workers,
            max_regions=100,
            max_text_tokens=36,
            itm_prob=0.0,
            cache=CacheConfig(enabled=False),
        ),  # fmt: skip
        deepspeed=DeepSpeedConfig(zero_stage=1, precision=precision, global_batch_size=batch),
        optim=OptimConfig(lr=1e-4, warmup_steps=1, total_steps=steps + 1),
    )


def _measure(cfg: Config, dims, fit, device, warmup: int, steps: int) -> dict:
    """Warm-up steps, then timed steps; raises torch.cuda.OutOfMemoryError if it does not fit."""
    from vlpdist.bench.train import _loss
    from vlpdist.data.loader import Loader
    from vlpdist.engine.telemetry import batch_flops

    model, engine = _engine(cfg, dims)
    loader = Loader(cfg.data, None, pin_memory=True)
    it = _batches(loader)
    wait = seconds = flops = 0.0
    samples = 0
    try:
        for i in range(warmup + steps):
            if i == warmup:  # the clock starts on a drained device
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t_start, wait, flops, samples = time.perf_counter(), 0.0, 0.0, 0
            t0 = time.perf_counter()
            batch = next(it)
            wait += time.perf_counter() - t0
            flops += batch_flops(fit, batch)
            samples += int((~batch.is_pad).sum())
            batch = batch.to(device)
            loss = _loss(engine, batch)
            engine.backward(loss)
            engine.step()
        _sync(device)
        seconds = time.perf_counter() - t_start
        loss = float(loss.detach().float())
    finally:
        it.close()
        del engine, model
    return {"samples": samples, "seconds": seconds, "wait_s": wait, "flops": flops, "loss": loss}


def _batches(loader):
    while True:  # epoch after epoch of the generated set
        yield from loader


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run(archs=("visual_bert", "vilbert"), flavor: str | None = None, max_batch: int | None = None,
        steps: int = 20, warmup: int = 5, samples: int = 1024, workers: int | None = None,
        peak_tflops: float | None = None) -> list[dict]:  # fmt: skip
    from vlpdist.bench.data import make_shards
    from vlpdist.data.loader import Loader
    from vlpdist.engine.dist import init
    from vlpdist.engine.loop import data_dims
    from vlpdist.engine.telemetry import peak_tflops as peak_of
    from vlpdist.engine.telemetry import train_flops
    from vlpdist.models.model import build_model

    dist = init()  # one rank; before anything DeepSpeed: it picks its accelerator at import
    device = dist.device
    cuda = device.type == "cuda"
    flavor = flavor or ("base" if cuda else "tiny")
    max_batch = max_batch or (256 if cuda else 8)
    workers = (min(8, os.cpu_count() or 1) if cuda else 0) if workers is None else workers
    precision = "bf16"
    peak = peak_of(device, precision, peak_tflops)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        url = os.path.join(tmp, "shards")
        make_shards(url, samples, regions=100, dim=2048, classes=1601, shard_mb=64.0)
        for arch in archs:
            probe = _config(arch, flavor, url, 1, steps, 0, precision)
            dims = data_dims(Loader(probe.data, None))
            model = build_model(arch, flavor, dims, objectives=probe.model.objectives,
                                task="pretrain")  # fmt: skip
            fit = train_flops(model, 36, 100)
            params = sum(p.numel() for p in model.parameters())
            del model
            batch, got = max_batch, None
            while got is None:
                cfg = _config(arch, flavor, url, batch, steps, workers, precision)
                try:
                    got = _measure(cfg, dims, fit, device, warmup, steps)
                except torch.cuda.OutOfMemoryError:
                    if batch == 1:
                        raise
                    batch //= 2
                    torch.cuda.empty_cache()
            secs = max(got["seconds"], 1e-9)
            achieved = got["flops"] / secs
            rec = {
                "bench": "gpu", "arch": arch, "flavor": flavor, "params": params,
                "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                "precision": precision, "zero_stage": 1, "batch_size": batch,
                "steps": steps, "warmup": warmup, "loader_workers": workers,
                "samples_per_s": round(got["samples"] / secs, 1),
                "tflops_per_device": round(achieved / 1e12, 4),
                "flops_per_sample": round(got["flops"] / max(got["samples"], 1)),
                "flops_per_sample_padded": fit.padded,
                "peak_memory_gib": round(_peak_memory_gib(device), 3),
                "data_wait_fraction": round(min(1.0, got["wait_s"] / secs), 4),
                "loss_last": round(got["loss"], 4),
            }  # fmt: skip
            if peak:
                rec.update(peak_tflops=peak, mfu=round(achieved / (peak * 1e12), 4))
                if arch == "visual_bert" and flavor == "base":
                    rec["target_mfu"] = TARGET_MFU
            out.append(rec)
    return out


def main(args) -> int:
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints; stdout is the result's
        recs = run(args.archs, args.flavor, args.max_batch, args.steps, args.warmup, args.samples,
                   args.workers, args.peak_tflops)  # fmt: skip
    for r in recs:
        print(json.dumps(r, indent=None if args.json else 1))
    return 0
