"""The contract between an architecture's encoder and the heads on top of it.

An encoder takes the model inputs of a `vlpdist.data` Batch as keyword tensors and returns
text states, region states aligned with the input regions, and one pooled vector per
sample. Heads and losses only see this, so they serve both architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# the Batch fields an encoder reads, as keyword arguments of forward()
INPUTS = ("input_ids", "token_type_ids", "attention_mask", "feats", "boxes", "region_mask")


@dataclass
class EncoderOutput:
    text: torch.Tensor  # [B, T, text_dim]
    image: torch.Tensor  # [B, R, image_dim], row r = input region r
    pooled: torch.Tensor  # [B, pooled_dim]


class Encoder(nn.Module):
    """What every architecture provides (VisualBERT, ViLBERT)."""

    text_dim: int
    image_dim: int
    pooled_dim: int

    @property
    def word_embeddings(self) -> nn.Embedding:  # the MLM decoder is tied to it
        raise NotImplementedError

    def text_weight_map(self) -> dict[str, str]:
        """HF `BertModel` parameter name → this encoder's parameter name, for the text part
        (loading a pretrained BERT into the text stream)."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        feats: torch.Tensor,
        boxes: torch.Tensor,
        region_mask: torch.Tensor,
    ) -> EncoderOutput:
        raise NotImplementedError


def sdpa_mask(keep: torch.Tensor) -> torch.Tensor:
    """[B, S] 1/True = attend → a boolean SDPA mask [B, 1, 1, S] broadcast over heads and
    queries. Padded positions are never attended to; padded queries still see the real
    keys, so no row is fully masked (SDPA would give NaN)."""
    return keep.bool()[:, None, None, :]
