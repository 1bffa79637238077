"""Losses: pure functions of model outputs and a Batch, outside `forward`.

Padding samples (`batch.is_pad`, repeats that only balance ranks) never count. Per-row
heads (MLM, MRC, MFR) ran on the rows `model_inputs` selected, so the selection is rebuilt
here the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlpdist.models.base import INPUTS

IGNORE = -100


def model_inputs(batch) -> dict:
    """Keyword tensors for `VLModel.forward` from a `vlpdist.data` Batch."""
    kw = {name: getattr(batch, name) for name in INPUTS}
    real = ~batch.is_pad
    if batch.mlm_labels is not None:
        kw["mlm_mask"] = (batch.mlm_labels != IGNORE) & real[:, None]
    if batch.mrm_mask is not None:
        kw["mrm_mask"] = batch.mrm_mask & real[:, None]
    return kw


def _zero(out: dict) -> torch.Tensor:
    """A zero loss still attached to the graph (so backward works on an empty selection)."""
    return sum(v.sum() for v in out.values() if isinstance(v, torch.Tensor)) * 0.0


def _packed_keep(batch) -> torch.Tensor:
    """Which rows of the packed MRM targets belong to real (not padding) samples."""
    real = (~batch.is_pad)[:, None].expand_as(batch.mrm_mask)
    return real[batch.mrm_mask]


def pretrain_losses(out: dict, batch) -> dict[str, torch.Tensor]:
    """One loss per objective the model computed."""
    losses = {}
    if "mlm" in out:
        labels = batch.mlm_labels[(batch.mlm_labels != IGNORE) & (~batch.is_pad)[:, None]]
        losses["mlm"] = F.cross_entropy(out["mlm"].float(), labels) if len(labels) else _zero(out)
    if "mrc" in out or "mfr" in out:
        keep = _packed_keep(batch)
    if "mrc" in out:
        target = batch.mrm_cls[keep].float()
        if len(target):
            logp = F.log_softmax(out["mrc"].float(), dim=-1)
            losses["mrc"] = F.kl_div(logp, target, reduction="batchmean")
        else:
            losses["mrc"] = _zero(out)
    if "mfr" in out:
        target = batch.mrm_feats[keep].float()
        losses["mfr"] = F.mse_loss(out["mfr"].float(), target) if len(target) else _zero(out)
    if "itm" in out:
        real = ~batch.is_pad
        losses["itm"] = (
            F.cross_entropy(out["itm"][real].float(), batch.itm_labels[real])
            if real.any()
            else _zero(out)
        )
    return losses


def caption_loss(logits: torch.Tensor, batch) -> torch.Tensor:
    """Next-token cross-entropy of the caption (teacher forcing): logits [B, T-1, V] predict
    input_ids[:, 1:]; padding tokens and padding samples never count."""
    targets = batch.input_ids[:, 1:]
    keep = (batch.attention_mask[:, 1:] == 1) & ~batch.is_pad[:, None]
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), targets[keep])
