"""`vlpdist bench data`: loader throughput against raw reads and a plain webdataset pipeline.

On generated shards shaped like real bottom-up-attention data (100 regions x 2048 fp16
features, a 1601-class detector distribution, 5 tokenized captions per image), one process:
  samples_per_s               our loader (num_workers=0): range reads, decode, MLM/MRM/ITM
                              masking, collate into Batch tensors
  raw_samples_per_s           the same shard bytes read sequentially, whole shards, no
                              decoding (local: 8 MB reads; s3: 8 MB ranged GETs)
  wds_baseline_samples_per_s  `webdataset.WebDataset(urls).decode()` (tarfile + np.load
                              per member) into the same Collator, i.e. the same tensors
With `--source s3` the shards live on an S3 server started on loopback for the run, and
samples_per_s is the loader without its node-local cache. `--cache --epochs N` (s3) adds the
cached loader, N epochs from an empty cache directory:
  epoch1_ratio_to_uncached    its first epoch (every shard filled once, ahead of the reads)
                              against the uncached S3 loader; target >= 1.0
  epoch2_remote_bytes         bytes its second epoch read from S3; target exactly 0
  epoch2_ratio_to_file        its second epoch against the same loader on local files;
                              target >= 0.8
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shlex
import sys
import tempfile
import time

import numpy as np

from vlpdist.config import CacheConfig, DataConfig, DataSource, StorageConfig
from vlpdist.shards import schema
from vlpdist.shards.tokenize import TextEncoder
from vlpdist.shards.writer import BuildReport, ShardWriter
from vlpdist.storage import Storage, join


def make_shards(out: str, n: int, regions: int, dim: int, classes: int, shard_mb: float) -> dict:
    from vlpdist.shards.synthetic.text import build_vocab, make_tokenizer

    words = [w for w in build_vocab()[5:] if w.isalpha()]
    with tempfile.TemporaryDirectory() as tmp:
        enc = TextEncoder(make_tokenizer(tmp), "bench", 36)
        writer = ShardWriter(Storage(), out, "bench", BuildReport(), progress=False,
                             target_shard_bytes=int(shard_mb * 1e6), overwrite=True)  # fmt: skip
        rng = np.random.default_rng(0)
        for i in range(n):
            xy = rng.uniform(0, 0.6, (regions, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.4, (regions, 2))], 1)
            caps = [" ".join(rng.choice(words, rng.integers(8, 14))) for _ in range(5)]
            writer.add(schema.Sample(
                key=f"img{i:07d}",
                feats=np.maximum(rng.standard_normal((regions, dim), np.float32), 0).astype(np.float16),
                boxes=boxes.astype(np.float32),
                cls_prob=rng.dirichlet(np.full(classes, 0.1), regions).astype(np.float16),
                meta={"image_id": i, "width": 640, "height": 480, "source": "bench", "split": "train",
                      "texts": [{"kind": "caption", "text": c, "ids": enc(c)} for c in caps]},
            ))  # fmt: skip
        return writer.commit("bench", {"bench": "data"}, enc)


def _raw(storage: Storage, urls: list[str], n: int) -> float:
    t = time.perf_counter()
    for url in urls:
        if "://" in url:
            for _ in storage.iter_chunks(url, 8 << 20):
                pass
        else:
            with open(url, "rb") as f:
                while f.read(8 << 20):
                    pass
    return n / (time.perf_counter() - t)


def _ours(cfg: DataConfig, storage_cfg: StorageConfig | None) -> tuple[float, dict]:
    from vlpdist.data.loader import Loader

    loader = Loader(cfg, storage_cfg)
    t = time.perf_counter()
    n = sum(len(b) for b in loader)
    return n / (time.perf_counter() - t), loader.telemetry()


def _cached(cfg: DataConfig, storage_cfg: StorageConfig | None, epochs: int, tmp: str,
            run: int) -> list[dict]:  # fmt: skip
    """`epochs` epochs of the cached loader from an empty cache: per epoch, samples/s and
    what the cache did."""
    from vlpdist.data.loader import Loader

    cache = CacheConfig(dir=os.path.join(tmp, f"cache-{run}"))
    loader = Loader(dataclasses.replace(cfg, cache=cache), storage_cfg)
    out = []
    for _ in range(epochs):
        before, t = loader.counters(), time.perf_counter()
        n = sum(len(b) for b in loader)
        dt = time.perf_counter() - t
        after = loader.counters()
        delta = {k: after[k] - before[k] for k in ("remote_bytes", "cache_hits", "cache_misses",
                                                   "cache_fills", "cache_fill_bytes",
                                                   "cache_evictions")}  # fmt: skip
        out.append({"samples_per_s": round(n / dt, 1), **delta})
    return out


def _cache_figures(cfg, storage_cfg, local: str, uncached: float, epochs: int, repeats: int,
                   tmp: str) -> dict:  # fmt: skip
    file_cfg = dataclasses.replace(cfg, sources=[DataSource(local)])
    runs, files = [], []
    for r in range(repeats):  # the file loader right after each cached run: same conditions
        runs.append(_cached(cfg, storage_cfg, epochs, tmp, r))
        files.append(_ours(file_cfg, None)[0])
    on_file = max(files)
    best = [max(r[e]["samples_per_s"] for r in runs) for e in range(epochs)]
    return {
        "epochs": epochs, "file_samples_per_s": round(on_file, 1),
        "epoch_samples_per_s": best,
        "epoch1_ratio_to_uncached": round(best[0] / uncached, 3),
        "epoch2_remote_bytes": max(r[1]["remote_bytes"] for r in runs),
        "epoch2_ratio_to_file": round(best[1] / on_file, 3),
        "cache_per_epoch": runs[0],
    }  # fmt: skip


def _wds(cfg: DataConfig, storage_cfg: StorageConfig | None, urls: list[str]) -> float:
    import webdataset as wds

    from vlpdist.data.decode import Decoded
    from vlpdist.data.loader import Loader

    loader = Loader(cfg, storage_cfg)  # its collation, so both pipelines make the same batches
    if "://" in urls[0]:  # how webdataset users read object storage: a pipe per shard
        code = "import sys,shutil;from vlpdist.storage import Storage;" \
               "shutil.copyfileobj(Storage().open_read(sys.argv[1]),sys.stdout.buffer)"  # fmt: skip
        urls = [f"pipe:{shlex.quote(sys.executable)} -c {shlex.quote(code)} {u}" for u in urls]
    t, n, batch, pos = time.perf_counter(), 0, [], 0
    b = cfg.batch_size
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode():
        batch.append(
            Decoded(s["__key__"], s["feats.npy"], s["boxes.npy"], s.get("cls_prob.npy"), s["json"])
        )
        if len(batch) == b:
            loader.collate(batch, pos)
            n, pos, batch = n + b, pos + b, []
    return n / (time.perf_counter() - t)


def run(source: str = "file", samples: int = 1024, regions: int = 100, dim: int = 2048,
        classes: int = 1601, batch_size: int = 32, shard_mb: float = 64.0, repeats: int = 3,
        cache: bool = False, epochs: int = 2) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "bench")
        manifest = make_shards(local, samples, regions, dim, classes, shard_mb)
        server, storage_cfg, url = None, None, local
        if source == "s3":
            server, storage_cfg, url = _serve_s3(local)
        try:
            storage = Storage(storage_cfg)
            urls = [join(url, s["name"]) for s in manifest["shards"]]
            cfg = DataConfig(sources=[DataSource(url)], batch_size=batch_size, num_workers=0,
                             max_regions=regions, max_text_tokens=36,
                             cache=CacheConfig(enabled=False))  # fmt: skip
            raw = max(_raw(storage, urls, samples) for _ in range(repeats))
            runs = [_ours(cfg, storage_cfg) for _ in range(repeats)]
            ours, tel = max(runs, key=lambda r: r[0])
            base = max(_wds(cfg, storage_cfg, urls) for _ in range(repeats))
            cached = (_cache_figures(cfg, storage_cfg, local, ours, epochs, repeats, tmp)
                      if cache else {})  # fmt: skip
        finally:
            if server:
                server.stop()
    return {
        "bench": "data", "source": source, "samples": samples, "regions": regions,
        "feature_dim": dim, "cls_prob_classes": classes, "batch_size": batch_size,
        "shards": len(manifest["shards"]), "mb": round(manifest["total_bytes"] / 1e6, 1),
        "processes": 1, "cpus": os.cpu_count(), "repeats_best_of": repeats,
        "samples_per_s": round(ours, 1), "raw_samples_per_s": round(raw, 1),
        "ratio_to_raw": round(ours / raw, 3),
        "wds_baseline_samples_per_s": round(base, 1), "speedup_vs_wds": round(ours / base, 2),
        **cached,
        "targets": {"file": {"speedup_vs_wds": 3.0, "ratio_to_raw": 0.2},
                    "s3": {"ratio_to_raw": 0.8}}[source]
        | ({"epoch1_ratio_to_uncached": 1.0, "epoch2_remote_bytes": 0,
            "epoch2_ratio_to_file": 0.8} if cache else {}),
        "telemetry": tel,
    }  # fmt: skip


def _serve_s3(local: str):
    """An S3 server on loopback holding a copy of the shards; env set for subprocesses."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")  # fmt: skip
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    storage = Storage()
    for path in glob.glob(os.path.join(local, "**", "*"), recursive=True):
        if os.path.isfile(path):
            storage.put_file(path, "s3://bench/shards/" + os.path.relpath(path, local))
    return server, StorageConfig(endpoint_url=endpoint), "s3://bench/shards"


def main(args) -> int:
    if args.cache and args.source != "s3":
        print("vlpdist bench data: --cache measures the cache of object storage: add --source s3",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.cache and args.epochs < 2:
        print("vlpdist bench data: --epochs must be at least 2 with --cache", file=sys.stderr)
        return 2
    result = run(args.source, samples=args.samples, repeats=args.repeats, cache=args.cache,
                 epochs=args.epochs)  # fmt: skip
    print(json.dumps(result, indent=None if args.json else 1))
    return 0
