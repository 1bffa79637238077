"""Config of the synthetic world (`vlpdist shards synth`).

Per-dataset sizes and per-domain looks default to built-in tables (in
`vlpdist.shards.synthetic.world`); a config names only what it changes, field by field,
so `synth.domains.web.noise=1.2` keeps every other built-in setting of every domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlpdist.config.loader import Invalid

# Names the world knows; kept here so validation needs no import of the generator.
DATASET_NAMES = (
    "coco_like",
    "cc_like",
    "cc_small_like",
    "ccg_like",
    "vqa_p",
    "vqa_train",
    "vqa_val",
    "coco_val_like",
    "vizwiz_train",
    "vizwiz_val",
    "snli_ve_train",
    "snli_ve_val",
    "mmimdb_train",
    "mmimdb_val",
)
DOMAIN_NAMES = ("coco", "web", "flickr", "blind", "poster")
STYLE_NAMES = ("photo", "web", "blind")


@dataclass
class DomainConfig:
    """How one visual domain looks. Unset (null) fields keep the domain's built-in value."""

    style: str | None = None
    """Named look (photo | web | blind): domains with one style shift the same way."""
    shift: float | None = None
    """Strength of the style shift away from the photo look, in [0, 1]; 0 = coco's look."""
    prior_shift: float | None = None
    """How far the class frequencies move from the shared ones, in [0, 1]."""
    noise: float | None = None
    """Std of per-region noise in the concept space (1 = a prototype's per-dim scale)."""
    blur: float | None = None
    """Mean per-image degradation in [0, 1): regions pulled to the image mean (VizWiz)."""
    objects: list[int] | None = None
    """[min, max] objects per image."""

    def __post_init__(self):
        if self.style is not None and self.style not in STYLE_NAMES:
            raise Invalid("style", f"expected one of {', '.join(STYLE_NAMES)}, got {self.style!r}")
        for name in ("shift", "prior_shift"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise Invalid(name, f"must be in [0, 1], got {v}")
        if self.noise is not None and self.noise < 0:
            raise Invalid("noise", "must be >= 0")
        if self.blur is not None and not 0 <= self.blur < 1:
            raise Invalid("blur", f"must be in [0, 1), got {self.blur}")
        if self.objects is not None and (
            len(self.objects) != 2 or not 1 <= self.objects[0] <= self.objects[1] <= 12
        ):
            raise Invalid(
                "objects", f"need [min, max] with 1 <= min <= max <= 12, got {self.objects}"
            )


@dataclass
class SynthConfig:
    seed: int = 0
    """Everything in the world follows from this seed."""
    feature_dim: int = 2048
    """Region feature dimension D (BUTD: 2048)."""
    latent_dim: int = 64
    """Dimension of the concept space the features embed; fixes difficulty whatever D is."""
    num_classes: int = 36
    """Object classes (each with words, a prototype and a colour prior); at most 46."""
    num_colors: int = 8
    """Colour attributes (each a feature shift and a word); at most 11."""
    num_genres: int = 8
    """MM-IMDB-like genres; at most 10."""
    regions: list[int] = field(default_factory=lambda: [10, 36])
    """[min, max] regions per image, like BUTD's adaptive 10-36."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Images per dataset; unnamed datasets keep the built-in size, 0 skips a dataset."""
    domains: dict[str, DomainConfig] = field(default_factory=dict)
    """Per-domain overrides of the built-in looks (coco, web, flickr, blind, poster)."""
    captions_per_image: int = 5
    """Literal captions per coco_like image (COCO has 5), all distinct; an image whose
    templates allow fewer distinct ones gets fewer."""
    questions_per_image: int = 3
    """Distinct questions per image in vqa_p / vqa_train / vqa_val (VizWiz always has 1);
    fewer for the rare image that allows no more."""
    hypotheses_per_image: int = 3
    """Distinct SNLI-VE-like hypotheses per image; labels are balanced per image."""
    answer_agreement: float = 0.85
    """Mean share of the 10 annotators who give the true answer to a number or other
    question (drawn per question, floored at 0.6); the rest disagree. Yes/no annotators agree
    more, calibrated to VQA v2 (`YES_NO_AGREEMENT` in vlpdist.shards.synthetic.tasks)."""
    alt_literal: float = 0.2
    """Probability an alt-text (cc_like) names an object by its literal class word."""
    alt_misaligned: float = 0.25
    """Probability an alt-text names an object that is not in its image."""
    detector_noise: float = 1.0
    """Std of the logit noise of the simulated detector behind cls_prob."""
    target_shard_mb: float = 64.0
    """A shard is closed once it reaches this size (MB, 10^6 bytes)."""
    max_text_tokens: int = 64
    """Token ids kept per text."""

    def __post_init__(self):
        if self.feature_dim < 8:
            raise Invalid("feature_dim", "must be >= 8")
        if self.latent_dim < 4:
            raise Invalid("latent_dim", "must be >= 4")
        if self.latent_dim > self.feature_dim:
            raise Invalid(
                "latent_dim",
                f"{self.latent_dim} > feature_dim {self.feature_dim}",
                others=("feature_dim",),
            )
        for name, lo, hi in (("num_classes", 4, 46), ("num_colors", 3, 11), ("num_genres", 2, 10)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise Invalid(name, f"must be in [{lo}, {hi}], got {v}")
        if len(self.regions) != 2 or not 1 <= self.regions[0] <= self.regions[1]:
            raise Invalid("regions", f"need [min, max] with 1 <= min <= max, got {self.regions}")
        for name, n in self.sizes.items():
            if name not in DATASET_NAMES:
                raise Invalid(
                    f"sizes.{name}", f"unknown dataset (known: {', '.join(DATASET_NAMES)})"
                )
            if n < 0:
                raise Invalid(f"sizes.{name}", "must be >= 0")
        for name in self.domains:
            if name not in DOMAIN_NAMES:
                raise Invalid(
                    f"domains.{name}", f"unknown domain (known: {', '.join(DOMAIN_NAMES)})"
                )
        for name in ("captions_per_image", "questions_per_image", "hypotheses_per_image"):
            if not 1 <= getattr(self, name) <= 10:
                raise Invalid(name, "must be in [1, 10]")
        for name in ("answer_agreement", "alt_literal", "alt_misaligned"):
            if not 0 <= getattr(self, name) <= 1:
                raise Invalid(name, "must be in [0, 1]")
        if self.detector_noise < 0:
            raise Invalid("detector_noise", "must be >= 0")
        if self.target_shard_mb <= 0:
            raise Invalid("target_shard_mb", "must be > 0")
        if self.max_text_tokens < 1:
            raise Invalid("max_text_tokens", "must be >= 1")
