"""What a run tells while it trains: throughput (samples/s, tokens/s), the fraction of time
spent waiting for data, MFU, loss and metric curves, and the loader's own figures (bytes,
requests, retries, corrupt and missing samples, seconds per stage), summed over ranks.
Data wait is the loader's measure (time the loop waited for a batch), taken once.

Rank 0 writes `metrics.jsonl` (one JSON object per log step and per evaluation) and
TensorBoard events into `<run>/logs/`; for a run on object storage they are written to a
local directory and uploaded at every checkpoint and at the end. A tqdm bar shows progress
on rank 0 when stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable

import torch

from vlpdist.models.flops import TrainFlops
from vlpdist.paths import cache_root
from vlpdist.storage import Storage, is_local, join

log = logging.getLogger(__name__)

# Dense peak TFLOP/s per GPU (vendor data sheets), by precision; MFU = achieved model
# FLOP/s over this. fp32 is the non-tensor-core peak (torch leaves TF32 off for matmuls).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
}


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    """The device's peak for MFU: the override, else the table by GPU name; None on CPU and
    for GPUs not in the table (MFU is then left out rather than guessed)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():  # "H100 PCIe" is listed before "H100"
        if key in name:
            return peaks[precision]
    log.warning("telemetry: no peak FLOP/s known for %s; set run.peak_tflops for MFU", name)
    return None


def train_flops(model, t_max: int, r_max: int) -> TrainFlops:
    """`TrainFlops` of `model`, counted once per model and shape on a node and kept under
    <cache root>/flops/ (a study's runs share a few models; counting takes about a second)."""
    key = TrainFlops.key(model, t_max, r_max)
    path = os.path.join(cache_root(), "flops", f"{key}.json")
    try:
        with open(path) as f:
            return TrainFlops(model, t_max, r_max, coef=json.load(f)["coef"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not counted yet (or unreadable): count
    fit = TrainFlops(model, t_max, r_max)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"coef": fit.coef.tolist()}, f)
        os.replace(tmp, path)
    return fit


def batch_flops(fit, batch) -> float:
    """Model FLOPs of a training step on `batch`'s real samples at its own (trimmed) shape
    and masked rows: what the device computed, not the padded maximum."""
    real = ~batch.is_pad
    n = int(real.sum())
    masked = [0.0 if m is None else
              float((m[real] if m.dtype == torch.bool else m[real] != -100).sum()) / max(n, 1)
              for m in (batch.mlm_labels, batch.mrm_mask)]  # fmt: skip
    return n * fit(batch.input_ids.shape[1], batch.feats.shape[1], *masked)


