"""The contract between an architecture's encoder and the heads on top of it.

An encoder takes the model inputs of a `vlpdist.data` Batch as keyword tensors and returns
text states, region states aligned with the input regions, and one pooled vector per
sample. Heads and losses only see this, so they serve both architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import BertConfig

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


PAD_ID = 0
INIT_STD = 0.02  # BERT's (and vilbert's) initializer_range


def bert_config(
    *, hidden: int, layers: int, heads: int, intermediate: int, size, vocab_size: int = 2
) -> BertConfig:
    """A `BertConfig` for transformers' BERT blocks of one stream; dropout, positions and
    epsilon come from the architecture's size dataclass."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act="gelu",
        hidden_dropout_prob=size.dropout,
        attention_probs_dropout_prob=size.attention_dropout,
        max_position_embeddings=size.max_position,
        type_vocab_size=size.type_vocab_size,
        layer_norm_eps=size.layer_norm_eps,
        initializer_range=INIT_STD,
        pad_token_id=PAD_ID,
        # BertSelfAttention looks its kernel up by this name on every call; "sdpa" is
        # transformers' thin wrapper around F.scaled_dot_product_attention
        attn_implementation="sdpa",
    )


@torch.no_grad()
def init_bert_weights(module: nn.Module) -> None:
    """BERT's init (transformers' `_init_weights`, vilbert's `init_weights`): N(0, 0.02)
    weights, zero biases, identity LayerNorms, zero padding row. PyTorch's defaults (kaiming,
    N(0, 1) embeddings) would give a differently scaled model from the one the paper trained."""
    if isinstance(module, nn.Linear | nn.Embedding):
        module.weight.normal_(0.0, INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.zero_()
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()
