"""A model = an encoder (VisualBERT or ViLBERT) + the heads of its objectives or task.

`forward` takes the Batch's keyword tensors (see `losses.model_inputs`) and returns raw
head outputs in a dict; losses live in losses.py. Pretraining models carry the heads of
their objectives (a config choice per run: the paper's "MLM" is {mlm}, "MMM" adds region
modelling); task models carry one classifier, a captioner its decoder (the heads of each
task: tasks.py). `freeze_base()` trains only the head.
"""

from __future__ import annotations

import torch
from torch import nn

from vlpdist.models.base import Encoder
from vlpdist.models.flavors import DataDims, resolve
from vlpdist.models.tasks import TASKS
from vlpdist.models.text_init import load_text_weights
from vlpdist.models.vilbert import ViLBertEncoder
from vlpdist.models.visual_bert import VisualBertEncoder

ENCODERS = {"visual_bert": VisualBertEncoder, "vilbert": ViLBertEncoder}


class VLModel(nn.Module):
    def __init__(self, encoder: Encoder, dims: DataDims, objectives=(), task: str = "pretrain"):
        super().__init__()
        self.encoder, self.dims, self.task = encoder, dims, task
        spec = TASKS[task]
        self.objectives = tuple(objectives) if spec.objectives else ()
        self.heads = nn.ModuleDict(spec.heads(encoder, dims, self.objectives))
        self.frozen = False

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        feats: torch.Tensor,
        boxes: torch.Tensor,
        region_mask: torch.Tensor,
        mlm_mask: torch.Tensor | None = None,
        mrm_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        h = self.heads
        if "caption" in h:  # the image alone goes in ([CLS] + regions); the caption comes out
            enc = self.encoder(
                input_ids=input_ids[:, :1], token_type_ids=token_type_ids[:, :1],
                attention_mask=attention_mask[:, :1], feats=feats, boxes=boxes,
                region_mask=region_mask,
            )  # fmt: skip
            return {"caption": h["caption"](input_ids[:, :-1], enc.image, region_mask)}
        enc = self.encoder(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
            feats=feats, boxes=boxes, region_mask=region_mask,
        )  # fmt: skip
        out = {}
        if "mlm" in h and mlm_mask is not None:
            out["mlm"] = h["mlm"](enc.text[mlm_mask])
        if mrm_mask is not None and ("mrc" in h or "mfr" in h):
            masked = enc.image[mrm_mask]
            for name in ("mrc", "mfr"):
                if name in h:
                    out[name] = h[name](masked)
        if "itm" in h:
            out["itm"] = h["itm"](enc.pooled)
        if "task" in h:
            out["logits"] = h["task"](enc.pooled)
        return out

    def freeze_base(self) -> None:
        """Only the heads train; the encoder keeps its weights and runs in eval mode (no
        dropout), as features for the head, in the paper's frozen-transfer protocol."""
        self.encoder.requires_grad_(False)
        self.frozen = True
        self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self


def build_model(
    arch: str,
    flavor: str,
    dims: DataDims,
    *,
    sizes: dict | None = None,
    objectives=("mlm",),
    task: str = "pretrain",
    freeze_base: bool = False,
    text_init: str | None = None,
) -> VLModel:
    """A model for `dims` (from the data); `text_init` loads a pretrained BERT (directory or
    hub name) into the text stream, before the heads tie to its word embeddings."""
    encoder = ENCODERS[arch](resolve(arch, flavor, sizes), dims)
    if text_init:
        load_text_weights(encoder, text_init)
        if hasattr(encoder, "copy_text_to_visual_embeddings"):
            # VisualBERT starts its visual token-type and position tables from BERT's (as
            # MMF does after loading bert-base-uncased)
            encoder.copy_text_to_visual_embeddings()
    model = VLModel(encoder, dims, objectives, task)
    if freeze_base:
        model.freeze_base()
    return model
