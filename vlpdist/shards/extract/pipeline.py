"""`vlpdist shards extract`: images → a committed shard set of region features, on Ray Data.

The stages, in order:
  list the images (sorted by id) and cut them into chunks of `images_per_shard`
  → skip the chunks an interrupted run already committed (`_parts/chunk-N.json`)
  → Ray Data: read + decode + resize on CPU tasks → the extractor in an actor pool
    (batched, one actor per GPU or per CPU slice), streaming, in order
  → the driver writes each chunk as one shard as soon as its last image arrives,
    then its part record (the shard's commit marker for a rerun)
  → index.json last.
A bad image is a row with its reason: it is listed in the build report with its path and
never stops the job. Batches are padded to `batch_size`, so an image's features do not
depend on which images share its batch: the same images and weights give bit-identical
features on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from vlpdist.config import to_dict
from vlpdist.config.extract import ExtractConfig
from vlpdist.errors import ConfigError, ShardError
from vlpdist.shards.extract.cluster import connect
from vlpdist.shards.extract.extractors import Extractor, get_extractor
from vlpdist.shards.extract.images import BadImage, ImageRef, decode, list_images
from vlpdist.shards.schema import Sample, load_npy, make_key, npy_bytes
from vlpdist.shards.writer import BuildReport, ShardWriter
from vlpdist.storage import Storage, join

PARTS = "_parts"
# CPUs a decode task asks for: not the actors' count, or Ray Data would fuse decoding into
# the model actors
DECODE_CPUS = 0.5


def extract(cfg: ExtractConfig, out_url: str, *, overwrite: bool = False) -> dict:
    """Extract the features of `cfg.images` into a shard set at `out_url`; the manifest."""
    extractor = get_extractor(cfg.extractor, cfg.options, cfg.weights, cfg.seed)
    if not cfg.images:
        raise ConfigError("images: name the images to extract (images=DIR, GLOB or TAR URL)")
    storage = Storage(cfg.storage)
    out_url = out_url.rstrip("/")
    dataset = cfg.dataset or out_url.rsplit("/", 1)[-1]
    report = BuildReport()
    writer = ShardWriter(storage, out_url, dataset, report, target_shard_bytes=1 << 62,
                         progress=False, overwrite=overwrite, need_texts=False)  # fmt: skip
    refs, notes = list_images(storage, cfg.images)
    report.notes.extend(notes)
    described = extractor.describe()
    k = cfg.images_per_shard
    run = _Run(storage, out_url, writer, report, _fingerprint(described, cfg, refs),
               [refs[i : i + k] for i in range(0, len(refs), k)])  # fmt: skip
    done = _resume(run, overwrite)
    if done:
        report.notes.append(f"resumed: {done} of {len(run.chunks)} chunks were already committed")
    extra = {"extractor": described, "images": cfg.images, "images_listed": len(refs)}
    try:
        if done < len(run.chunks):
            rows = _run_ray(cfg, extractor, [r for c in run.chunks[done:] for r in c])
            extra["throughput"] = _write(run, rows, done, cfg.progress)
        manifest = writer.commit("extract", to_dict(cfg, redact=True), None, extra=extra)
    finally:
        print(report.summary(dataset), file=sys.stderr)
    storage.rm(join(out_url, PARTS), recursive=True)
    return manifest


@dataclass
class _Run:
    storage: Storage
    out_url: str
    writer: ShardWriter
    report: BuildReport
    fingerprint: str
    """What a committed chunk depends on: a rerun with anything else starts again."""
    chunks: list[list[ImageRef]]
    """The images, sorted by id, cut into shards of images_per_shard."""

    def part_url(self, chunk: int) -> str:
        return join(self.out_url, PARTS, f"chunk-{chunk:06d}.json")


def _fingerprint(described: dict, cfg: ExtractConfig, refs: list[ImageRef]) -> str:
    """What a committed chunk depends on: a rerun with anything else starts again."""
    h = hashlib.sha256(json.dumps([described, cfg.images_per_shard], sort_keys=True).encode())
    for r in refs:
        h.update(f"{r.image_id}\0{r.where}\n".encode())
    return h.hexdigest()


def _resume(run: _Run, overwrite: bool) -> int:
    """Adopt the chunks an interrupted run committed (a prefix: chunks are written in
    order); the number of chunks done."""
    parts = join(run.out_url, PARTS)
    if not run.storage.exists(parts):
        return 0
    done = 0
    while run.storage.exists(run.part_url(done)):
        part = json.loads(run.storage.read_text(run.part_url(done)))
        if part["fingerprint"] != run.fingerprint:
            if not overwrite:
                raise ShardError(
                    f"{parts}: an unfinished extraction with other images or settings is "
                    "here; use --overwrite to start again"
                )
            run.storage.rm(parts, recursive=True)
            return 0
        if part["shard"] is not None:
            run.writer.adopt(part["shard"], part["keys"], part["feature_dim"], part["cls_dim"])
        run.report.read += part["read"]
        run.report.skipped.extend(part["skipped"])
        done += 1
    return done


def _write(run: _Run, rows, done: int, progress: bool) -> dict:
    """Consume the rows in order; each chunk becomes a shard, then its part record. The
    throughput: images, seconds, the seconds until the first image came back (the actors'
    start), and the rate after that, so a short run's rate can be read apart from its start."""
    writer, report = run.writer, run.report
    total = sum(len(c) for c in run.chunks[done:])
    bar = tqdm(total=total, desc="extract", unit=" img", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)  # fmt: skip
    chunk, left, skipped_before, keys = done, len(run.chunks[done]), len(report.skipped), []
    started, first, burst, last = time.perf_counter(), None, 0, 0.0
    for row in rows:
        last = time.perf_counter() - started
        first = first if first is not None else last
        burst += last - first < 0.05  # rows that came back with the first (one block)
        report.read += 1
        if row["error"]:
            report.skip(row["image_id"], row["error"], row["where"])
        else:
            sample = _sample(row)
            if writer.add(sample, row["where"]):
                keys.append(sample.key)
        bar.update(1)
        bar.set_postfix_str(f"{bar.n / (time.perf_counter() - started):.1f} img/s", refresh=False)
        left -= 1
        if left == 0:
            part = {
                "fingerprint": run.fingerprint,
                "shard": writer.roll(),
                "keys": keys,
                "feature_dim": writer.feature_dim,
                "cls_dim": writer.cls_dim,
                "read": len(run.chunks[chunk]),
                "skipped": report.skipped[skipped_before:],
            }
            run.storage.write_text(run.part_url(chunk), json.dumps(part))
            chunk += 1
            if chunk < len(run.chunks):
                left, skipped_before, keys = len(run.chunks[chunk]), len(report.skipped), []
    bar.close()
    if chunk != len(run.chunks):
        raise ShardError(
            f"{run.out_url}: extraction ended after {chunk} of {len(run.chunks)} chunks"
        )
    seconds = time.perf_counter() - started
    after = last - (first or 0)
    return {
        "images": total,
        "seconds": round(seconds, 3),
        "first_image_s": round(first or 0, 3),
        # from the first rows back to the last: the rate a long extraction runs at
        "images_per_s_after_first": round((total - burst) / after, 3) if after > 0 else None,
    }


