"""ViLBERT's own blocks, which transformers lacks: the image embeddings, the co-attention
(connection) layer and the two poolers.

Module and parameter names follow vilbert-multi-task's `vilbert/vilbert.py`
(`BertImageEmbeddings`, `BertBiAttention`, `BertBiOutput`, `BertConnectionLayer`,
`BertTextPooler`/`BertImagePooler`), so a released ViLBERT checkpoint maps onto ours by name.
Stream 1 is the visual stream and stream 2 the text stream, as there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput

from vlpdist.models.base import bert_config
from vlpdist.models.flavors import ViLBertSize

# BERT's [PAD] id in the uncased vocabulary and our synthetic tokenizer (as visual_bert.py):
# it only zeroes that row at init and keeps its gradient at zero; pads are never attended to


def stream_config(
    size: ViLBertSize, stream: str, vocab_size: int = 2, intermediate_size: int | None = None
) -> BertConfig:
    """A `BertConfig` of one stream's sizes ("text" or "visual"), for transformers' blocks."""
    text = stream == "text"
    if intermediate_size is None:
        intermediate_size = size.intermediate_size if text else size.v_intermediate_size
    return bert_config(
        hidden=size.hidden_size if text else size.v_hidden_size,
        layers=size.num_layers if text else size.v_num_layers,
        heads=size.num_heads if text else size.v_num_heads,
        intermediate=intermediate_size,
        size=size,
        vocab_size=vocab_size,
    )


class ImageEmbeddings(nn.Module):
    """LayerNorm(Linear(feature) + Linear(x1, y1, x2, y2, area)), then dropout."""

    def __init__(self, size: ViLBertSize, visual_dim: int):
        super().__init__()
        self.image_embeddings = nn.Linear(visual_dim, size.v_hidden_size)
        self.image_location_embeddings = nn.Linear(size.box_dim, size.v_hidden_size)
        self.LayerNorm = nn.LayerNorm(size.v_hidden_size, eps=size.layer_norm_eps)
        self.dropout = nn.Dropout(size.dropout)

    def forward(self, feats: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        x = self.image_embeddings(feats) + self.image_location_embeddings(locations)
        return self.dropout(self.LayerNorm(x))


class BiAttention(nn.Module):
    """Each stream's queries attend to the other stream's keys and values, all projected to
    `bi_hidden_size` with `bi_num_heads` heads (vilbert's `BertBiAttention`)."""

    def __init__(self, size: ViLBertSize):
        super().__init__()
        bi, heads = size.bi_hidden_size, size.bi_num_heads
        if bi % heads:
            raise ValueError(f"bi_hidden_size {bi} is not a multiple of bi_num_heads {heads}")
        self.heads, self.dropout = heads, size.attention_dropout
        self.query1 = nn.Linear(size.v_hidden_size, bi)  # visual stream
        self.key1 = nn.Linear(size.v_hidden_size, bi)
        self.value1 = nn.Linear(size.v_hidden_size, bi)
        self.query2 = nn.Linear(size.hidden_size, bi)  # text stream
        self.key2 = nn.Linear(size.hidden_size, bi)
        self.value2 = nn.Linear(size.hidden_size, bi)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, bi] -> [B, heads, S, d]
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _attend(self, q, k, v, keep: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        return out.transpose(1, 2).flatten(2)  # [B, S_q, bi]

    def forward(self, visual, visual_keep, text, text_keep) -> tuple[torch.Tensor, torch.Tensor]:
        """visual [B, R, H_v], text [B, T, H_t]; *_keep are `sdpa_mask`s of each stream.
        Returns (visual queries' context [B, R, bi], text queries' context [B, T, bi])."""
        q1, k1, v1 = (self._split(f(visual)) for f in (self.query1, self.key1, self.value1))
        q2, k2, v2 = (self._split(f(text)) for f in (self.query2, self.key2, self.value2))
        # the mask is always the keys' stream: padded regions/tokens are never looked at
        visual_ctx = self._attend(q1, k2, v2, text_keep)
        text_ctx = self._attend(q2, k1, v1, visual_keep)
        return visual_ctx, text_ctx


class BiOutput(nn.Module):
    """Per stream: Linear(bi -> stream hidden), dropout, residual, LayerNorm."""

    def __init__(self, size: ViLBertSize):
        super().__init__()
        self.dense1 = nn.Linear(size.bi_hidden_size, size.v_hidden_size)
        self.LayerNorm1 = nn.LayerNorm(size.v_hidden_size, eps=size.layer_norm_eps)
        self.dropout1 = nn.Dropout(size.dropout)
        self.dense2 = nn.Linear(size.bi_hidden_size, size.hidden_size)
        self.LayerNorm2 = nn.LayerNorm(size.hidden_size, eps=size.layer_norm_eps)
        self.dropout2 = nn.Dropout(size.dropout)
        # vilbert also builds q_dense1/q_dense2 here but never calls them: left out, they
        # would be dead weights (and no gradient would ever reach them)

    def forward(self, visual_ctx, visual, text_ctx, text) -> tuple[torch.Tensor, torch.Tensor]:
        visual = self.LayerNorm1(self.dropout1(self.dense1(visual_ctx)) + visual)
        text = self.LayerNorm2(self.dropout2(self.dense2(text_ctx)) + text)
        return visual, text


class ConnectionLayer(nn.Module):
    """One co-attention block: bi-attention -> per-stream output + residual + LayerNorm ->
    per-stream feed-forward (transformers' `BertIntermediate`/`BertOutput`).

    FFN widths: vilbert's `BertConnectionLayer` reuses the streams' FFN classes, so its text
    FFN is `intermediate_size` wide and its visual FFN `v_intermediate_size`; it never reads
    `bi_intermediate_size`. We keep the text FFN at `intermediate_size` (so the base model
    and released checkpoints have vilbert's shapes) and give the visual FFN
    `bi_intermediate_size`, the one size reserved for these blocks: vilbert's configs and all
    our flavors set it equal to `v_intermediate_size`, so the network is the same, and
    overriding it is not silently ignored."""

    def __init__(self, size: ViLBertSize):
        super().__init__()
        v_cfg = stream_config(size, "visual", intermediate_size=size.bi_intermediate_size)
        t_cfg = stream_config(size, "text")
        self.biattention = BiAttention(size)
        self.biOutput = BiOutput(size)
        self.v_intermediate = BertIntermediate(v_cfg)
        self.v_output = BertOutput(v_cfg)
        self.t_intermediate = BertIntermediate(t_cfg)
        self.t_output = BertOutput(t_cfg)

    def forward(self, visual, visual_keep, text, text_keep) -> tuple[torch.Tensor, torch.Tensor]:
        visual_ctx, text_ctx = self.biattention(visual, visual_keep, text, text_keep)
        visual, text = self.biOutput(visual_ctx, visual, text_ctx, text)
        visual = self.v_output(self.v_intermediate(visual), visual)
        text = self.t_output(self.t_intermediate(text), text)
        return visual, text


class Pooler(nn.Module):
    """ReLU(Linear(first position)): [CLS] for text, the global image token for vision."""

    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.dense = nn.Linear(hidden, out)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.dense(states[:, 0]))
