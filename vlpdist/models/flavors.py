"""Named model sizes, as an explicit table (no registration side effects).

`FLAVORS[arch][flavor]` is a size dataclass whose fields are the architecture's numbers; a
run config names a flavor and may override single numbers (`model.sizes.num_layers=4`),
so config keys map 1:1 to these fields. `vocab_size`, `visual_dim` and `num_classes` are
not set here: they come from the data (the shard set's tokenizer, feature dim and detector
classes) when a model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class VisualBertSize:
    """VisualBERT: one BERT over [text tokens; projected regions] (Li et al., 2019)."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12


@dataclass(frozen=True)
class ViLBertSize:
    """ViLBERT: a text and a visual stream joined by co-attention (Lu et al., 2019)."""

    hidden_size: int = 768  # text stream
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    v_hidden_size: int = 1024  # visual stream
    v_num_layers: int = 6
    v_num_heads: int = 8
    v_intermediate_size: int = 1024
    bi_hidden_size: int = 1024  # co-attention
    bi_num_heads: int = 8
    bi_intermediate_size: int = 1024
    # co-attention block i runs once v_biattention_id[i] visual layers and
    # t_biattention_id[i] text layers have run (vilbert's encoder loop); so in base the first
    # block meets the image embeddings and text layer 6's input, and each stream ends with
    # one of its own layers, as in the paper's figure
    v_biattention_id: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    t_biattention_id: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
    box_dim: int = 5  # x1/W, y1/H, x2/W, y2/H, area
    max_position: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12


FLAVORS: dict[str, dict[str, object]] = {
    "visual_bert": {
        "tiny": VisualBertSize(
            hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position=128
        ),
        "small": VisualBertSize(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
        "base": VisualBertSize(),
    },
    "vilbert": {
        "tiny": ViLBertSize(
            hidden_size=64,
            num_layers=4,
            num_heads=2,
            intermediate_size=128,
            v_hidden_size=48,
            v_num_layers=2,
            v_num_heads=2,
            v_intermediate_size=96,
            bi_hidden_size=48,
            bi_num_heads=2,
            bi_intermediate_size=96,
            v_biattention_id=(0, 1),
            t_biattention_id=(2, 3),
            max_position=128,
        ),  # fmt: skip
        "small": ViLBertSize(
            hidden_size=256,
            num_layers=6,
            num_heads=4,
            intermediate_size=1024,
            v_hidden_size=256,
            v_num_layers=3,
            v_num_heads=4,
            v_intermediate_size=512,
            bi_hidden_size=256,
            bi_num_heads=4,
            bi_intermediate_size=512,
            v_biattention_id=(0, 1, 2),
            t_biattention_id=(3, 4, 5),
        ),  # fmt: skip
        "base": ViLBertSize(),
    },
}


# (width, heads) of each attention: the width splits evenly into the heads, or the layer
# cannot be built. Read by the config's checks, so a bad size is one line before any rank.
HEAD_SPLITS = (
    ("hidden_size", "num_heads"),
    ("v_hidden_size", "v_num_heads"),
    ("bi_hidden_size", "bi_num_heads"),
)

# Positions of the captioner's decoder (heads.CaptionDecoder): the longest caption it reads
# while training (the text but its last token) or writes while decoding.
CAPTION_MAX_LEN = 64


def resolve(arch: str, flavor: str, overrides: dict | None = None):
    """The size dataclass of (arch, flavor) with single numbers overridden."""
    try:
        base = FLAVORS[arch][flavor]
    except KeyError:
        known = {a: sorted(f) for a, f in FLAVORS.items()}
        raise ValueError(f"unknown model {arch}/{flavor} (known: {known})") from None
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"model.sizes.{unknown[0]}: not a size of {arch} (sizes: {sorted(names)})")
    for k, v in overrides.items():
        if isinstance(getattr(base, k), tuple):
            overrides[k] = tuple(v)
    return dataclasses.replace(base, **overrides)


@dataclass
class DataDims:
    """What a model takes from the data it is built for."""

    vocab_size: int
    visual_dim: int
    num_classes: int | None = None  # detector classes (cls_prob dim), for region classification
    num_labels: int | None = None  # task outputs: answers, 3, genres