def _sample(row: dict) -> Sample:
    cls = load_npy(row["cls_prob"]) if len(row["cls_prob"]) else None
    meta = {
        "image_id": row["image_id"],
        "width": int(row["width"]),
        "height": int(row["height"]),
        "source": "extract",
        "split": "",
        "texts": [],
    }
    return Sample(
        make_key(row["image_id"]), load_npy(row["feats"]), load_npy(row["boxes"]), meta, cls
    )


# ---------------------------------------------------------------- Ray Data


def _run_ray(cfg: ExtractConfig, extractor: Extractor, refs: list[ImageRef]):
    """The rows of `refs`, in their order, each with its features or its error."""
    import ray

    connect()
    cpus = ray.cluster_resources().get("CPU", 0)
    if cfg.actors * cfg.cpus_per_actor + DECODE_CPUS > cpus:
        raise ConfigError(
            f"actors x cpus_per_actor = {cfg.actors} x {cfg.cpus_per_actor} leaves no CPU for "
            f"decoding on this Ray cluster ({cpus:g} CPUs); lower actors or cpus_per_actor"
        )
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # chunks are written in order
    ctx.enable_progress_bars = False  # the driver's bar counts images
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [
        {"image_id": r.image_id, "url": r.url, "where": r.where,
         "start": -1 if r.start is None else r.start, "end": -1 if r.end is None else r.end}
        for r in refs
    ]  # fmt: skip
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // cfg.batch_size))
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={
            "extractor": extractor,
            "storage": cfg.storage.resolved(),
            "max_pixels": cfg.max_pixels,
        },  # fmt: skip
        batch_size=cfg.batch_size,
        batch_format="pandas",
        num_cpus=DECODE_CPUS,
    )
    ds = ds.map_batches(
        ExtractActor,
        fn_constructor_kwargs={
            "extractor": extractor,
            "batch_size": cfg.batch_size,
            "threads": cfg.threads_per_actor,
            "actors": cfg.actors,
        },
        batch_size=cfg.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor,
    )
    return ds.iter_rows()