class Telemetry:
    """Accumulates per-update figures; every `log_every` updates writes a record."""

    def __init__(self, cfg, dist, storage: Storage, run_url: str, local_dir: str,
                 flops_per_sample: Callable[[int, int], float], start_step: int,
                 data_counters: Callable[[], dict[str, float]]):  # fmt: skip
        self.cfg, self.dist, self.storage = cfg, dist, storage
        self.data_counters = data_counters  # the loader's cumulative figures, this rank
        self._data_seen = data_counters()
        self.data_total: dict[str, float] = {}  # summed over ranks and log windows
        self.remote_url = None if is_local(run_url) else join(run_url, "logs")
        self.dir = os.path.join(run_url, "logs") if is_local(run_url) else local_dir
        self.flops = flops_per_sample  # of one sample at (text length, regions): TrainFlops
        self.peak = peak_tflops(dist.device, cfg.deepspeed.precision, cfg.run.peak_tflops)
        self.main = dist.is_main
        self.window = self._zero()
        self.total = self._zero()
        self.losses: dict = {}  # summed over the micro-batches of the current update
        self.micro_batches = 0
        self._mark = time.perf_counter()
        self.first_step: float | None = None  # wall-clock time of this process's first update
        self.tb = self.bar = None
        if self.main:
            from tensorboardX import SummaryWriter
            from tqdm import tqdm

            os.makedirs(self.dir, exist_ok=True)
            self.tb = SummaryWriter(self.dir, flush_secs=30)
            self.bar = tqdm(total=cfg.optim.total_steps, initial=start_step, unit="step",
                            desc=cfg.run.name, disable=None, dynamic_ncols=True)  # fmt: skip

    @staticmethod
    def _zero() -> dict:
        return {"updates": 0, "samples": 0, "tokens": 0, "flops": 0.0, "wait_s": 0.0,
                "seconds": 0.0}  # fmt: skip

    def micro(self, batch, losses: dict) -> None:
        """One micro-batch on this rank: real samples, real text tokens + regions, losses
        (an update logs the mean over its micro-batches, not the last one's)."""
        for k, v in losses.items():
            self.losses[k] = self.losses.get(k, 0.0) + v.detach().float()
        self.micro_batches += 1
        real = ~batch.is_pad
        tokens = int(batch.attention_mask[real].sum()) + int(batch.region_mask[real].sum())
        n = int(real.sum())
        flops = batch_flops(self.flops, batch)
        for acc in (self.window, self.total):
            acc["samples"] += n
            acc["tokens"] += tokens
            acc["flops"] += flops

    def resume(self) -> None:
        """Start timing the next update now (after evaluation, checkpoints, start-up)."""
        self._mark = time.perf_counter()

    def update(self, step: int, lr: float, log_now: bool) -> dict | None:
        """One optimizer update done; on log steps returns (and on rank 0 writes) a record.
        Losses are averaged over ranks on log steps only (one small all_reduce)."""
        losses, n = self.losses, max(self.micro_batches, 1)
        self.losses, self.micro_batches = {}, 0
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step = time.time()
        for acc in (self.window, self.total):
            acc["updates"] += 1
            acc["seconds"] += now - self._mark
        self._mark = now
        if self.bar is not None:
            self.bar.update(1)
        if not log_now:
            return None
        now_data = self.data_counters()
        names = list(now_data)
        delta = [now_data[k] - self._data_seen.get(k, 0) for k in names]
        self._data_seen = now_data
        # one small all_reduce: losses averaged, the loader's figures summed over ranks
        vals = torch.tensor(
            [float(v) / n for v in losses.values()] + delta, dtype=torch.float64
        ).to(self.dist.device)
        if self.dist.world > 1:
            torch.distributed.all_reduce(vals)
        k = len(losses)
        loss_vals = (vals[:k] / self.dist.world).tolist()
        data = {name: _number(v) for name, v in zip(names, vals[k:].tolist(), strict=True)}
        for name, v in data.items():
            self.data_total[name] = self.data_total.get(name, 0) + v
        for acc in (self.window, self.total):
            acc["wait_s"] += data.get("wait_s", 0.0) / self.dist.world  # a rank's mean wait
        rec = {"step": step, "loss": sum(loss_vals),
               **dict(zip(losses, loss_vals, strict=True)),
               "lr": lr, **self.rates(self.window), "data": data}  # fmt: skip
        self.window = self._zero()
        if self.main:
            self.write(rec, "train")
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}")
        return rec

    def rates(self, acc: dict) -> dict:
        """Throughput over all ranks (each rank runs the same number of micro-batches)."""
        secs = max(acc["seconds"], 1e-9)
        samples_s = acc["samples"] * self.dist.world / secs
        out = {
            "samples_per_s": round(samples_s, 3),
            "tokens_per_s": round(acc["tokens"] * self.dist.world / secs, 1),
            "data_wait_fraction": round(min(1.0, acc["wait_s"] / secs), 4),
            "step_s": round(secs / max(acc["updates"], 1), 4),
        }
        achieved = acc["flops"] / secs  # per device (every rank counts its own batches)
        out["tflops_per_device"] = round(achieved / 1e12, 4)
        if self.peak:
            out["mfu"] = round(achieved / (self.peak * 1e12), 4)
        return out

    def write(self, rec: dict, kind: str) -> None:
        """A record to metrics.jsonl and its numbers to TensorBoard (rank 0)."""
        if not self.main:
            return
        with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"kind": kind, **rec}) + "\n")
        for k, v in rec.items():
            if k != "step" and isinstance(v, int | float):
                self.tb.add_scalar(f"{kind}/{k}", v, rec["step"])
            elif isinstance(v, dict):  # the loader's figures: data/bytes_read, ...
                for sub, x in v.items():
                    if isinstance(x, int | float):
                        self.tb.add_scalar(f"{kind}/{k}/{sub}", x, rec["step"])

    def summary(self) -> dict:
        return {**self.rates(self.total), "updates": self.total["updates"],
                "flops_per_sample": round(self.total["flops"] / max(self.total["samples"], 1)),
                "flops_per_sample_padded": self.flops.padded, "peak_tflops": self.peak,
                "world_size": self.dist.world, "device": str(self.dist.device.type),
                "data": {k: _number(v) for k, v in self.data_total.items()}}  # fmt: skip

    def flush(self) -> None:
        """Logs of a remote run to <run>/logs/ (checkpoints and the end)."""
        if not self.main:
            return
        self.tb.flush()
        if self.remote_url:
            for name in sorted(os.listdir(self.dir)):
                self.storage.put_file(os.path.join(self.dir, name), join(self.remote_url, name))

    def close(self) -> None:
        if self.main:
            self.flush()
            self.tb.close()
            self.bar.close()


def _number(v: float) -> int | float:
    """Counts as ints, seconds rounded (they were summed as floats over ranks)."""
    return int(round(v)) if float(v).is_integer() else round(v, 4)
