"""VisualBERT (Li et al., 2019): one BERT over the joint sequence [text tokens; regions].

Built from transformers' BERT blocks (`BertEncoder`, `BertPooler`) so that a pretrained BERT
loads by name; attention runs through `F.scaled_dot_product_attention` (the config asks for
transformers' "sdpa" attention, which calls it once per layer with our boolean mask).
Parameter names are those of transformers' `VisualBertModel`, and of `BertModel` for the
text part, which keeps the HF conversion (`hf_visual_bert.py`) and text init one-to-one.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder, BertPooler

from vlpdist.models.base import (
    Encoder,
    EncoderOutput,
    bert_config,
    init_bert_weights,
    sdpa_mask,
)
from vlpdist.models.flavors import DataDims, VisualBertSize

# BERT's [PAD] id in the uncased vocabulary and in our synthetic tokenizer; it only zeroes that
# embedding row at init and keeps its gradient at zero (pad tokens are never attended to)


def visual_bert_config(size: VisualBertSize, vocab_size: int) -> BertConfig:
    return bert_config(
        hidden=size.hidden_size, layers=size.num_layers, heads=size.num_heads,
        intermediate=size.intermediate_size, size=size, vocab_size=vocab_size,
    )  # fmt: skip


class VisualBertEmbeddings(nn.Module):
    """BERT's text embeddings plus projected regions, as transformers' `VisualBertEmbeddings`
    computes them without image-text alignment: every region has visual position 0 and
    visual token type 1. One LayerNorm over [text; visual]; LayerNorm is per position, so
    text embeddings are exactly BERT's whatever the regions are."""

    def __init__(self, config: BertConfig, visual_dim: int):
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.visual_token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.visual_position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.visual_projection = nn.Linear(visual_dim, h)

    def forward(self, input_ids, token_type_ids, feats) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # the same additions in the same order as transformers, so fp32 parity is tight
        text = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        text = text + self.position_embeddings(positions)
        visual = self.visual_projection(feats.to(self.visual_projection.weight.dtype))
        # rows 0 and 1 of the lookup tables: what HF's all-zero visual position ids and
        # all-one visual token type ids select, without materialising [B, R] id tensors
        visual = visual + self.visual_position_embeddings.weight[0]
        visual = visual + self.visual_token_type_embeddings.weight[1]
        return self.dropout(self.LayerNorm(torch.cat((text, visual), dim=1)))


class VisualBertEncoder(Encoder):
    def __init__(self, size: VisualBertSize, dims: DataDims):
        super().__init__()
        self.size, self.dims = size, dims
        self.config = visual_bert_config(size, dims.vocab_size)
        self.text_dim = self.image_dim = self.pooled_dim = size.hidden_size
        self.embeddings = VisualBertEmbeddings(self.config, dims.visual_dim)
        self.encoder = BertEncoder(self.config)
        self.pooler = BertPooler(self.config)
        self.apply(init_bert_weights)
        self.copy_text_to_visual_embeddings()

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    @torch.no_grad()
    def copy_text_to_visual_embeddings(self) -> None:
        """Start the visual token-type and position tables from the text ones, as VisualBERT
        does (HF's `special_visual_initialize`, MMF's `initialize_visual_from_pretrained`).
        Called at construction; call again after loading a pretrained BERT."""
        e = self.embeddings
        e.visual_token_type_embeddings.weight.copy_(e.token_type_embeddings.weight)
        e.visual_position_embeddings.weight.copy_(e.position_embeddings.weight)

    def text_weight_map(self) -> dict[str, str]:
        # our names are BertModel's for everything but the visual embeddings
        return {
            name: name
            for name, _ in self.named_parameters()
            if not name.startswith("embeddings.visual_")
        }

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        feats: torch.Tensor,
        boxes: torch.Tensor,  # unused: VisualBERT gives regions no box/position signal
        region_mask: torch.Tensor,
    ) -> EncoderOutput:
        t = input_ids.shape[1]
        if t > self.size.max_position:
            raise ValueError(f"{t} text tokens, the model has {self.size.max_position} positions")
        hidden = self.embeddings(input_ids, token_type_ids, feats)
        mask = sdpa_mask(torch.cat((attention_mask, region_mask), dim=1))
        hidden = self.encoder(hidden, attention_mask=mask).last_hidden_state
        return EncoderOutput(text=hidden[:, :t], image=hidden[:, t:], pooled=self.pooler(hidden))
