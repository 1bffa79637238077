"""ViLBERT (Lu et al., 2019): a text and a visual transformer joined by co-attention.

Follows vilbert-multi-task's `BertModel`: BERT text embeddings and layers, image embeddings
of region features and 5-d boxes with a global image token first, visual BERT layers, and
co-attention blocks between the streams at `t_biattention_id`/`v_biattention_id`; the
pooled output is the product of the two poolers ("mul" fusion, the paper's base model).
Text and visual layers are transformers' `BertLayer` (its "sdpa" attention calls
`F.scaled_dot_product_attention`); the co-attention blocks are in `vilbert_layers.py`.
Parameter names are vilbert's (and `BertModel`'s for the text stream), so a pretrained BERT
or a released ViLBERT checkpoint maps onto ours by name.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

from vlpdist.models.base import Encoder, EncoderOutput, init_bert_weights, sdpa_mask
from vlpdist.models.flavors import DataDims, ViLBertSize
from vlpdist.models.vilbert_layers import (
    ConnectionLayer,
    ImageEmbeddings,
    Pooler,
    stream_config,
)

BOX_DIM = 5  # x1, y1, x2, y2, area: what `image_inputs` builds


def connections(size: ViLBertSize) -> list[tuple[int, int]]:
    """(text layers before block i, visual layers before block i), validated.

    An id counts the stream's layers that have run when the block starts, as in vilbert's
    `BertEncoder` loop (`range(t_start, t_end)`): with the base ids, visual (0..5) and text
    (6..11), block 0 meets the raw image embeddings and text layer 5's output, and both
    streams end with a layer of their own (the paper's figure: Co-TRM then TRM)."""
    t_ids, v_ids = tuple(size.t_biattention_id), tuple(size.v_biattention_id)
    if len(t_ids) != len(v_ids):
        raise ValueError(f"t_biattention_id {t_ids} and v_biattention_id {v_ids} differ in length")
    for name, ids, n in (
        ("t_biattention_id", t_ids, size.num_layers),
        ("v_biattention_id", v_ids, size.v_num_layers),
    ):
        if list(ids) != sorted(ids) or any(not 0 <= i <= n for i in ids):
            raise ValueError(f"model.sizes.{name}={ids}: must be non-decreasing, in [0, {n}]")
    return list(zip(t_ids, v_ids, strict=True))


def image_inputs(feats: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor):
    """The visual stream's inputs with ViLBERT's global image token first: the mean of the
    real regions' features with box (0, 0, 1, 1, area 1). Returns feats [B, 1+R, D],
    locations [B, 1+R, 5] (boxes + area, boxes already normalised) and the mask [B, 1+R].

    The mean is over the batch's features, in which pretraining has zeroed the masked
    regions: the global token must not see what region modelling asks to reconstruct."""
    b = feats.shape[0]
    m = region_mask.unsqueeze(-1).float()
    # fp32 sum: 100 half-precision rows of 2048 dims lose digits in a half sum
    mean = (feats.float() * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
    feats = torch.cat((mean.to(feats.dtype), feats), dim=1)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    loc = torch.cat((boxes, area.unsqueeze(-1)), dim=-1)
    whole = loc.new_tensor([0.0, 0.0, 1.0, 1.0, 1.0]).expand(b, 1, BOX_DIM)
    loc = torch.cat((whole, loc), dim=1)
    # the global token is always real, so no query of the text stream has all keys masked
    keep = torch.cat((region_mask.new_ones(b, 1), region_mask), dim=1)
    return feats, loc, keep


class CoAttentionEncoder(nn.Module):
    """vilbert's `BertEncoder`: `layer` (text), `v_layer` (visual), `c_layer` (co-attention)."""

    def __init__(self, size: ViLBertSize):
        super().__init__()
        self.connections = connections(size)
        t_cfg, v_cfg = stream_config(size, "text"), stream_config(size, "visual")
        self.layer = nn.ModuleList(BertLayer(t_cfg, layer_idx=i) for i in range(size.num_layers))
        self.v_layer = nn.ModuleList(
            BertLayer(v_cfg, layer_idx=i) for i in range(size.v_num_layers)
        )
        self.c_layer = nn.ModuleList(ConnectionLayer(size) for _ in self.connections)

    def forward(self, text, text_keep, visual, visual_keep) -> tuple[torch.Tensor, torch.Tensor]:
        """text [B, T, H_t], visual [B, 1+R, H_v]; *_keep are `sdpa_mask`s."""
        t_start = v_start = 0
        for block, (t_end, v_end) in zip(self.c_layer, self.connections, strict=True):
            for layer in self.layer[t_start:t_end]:
                text = layer(text, text_keep)
            for layer in self.v_layer[v_start:v_end]:
                visual = layer(visual, visual_keep)
            visual, text = block(visual, visual_keep, text, text_keep)
            t_start, v_start = t_end, v_end
        for layer in self.layer[t_start:]:
            text = layer(text, text_keep)
        for layer in self.v_layer[v_start:]:
            visual = layer(visual, visual_keep)
        return text, visual


class ViLBertEncoder(Encoder):
    def __init__(self, size: ViLBertSize, dims: DataDims):
        super().__init__()
        if size.box_dim != BOX_DIM:
            raise ValueError(f"model.sizes.box_dim={size.box_dim}: ViLBERT's boxes are 5-d")
        self.size, self.dims = size, dims
        self.text_dim, self.image_dim = size.hidden_size, size.v_hidden_size
        self.pooled_dim = size.bi_hidden_size
        self.embeddings = BertEmbeddings(stream_config(size, "text", dims.vocab_size))
        self.v_embeddings = ImageEmbeddings(size, dims.visual_dim)
        self.encoder = CoAttentionEncoder(size)
        self.t_pooler = Pooler(size.hidden_size, size.bi_hidden_size)
        self.v_pooler = Pooler(size.v_hidden_size, size.bi_hidden_size)
        self.apply(init_bert_weights)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def text_weight_map(self) -> dict[str, str]:
        # the text stream carries BertModel's own names; BERT's pooler has no counterpart
        # (ViLBERT pools [CLS] into the co-attention width with its own t_pooler)
        return {
            name: name
            for name, _ in self.named_parameters()
            if name.startswith(("embeddings.", "encoder.layer."))
        }

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        feats: torch.Tensor,
        boxes: torch.Tensor,
        region_mask: torch.Tensor,
    ) -> EncoderOutput:
        t = input_ids.shape[1]
        if t > self.size.max_position:
            raise ValueError(f"{t} text tokens, the model has {self.size.max_position} positions")
        dtype = self.v_embeddings.image_embeddings.weight.dtype
        feats, loc, region_keep = image_inputs(feats.to(dtype), boxes.to(dtype), region_mask)
        text = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        visual = self.v_embeddings(feats, loc)
        text, visual = self.encoder(text, sdpa_mask(attention_mask), visual, sdpa_mask(region_keep))
        pooled = self.t_pooler(text) * self.v_pooler(visual)
        return EncoderOutput(text=text, image=visual[:, 1:], pooled=pooled)
