"""What each task is to a model, one row per `data.task`: the heads on top of the encoder
and the losses of their outputs. `VLModel` builds its row's heads; the trainer sums its
row's losses. A new task is a new row here, never a branch in `forward`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vlpdist.models.base import Encoder
from vlpdist.models.flavors import CAPTION_MAX_LEN, DataDims
from vlpdist.models.heads import CaptionDecoder, Classifier, MLMHead, RegionHead
from vlpdist.models.losses import IGNORE, caption_loss, pretrain_losses

Heads = Callable[[Encoder, DataDims, tuple[str, ...]], dict[str, nn.Module]]
Losses = Callable[[dict, object], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ModelTask:
    heads: Heads
    """The heads for an encoder, the data's dims and the pretraining objectives."""
    losses: Losses
    """Named losses of the heads' outputs for a Batch (the trainer sums them)."""
    objectives: bool = False
    """The model carries the heads of its pretraining objectives (`model.objectives`)."""


def _objective_heads(encoder: Encoder, dims: DataDims, objectives: tuple[str, ...]) -> dict:
    heads: dict[str, nn.Module] = {}
    if "mlm" in objectives:
        heads["mlm"] = MLMHead(encoder.text_dim, encoder.word_embeddings)
    if "mrc" in objectives:
        if not dims.num_classes:
            raise ValueError("objective mrc needs detector class distributions in the data")
        heads["mrc"] = RegionHead(encoder.image_dim, dims.num_classes)
    if "mfr" in objectives:
        heads["mfr"] = RegionHead(encoder.image_dim, dims.visual_dim)
    if "itm" in objectives:
        heads["itm"] = Classifier(encoder.pooled_dim, 2)
    return heads


def _caption_head(encoder: Encoder, dims: DataDims, _objectives) -> dict:
    return {"caption": CaptionDecoder(
        encoder.text_dim, encoder.image_dim, dims.vocab_size,
        heads=max(1, encoder.text_dim // 64), max_len=CAPTION_MAX_LEN,
    )}  # fmt: skip


def _classifier(labels: int | None, encoder: Encoder, dims: DataDims, _objectives) -> dict:
    """One linear head over the pooled output; `labels` None: as many as the data has."""
    n = labels or dims.num_labels
    if not n:
        raise ValueError("a task classifier needs the number of labels from the data")
    return {"task": Classifier(encoder.pooled_dim, n)}


def _caption_losses(out: dict, batch) -> dict[str, torch.Tensor]:
    return {"caption": caption_loss(out["caption"], batch)}


def _soft_score_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # summed over answers as MMF's logit_bce does, so the scale does not shrink with the
    # vocabulary
    return F.binary_cross_entropy_with_logits(logits, targets.float()) * targets.shape[1]


def _multi_label_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets.float())


def _class_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # a val-only class (IGNORE) has no logit; a batch of only those gives 0, not NaN
    known = (targets != IGNORE).sum().clamp(min=1)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum") / known


def _classifier_losses(loss, out: dict, batch) -> dict[str, torch.Tensor]:
    """The classifier's loss over the real (not padding) samples."""
    logits, real = out["logits"], ~batch.is_pad
    if not real.any():
        return {"task": logits.sum() * 0.0}
    return {"task": loss(logits[real].float(), batch.targets[real])}


_VQA = ModelTask(partial(_classifier, None), partial(_classifier_losses, _soft_score_bce))
TASKS = {
    "pretrain": ModelTask(_objective_heads, pretrain_losses, objectives=True),
    "caption": ModelTask(_caption_head, _caption_losses),
    # VQA/VizWiz: BCE against soft answer scores; SNLI-VE: 3-way cross-entropy; MM-IMDB:
    # multi-label BCE
    "vqa": _VQA,
    "vizwiz": _VQA,
    "snli_ve": ModelTask(partial(_classifier, 3), partial(_classifier_losses, F.cross_entropy)),
    "mmimdb": ModelTask(partial(_classifier, None), partial(_classifier_losses, _multi_label_bce)),
    # your own task as JSON lines: VQA-style answers as VQA; one class of those the train
    # split has: cross-entropy; several: multi-label BCE
    "answers": _VQA,
    "label": ModelTask(
        partial(_classifier, None), partial(_classifier_losses, _class_cross_entropy)
    ),
    "labels": ModelTask(partial(_classifier, None), partial(_classifier_losses, _multi_label_bce)),
}


def task_loss(task: str, logits: torch.Tensor, batch) -> torch.Tensor:
    """The loss of a downstream task's classifier logits (padding samples never count)."""
    return TASKS[task].losses({"logits": logits}, batch)["task"]
