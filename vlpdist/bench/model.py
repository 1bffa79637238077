"""`vlpdist bench model`: parameters, FLOPs per sample and CPU step time of our models; for
VisualBERT, side by side with transformers' `VisualBertForPreTraining` at the same sizes,
from the same weights, on the same batch (MLM + image-text matching, the objectives the HF
model has), one forward + backward per step, median of several steps after warm-up."""

from __future__ import annotations

import json
import statistics
import time

import torch

from vlpdist.models.flavors import DataDims, resolve
from vlpdist.models.flops import flops_per_sample
from vlpdist.models.losses import pretrain_losses
from vlpdist.models.model import build_model


def _batch(dims: DataDims, b: int, t: int, r: int, g: torch.Generator) -> dict:
    mlm = torch.rand(b, t, generator=g) < 0.15
    mlm[:, 1] = True
    return {
        "input_ids": torch.randint(5, dims.vocab_size, (b, t), generator=g),
        "token_type_ids": torch.zeros(b, t, dtype=torch.long),
        "attention_mask": torch.ones(b, t, dtype=torch.long),
        "feats": torch.rand(b, r, dims.visual_dim, generator=g),
        "boxes": torch.tensor([0.1, 0.2, 0.6, 0.9]).expand(b, r, 4).clone(),
        "region_mask": torch.ones(b, r, dtype=torch.long),
        "mlm_mask": mlm,
        "labels": torch.randint(5, dims.vocab_size, (b, t), generator=g),
        "itm": torch.randint(0, 2, (b,), generator=g),
    }


def _median_step(step, steps: int) -> float:
    for _ in range(2):  # warm-up: allocator, kernels
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ours(model, x: dict):
    class _B:  # the Batch fields pretrain_losses reads
        mlm_labels = torch.where(x["mlm_mask"], x["labels"], -100)
        is_pad = torch.zeros(len(x["itm"]), dtype=torch.bool)
        itm_labels = x["itm"]

    keys = ("input_ids", "token_type_ids", "attention_mask", "feats", "boxes", "region_mask")

    def step():
        model.zero_grad(set_to_none=True)
        out = model(**{k: x[k] for k in keys}, mlm_mask=x["mlm_mask"])
        sum(pretrain_losses(out, _B).values()).backward()

    return step


def _hf(model, x: dict):
    b, t = x["input_ids"].shape
    r = x["feats"].shape[1]
    labels = torch.full((b, t + r), -100, dtype=torch.long)
    labels[:, :t] = torch.where(x["mlm_mask"], x["labels"], -100)

    def step():
        model.zero_grad(set_to_none=True)
        out = model(
            input_ids=x["input_ids"], token_type_ids=x["token_type_ids"],
            attention_mask=x["attention_mask"], visual_embeds=x["feats"],
            visual_attention_mask=x["region_mask"],
            visual_token_type_ids=torch.ones(b, r, dtype=torch.long),
            labels=labels, sentence_image_labels=x["itm"],
        )  # fmt: skip
        out.loss.backward()

    return step


def run(flavors=("tiny", "small"), batch=32, text_len=36, regions=100, steps=5, vocab=30522):
    from transformers import VisualBertForPreTraining

    from vlpdist.models.hf_visual_bert import hf_config, to_hf

    dims = DataDims(vocab_size=vocab, visual_dim=2048)
    rows = []
    for arch in ("visual_bert", "vilbert"):
        for flavor in flavors:
            torch.manual_seed(0)
            ours = build_model(arch, flavor, dims, objectives=("mlm", "itm"))
            flops = flops_per_sample(ours, text_len, regions)
            x = _batch(dims, batch, text_len, regions, torch.Generator().manual_seed(0))
            row = {
                "arch": arch, "flavor": flavor, "batch": batch, "text_len": text_len,
                "regions": regions, "threads": torch.get_num_threads(),
                "params": sum(p.numel() for p in ours.parameters()),
                "flops_per_sample": flops["forward"],
                "train_flops_per_sample": flops["train_step"],
                "ours_step_s": round(_median_step(_ours(ours, x), steps), 4),
            }  # fmt: skip
            if arch == "visual_bert":
                hf = VisualBertForPreTraining(hf_config(resolve(arch, flavor), dims))
                hf.visual_bert.load_state_dict(to_hf(ours.encoder).state_dict())
                row["hf_step_s"] = round(_median_step(_hf(hf, x), steps), 4)
                row["speedup_vs_hf"] = round(row["hf_step_s"] / row["ours_step_s"], 2)
            rows.append(row)
    return rows


def main(args) -> int:
    rows = run(tuple(args.flavors), batch=args.batch, steps=args.steps)
    for row in rows:
        print(json.dumps(row) if args.json else json.dumps(row, indent=1))
    return 0
