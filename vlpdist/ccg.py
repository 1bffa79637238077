"""`vlpdist shards caption CONFIG`: generated in-domain captions, the paper's CCG.

1. train a captioner with the engine (data.task caption: a VisualBERT/ViLBERT encoder over
   the regions + a small transformer decoder) on a caption shard set such as COCO; the run
   resumes and exports like any other (`<run>/export/`)
2. decode a caption for every image of another shard set (`caption.images`: CC images, the
   downstream task's images), greedy or beam search
3. write those images with their generated captions as a new shard set (`caption.out`)
   whose manifest records the captioner (its export and run) and the decoding settings
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from vlpdist.config import Config
from vlpdist.errors import VlpdistError
from vlpdist.shards.reader import iter_samples, load_manifest
from vlpdist.shards.schema import Sample
from vlpdist.shards.tokenize import TextEncoder
from vlpdist.shards.writer import BuildReport, ShardWriter
from vlpdist.storage import Storage, is_local


def caption_set(cfg: Config, progress: bool = True) -> dict:
    c = cfg.caption
    if not c.images or not c.out:
        raise VlpdistError(
            "caption.images and caption.out: name the images to caption and the new set"
        )
    storage = Storage(cfg.storage)
    images = load_manifest(storage, c.images)  # one line if it is not a shard set
    report = BuildReport()
    # refuses an existing set now (unless caption.overwrite), before any training
    writer = ShardWriter(storage, c.out, c.name, report, progress=progress, overwrite=c.overwrite)
    from vlpdist import engine
    from vlpdist.engine.setup import check_command

    check_command(cfg, "caption")
    trained = engine.run(cfg)
    if trained["rank"] != 0:
        return trained
    with tempfile.TemporaryDirectory() as tmp:
        url = trained["export"]
        export = url if is_local(url) else storage.get_dir(url, tmp)
        from transformers import AutoTokenizer

        from vlpdist.models.export import load_pretrained

        model = load_pretrained(export)
        tok = AutoTokenizer.from_pretrained(export)
        encoder = TextEncoder(tok, f"captioner:{trained['run']}", cfg.data.max_text_tokens)
        decoding = {"beam_size": c.beam_size, "max_len": c.max_len, "length_penalty": 0.7,
                    "max_regions": cfg.data.max_regions}  # fmt: skip
        t0, batch = time.time(), []
        for sample in iter_samples(storage, c.images, images):
            batch.append(sample)
            if len(batch) == c.batch_size:
                _write(writer, model, tok, batch, cfg, decoding)
                batch = []
        if batch:
            _write(writer, model, tok, batch, cfg, decoding)
        captioner = {"export": trained["export"], "run": trained["run"], "arch": cfg.model.arch,
                     "flavor": cfg.model.flavor, "trained_on": [s.url for s in cfg.data.sources]}  # fmt: skip
        manifest = writer.commit(
            "ccg", {"images": c.images, "captioner": captioner, "decoding": decoding}, encoder,
            synthetic=bool(images.get("synthetic")),
            extra={"captioner": captioner, "decoding": decoding, "images": c.images,
                   "seconds": round(time.time() - t0, 2)},
        )  # fmt: skip
    return {**trained, "out": c.out, "samples": manifest["num_samples"],
            "report": report.summary(c.name)}  # fmt: skip


def _write(writer, model, tok, samples: list[Sample], cfg, decoding: dict) -> None:
    """Decode one batch of images and add them, with their new captions, to the set."""
    from vlpdist.models.caption import generate

    r = cfg.data.max_regions
    dim = samples[0].feats.shape[1]
    feats = np.zeros((len(samples), r, dim), dtype=np.float32)
    boxes = np.zeros((len(samples), r, 4), dtype=np.float32)
    mask = np.zeros((len(samples), r), dtype=np.int64)
    for i, s in enumerate(samples):  # the loader's truncation: the detector's first regions
        n = min(len(s.feats), r)
        feats[i, :n], boxes[i, :n], mask[i, :n] = s.feats[:n], s.boxes[:n], 1
    ids = generate(model, torch.from_numpy(feats), torch.from_numpy(boxes), torch.from_numpy(mask),
                   bos=tok.cls_token_id, eos=tok.sep_token_id, max_len=decoding["max_len"],
                   beam=decoding["beam_size"], length_penalty=decoding["length_penalty"])  # fmt: skip
    for s, caption in zip(samples, ids, strict=True):
        text = tok.decode(caption, skip_special_tokens=True)
        meta = {k: v for k, v in s.meta.items() if k != "texts"}
        meta["texts"] = [{"kind": "caption", "text": text, "ids": caption, "generated": True}]
        writer.add(Sample(s.key, s.feats, s.boxes, meta, s.cls_prob))
