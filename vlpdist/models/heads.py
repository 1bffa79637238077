"""Heads on top of an encoder: the pretraining objectives and the downstream classifiers.

Heads that predict per token or per region run only on the selected rows (masked tokens,
masked regions): a 30k-word decoder over every text position would cost more than the
encoder at small sizes, and the losses only look at selected rows anyway.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform


def _transform(hidden: int, eps: float = 1e-12) -> BertPredictionHeadTransform:
    # dense → GELU → LayerNorm, as BERT's MLM head
    return BertPredictionHeadTransform(
        BertConfig(hidden_size=hidden, hidden_act="gelu", layer_norm_eps=eps)
    )


class MLMHead(nn.Module):
    """Masked language modelling; the decoder shares the word embeddings' weight."""

    def __init__(self, hidden: int, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = _transform(hidden)
        vocab, dim = word_embeddings.weight.shape
        if dim != hidden:
            raise ValueError(f"text states have {hidden} dims, word embeddings {dim}")
        self.decoder = nn.Linear(hidden, vocab, bias=True)
        self.decoder.weight = word_embeddings.weight  # tied

    def forward(self, states):
        return self.decoder(self.transform(states))


class RegionHead(nn.Module):
    """Masked region modelling: class logits (for the KL to the detector's distribution)
    or feature regression, from the states of masked regions."""

    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.transform = _transform(hidden)
        self.out = nn.Linear(hidden, out)

    def forward(self, states):
        return self.out(self.transform(states))


class Classifier(nn.Module):
    """Pooled output → labels: Linear(2h), GELU, LayerNorm, Linear (ViLBERT's and MMF's
    simple classifier, used for ITM and every downstream task)."""

    def __init__(self, hidden: int, labels: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden, 2 * hidden),
            nn.GELU(),
            nn.LayerNorm(2 * hidden, eps=1e-12),
            nn.Linear(2 * hidden, labels),
        )

    def forward(self, pooled):
        return self.net(pooled)


class CaptionDecoder(nn.Module):
    """A small transformer decoder (torch's: causal self-attention, cross-attention to the
    encoder's region states) that writes a caption token by token: the captioner behind
    generated in-domain captions (CCG). Its own word embeddings and output layer, so the
    encoder stays interchangeable with the pretraining models'."""

    def __init__(self, hidden: int, memory_dim: int, vocab: int, layers: int = 2,
                 heads: int = 2, max_len: int = 64, dropout: float = 0.1):  # fmt: skip
        super().__init__()
        self.words = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(max_len, hidden)
        self.memory = nn.Linear(memory_dim, hidden) if memory_dim != hidden else nn.Identity()
        layer = nn.TransformerDecoderLayer(hidden, heads, 4 * hidden, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)  # fmt: skip
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, ids, memory, memory_mask):
        """ids [B, T] (starting with [CLS]) → logits [B, T, V] of each next token."""
        t = ids.shape[1]
        if t > self.positions.num_embeddings:
            raise ValueError(f"caption of {t} tokens > max_len {self.positions.num_embeddings}")
        x = self.words(ids) + self.positions.weight[:t]
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
        x = self.decoder(x, self.memory(memory), tgt_mask=causal,
                         memory_key_padding_mask=memory_mask == 0)  # fmt: skip
        return self.out(self.norm(x))