def decode_batch(batch, extractor: Extractor, storage, max_pixels: int):
    """CPU stage: read each image, decode it, fit it to the model's square input."""
    st = Storage(storage)
    size = extractor.input_size
    pixels, hw, wh, errors = [], [], [], []
    for url, start, end in zip(batch["url"], batch["start"], batch["end"], strict=True):
        square, content, dims, error = np.zeros((size, size, 3), np.uint8), (0, 0), (0, 0), ""
        try:
            data = st.read_bytes(
                url, None if start < 0 else int(start), None if end < 0 else int(end)
            )
            rgb, dims = decode(data, max_pixels, at_least=size)
            square, content = extractor.prepare(rgb)
        except BadImage as e:
            error = e.reason
        pixels.append(square.tobytes())
        hw.append(content)
        wh.append(dims)
        errors.append(error)
    out = batch.drop(columns=["url", "start", "end"])
    out["pixels"] = pixels
    out["content_h"] = [h for h, _ in hw]
    out["content_w"] = [w for _, w in hw]
    out["width"] = [w for w, _ in wh]
    out["height"] = [h for _, h in wh]
    out["error"] = errors
    return out


class ExtractActor:
    """Model stage: the extractor's module, forwarding fixed-size batches."""

    def __init__(self, extractor: Extractor, batch_size: int, threads: int, actors: int = 1):
        import torch

        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // actors))
        self.torch = torch
        self.extractor, self.batch_size = extractor, batch_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.module = extractor.module().to(self.device)

    def __call__(self, batch):
        torch, size = self.torch, self.extractor.input_size
        ok = [i for i, e in enumerate(batch["error"]) if not e]
        n = self.batch_size
        px = np.zeros((n, size, size, 3), np.uint8)
        hw = np.ones((n, 2), np.int64) * size
        for slot, i in enumerate(ok):
            px[slot] = np.frombuffer(batch["pixels"].iloc[i], np.uint8).reshape(size, size, 3)
            hw[slot] = (batch["content_h"].iloc[i], batch["content_w"].iloc[i])
        feats, boxes, cls = [b""] * len(batch), [b""] * len(batch), [b""] * len(batch)
        if ok:
            x = torch.from_numpy(px).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            with torch.inference_mode():
                regions = self.module(x, torch.from_numpy(hw))
            for slot, i in enumerate(ok):
                f, b, c = regions[slot]
                feats[i] = npy_bytes(f.float().cpu().numpy().astype(np.float16))
                boxes[i] = npy_bytes(b.float().cpu().numpy().astype(np.float32))
                cls[i] = b"" if c is None else npy_bytes(c.float().cpu().numpy().astype(np.float16))
        out = batch.drop(columns=["pixels", "content_h", "content_w"])
        out["feats"], out["boxes"], out["cls_prob"] = feats, boxes, cls
        return out
