"""`vlpdist bench extract`: the extraction pipeline against a plain loop and the model alone.

On photo-sized JPEGs drawn for the run (640 x 480 by default), with the same extractor,
settings and weights:
  loop_images_per_s      a plain loop: open with PIL, transform, forward one image at a
                         time (torch on every core); loop_decode_share is the share of its
                         time spent decoding and transforming
  pipeline_images_per_s  `vlpdist shards extract` on local Ray: decoding on CPU tasks, the
                         model in its actor pool, shards written; counted from the first
                         batch back (a long extraction's rate). pipeline_start_s is the time
                         until then (the actors' start), and pipeline_images_per_s_with_start
                         the rate with it (and Ray's planning; not Ray's own start)
  forward_images_per_s   the model's forward alone on pre-decoded batches of batch_size
  speedup_vs_loop        pipeline / loop
  ratio_to_forward       pipeline / forward: how well decoding and writing hide behind compute
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from vlpdist.bench.pictures import draw, jpeg
from vlpdist.config.extract import ExtractConfig
from vlpdist.errors import ConfigError

TARGETS = {"speedup_vs_loop": 2.0, "ratio_to_forward": 0.8}


def _photos(root: str, n: int, size: tuple[int, int]) -> list[str]:
    paths = []
    for i in range(n):
        path = os.path.join(root, f"photo{i:05d}.jpg")
        with open(path, "wb") as f:
            f.write(jpeg(draw(i, size)[0]))
        paths.append(path)
    return paths


def _loop(extractor, module, paths: list[str]) -> tuple[float, float]:
    """Images/s of the plain loop, and the share of its time spent decoding (the most that
    overlapping decoding with compute can save: speedup <= 1 / (1 - share))."""
    import torch
    from PIL import Image

    t = time.perf_counter()
    decoding = 0.0
    for path in paths:
        t0 = time.perf_counter()
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        square, hw = extractor.prepare(rgb)
        x = torch.from_numpy(square).permute(2, 0, 1)[None].float().div_(255)
        decoding += time.perf_counter() - t0
        with torch.no_grad():
            module(x, torch.tensor([hw]))
    seconds = time.perf_counter() - t
    return len(paths) / seconds, decoding / seconds


def _forward(extractor, module, paths: list[str], batch_size: int) -> float:
    import torch
    from PIL import Image

    squares, hws = [], []
    for path in paths:
        with Image.open(path) as im:
            square, hw = extractor.prepare(np.asarray(im.convert("RGB")))
        squares.append(square)
        hws.append(hw)
    x = torch.from_numpy(np.stack(squares)).permute(0, 3, 1, 2).float().div_(255)
    hw = torch.tensor(hws)
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch_size):
            module(x[i : i + batch_size], hw[i : i + batch_size])
    return len(paths) / (time.perf_counter() - t)


def run(cfg: ExtractConfig, images: int, size: tuple[int, int]) -> dict:
    import torch

    from vlpdist.shards.extract.cluster import connect
    from vlpdist.shards.extract.extractors import get_extractor
    from vlpdist.shards.extract.pipeline import extract

    if cfg.images:
        raise ConfigError("images: bench extract draws its own photos; leave it unset")
    extractor = get_extractor(cfg.extractor, cfg.options, cfg.weights, cfg.seed)
    module = extractor.module()
    with tempfile.TemporaryDirectory(prefix="vlpdist-bench-extract-") as tmp:
        os.makedirs(os.path.join(tmp, "photos"))
        paths = _photos(os.path.join(tmp, "photos"), images, size)
        cfg.images = os.path.join(tmp, "photos")
        cfg.progress = False
        _forward(extractor, module, paths[: cfg.batch_size], cfg.batch_size)  # warm-up
        loop, decode_share = _loop(extractor, module, paths)
        forward = _forward(extractor, module, paths, cfg.batch_size)
        del module
        connect()
        t = time.perf_counter()
        tp = extract(cfg, os.path.join(tmp, "out"))["extra"]["throughput"]
        whole = tp["images"] / (time.perf_counter() - t)
        # None when every row came back at once (a run too short to tell)
        pipeline = tp["images_per_s_after_first"] or whole
    return {
        "bench": "extract",
        "images": images,
        "image_size": list(size),
        "extractor": extractor.describe(),
        "batch_size": cfg.batch_size,
        "actors": cfg.actors,
        "cpus_per_actor": cfg.cpus_per_actor,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loop_images_per_s": round(loop, 3),
        "loop_decode_share": round(decode_share, 3),
        "pipeline_images_per_s": round(pipeline, 3),
        "pipeline_start_s": tp["first_image_s"],
        "pipeline_images_per_s_with_start": round(whole, 3),
        "forward_images_per_s": round(forward, 3),
        "speedup_vs_loop": round(pipeline / loop, 3),
        "ratio_to_forward": round(pipeline / forward, 3),
        "targets": TARGETS,
    }


def main(args) -> int:
    from vlpdist.config import load

    cfg = load(ExtractConfig, args.config, args.overrides)
    w, h = (int(v) for v in args.size.lower().split("x"))
    result = run(cfg, args.images, (w, h))
    print(json.dumps(result, indent=None if args.json else 1))
    return 0
