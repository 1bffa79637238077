"""Conversion between our `VisualBertEncoder` and transformers' `VisualBertModel`.

Used to check parity against the reference implementation and to export a pretrained
encoder that `VisualBertModel.from_pretrained` reads. Every tensor is accounted for both
ways (a leftover or a missing tensor raises), so a renamed module cannot silently drop
weights.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import VisualBertConfig, VisualBertModel

from vlpdist.models.base import INIT_STD, PAD_ID
from vlpdist.models.flavors import DataDims, VisualBertSize
from vlpdist.models.visual_bert import VisualBertEncoder


def hf_config(size: VisualBertSize, dims: DataDims) -> VisualBertConfig:
    return VisualBertConfig(
        vocab_size=dims.vocab_size,
        hidden_size=size.hidden_size,
        visual_embedding_dim=dims.visual_dim,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        intermediate_size=size.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=size.dropout,
        attention_probs_dropout_prob=size.attention_dropout,
        max_position_embeddings=size.max_position,
        type_vocab_size=size.type_vocab_size,
        initializer_range=INIT_STD,
        layer_norm_eps=size.layer_norm_eps,
        bypass_transformer=False,  # the paper's VisualBERT: regions go through every layer
        special_visual_initialize=True,
        pad_token_id=PAD_ID,
    )


def size_of(config: VisualBertConfig) -> VisualBertSize:
    """Our size of an HF config; configs we cannot represent are refused, not approximated."""
    if config.bypass_transformer or config.hidden_act != "gelu":
        raise ValueError(
            f"VisualBertConfig with bypass_transformer={config.bypass_transformer}, "
            f"hidden_act={config.hidden_act!r}: only the plain gelu VisualBERT converts"
        )
    return VisualBertSize(
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        dropout=float(config.hidden_dropout_prob),
        attention_dropout=float(config.attention_probs_dropout_prob),
        layer_norm_eps=config.layer_norm_eps,
    )


# ours → HF parameter names. Our modules are named after VisualBertModel's, so today this is
# the identity; it is spelled out so that a rename on either side fails here, loudly.
def _ours_to_hf(name: str) -> str:
    return name


def _hf_to_ours(name: str) -> str:
    return name


def to_hf(encoder: VisualBertEncoder) -> VisualBertModel:
    """An HF `VisualBertModel` (with pooler) holding copies of the encoder's weights."""
    model = VisualBertModel(hf_config(encoder.size, encoder.dims), add_pooling_layer=True)
    model.to(dtype=encoder.pooler.dense.weight.dtype, device=encoder.pooler.dense.weight.device)
    _copy(encoder.state_dict(), model, _ours_to_hf, "to_hf")
    return model.train(encoder.training)


def from_hf(hf_model: VisualBertModel, dims: DataDims) -> VisualBertEncoder:
    """Our encoder holding copies of an HF `VisualBertModel`'s weights; `dims` must agree
    with the HF config's vocabulary and visual feature sizes."""
    config = hf_model.config
    got = (config.vocab_size, config.visual_embedding_dim)
    if got != (dims.vocab_size, dims.visual_dim):
        raise ValueError(
            f"VisualBertModel has vocab_size, visual_embedding_dim = {got}, "
            f"the data has {(dims.vocab_size, dims.visual_dim)}"
        )
    weight = hf_model.embeddings.word_embeddings.weight
    encoder = VisualBertEncoder(size_of(config), dims).to(dtype=weight.dtype, device=weight.device)
    _copy(hf_model.state_dict(), encoder, _hf_to_ours, "from_hf")
    return encoder.train(hf_model.training)


def _copy(source: dict[str, torch.Tensor], target: nn.Module, rename, what: str) -> None:
    """Load `source` into `target` under `rename`d keys; every key on both sides must match
    one on the other with the same shape."""
    wanted = target.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in source.items():
        new = rename(name)
        if new not in wanted:
            raise ValueError(f"{what}: {name} (as {new}) has no counterpart in the target")
        if tuple(wanted[new].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{what}: {name} has shape {list(tensor.shape)}, "
                f"the target's {new} is {list(wanted[new].shape)}"
            )
        mapped[new] = tensor
    missing = sorted(set(wanted) - set(mapped))
    if missing:
        raise ValueError(f"{what}: {len(missing)} target tensors not set, first {missing[0]}")
    target.load_state_dict(mapped, strict=True)
