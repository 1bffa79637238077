"""The extractors: images → region features, one row per name in `EXTRACTORS`.

- `grid`: a ResNet's last stage average-pooled to a grid of regions with the grid cells as
  boxes ("In Defense of Grid Features for VQA", Jiang et al. 2020). No classes.
- `detector`: a DETR detector (ResNet backbone + transformer, set prediction). Boxes are
  kept by score with per-class NMS, between `min_boxes` and `max_boxes` per image as
  bottom-up attention keeps them; each box's feature is RoIAlign-pooled from the backbone's
  last stage (2,048-d for ResNet-50) and its class distribution is `cls_prob`.

Both are transformers' models (ResNetModel, DetrForObjectDetection), which vlpdist
already depends on. torchvision's ResNet and Faster R-CNN would be the usual choice, but
PyPI's torchvision is built against CUDA torch: its compiled ops (nms, roi_align) do not
load beside the CPU torch that CPU machines install, and torchvision does not even import
there. The two small ops it would give (RoIAlign, per-class NMS) are written below.

Another extractor plugs in by `extractor: package.module:Name`, where `Name` is an
`Extractor` subclass (or any callable taking the same arguments and returning one):
see tests/extractor_plugin.py and shards/README.md.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlpdist.errors import ConfigError
from vlpdist.shards.extract.images import letterbox, stretch

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ResNet-50's stages (transformers' ResNetConfig names): what `depths`/`widths` default to
RESNET50 = {"depths": [3, 4, 6, 3], "widths": [256, 512, 1024, 2048], "stem": 64}


class Extractor:
    """One extractor with its settings. Built in the driver (cheap: settings only), sent to
    the decode workers for `prepare` and to the model actors for `module`.

    Subclasses set `name`, `OPTIONS` (every setting with its default) and `make_module`
    (the model with random weights, a `nn.Module` whose forward takes float pixels
    [B, 3, S, S] in [0, 1] and the content's (h, w) per image [B, 2], and returns one
    (feats [N, D], boxes [N, 4] in [0, 1] of the content, cls_prob [N, C] or None) per
    image)."""

    name = "?"
    OPTIONS: dict = {"input_size": 448}
    fit = "letterbox"  # how an image becomes the square input: letterbox | stretch

    def __init__(self, options: dict | None = None, weights: str | None = None, seed: int = 0):
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ConfigError(
                f"options.{unknown[0]}: not a setting of extractor '{self.name}' "
                f"(known: {', '.join(self.OPTIONS)})"
            )
        self.options = {**self.OPTIONS, **options}
        self.weights, self.seed = weights, seed
        if int(self.options["input_size"]) < 32:
            raise ConfigError("options.input_size: must be >= 32")

    @property
    def input_size(self) -> int:
        return int(self.options["input_size"])

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 RGB [H, W, 3] → the model's uint8 square input and its content (h, w)."""
        fit = letterbox if self.fit == "letterbox" else stretch
        return fit(rgb, self.input_size)

    def make_module(self) -> nn.Module:
        raise NotImplementedError

    def module(self) -> nn.Module:
        """The model in eval mode: seeded random init, then the weights file if any."""
        torch.manual_seed(self.seed)
        m = self.make_module()
        if self.weights:
            load_weights(m, self.weights)
        return m.eval()

    def describe(self) -> dict:
        """What the manifest records: the extractor, every setting, the weights' sha256 (and
        for weights=hf:REPO[@REVISION], the hub commit they came from)."""
        info = {
            "extractor": self.name,
            "options": self.options,
            "weights": self.weights or "random init",
            "weights_sha256": weights_digest(self.weights) if self.weights else None,
            "seed": self.seed,
        }
        if (self.weights or "").startswith(HUB):
            info["weights_revision"] = os.path.basename(_hub_snapshot(self.weights))
        return info


def _resnet_config(opts: dict, **kw):
    from transformers import ResNetConfig

    return ResNetConfig(
        embedding_size=int(opts["stem"]),
        hidden_sizes=[int(w) for w in opts["widths"]],
        depths=[int(d) for d in opts["depths"]],
        layer_type="bottleneck",
        **kw,
    )


class _Normalise(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# ---------------------------------------------------------------- grid


class GridModule(nn.Module):
    def __init__(self, opts: dict):
        super().__init__()
        from transformers import ResNetModel

        self.normalise = _Normalise()
        self.resnet = ResNetModel(_resnet_config(opts))
        self.grid = int(opts["grid"])
        g = torch.arange(self.grid, dtype=torch.float32) / self.grid
        y0, x0 = torch.meshgrid(g, g, indexing="ij")
        cells = torch.stack([x0, y0, x0 + 1 / self.grid, y0 + 1 / self.grid], -1)
        self.register_buffer("cells", cells.reshape(-1, 4), persistent=False)

    def forward(self, pixels: torch.Tensor, content_hw: torch.Tensor):
        fmap = self.resnet(self.normalise(pixels)).last_hidden_state  # [B, C, h, w]
        pooled = F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)
        return [(f, self.cells, None) for f in pooled]


class GridExtractor(Extractor):
    name = "grid"
    fit = "stretch"  # grid cells then are cells of the whole image
    OPTIONS = {"input_size": 448, "grid": 6, **RESNET50}

    def make_module(self) -> nn.Module:
        return GridModule(self.options)


# ---------------------------------------------------------------- detector


def roi_align_mean(fmap: torch.Tensor, boxes: torch.Tensor, samples: int = 14) -> torch.Tensor:
    """Mean of RoIAlign over each box: bilinear samples on a samples x samples grid inside
    the box, averaged. fmap [C, h, w] covers the unit square; boxes [K, 4] x1y1x2y2 in [0, 1]
    of that square. Returns [K, C]. (torchvision.ops.roi_align with output 7x7 and sampling
    ratio 2, then a mean, samples the same 14 x 14 points.)"""
    if len(boxes) == 0:
        return fmap.new_zeros((0, fmap.shape[0]))
    t = (torch.arange(samples, dtype=fmap.dtype, device=fmap.device) + 0.5) / samples
    x = boxes[:, 0:1] + t * (boxes[:, 2:3] - boxes[:, 0:1])  # [K, s]
    y = boxes[:, 1:2] + t * (boxes[:, 3:4] - boxes[:, 1:2])
    gx = x[:, None, :].expand(-1, samples, -1)  # [K, s(y), s(x)]
    gy = y[:, :, None].expand(-1, -1, samples)
    grid = torch.stack([gx, gy], -1).reshape(1, -1, samples, 2) * 2 - 1
    # border: a sample past the last cell centre takes the edge value, as RoIAlign clamps
    out = F.grid_sample(
        fmap[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0].reshape(fmap.shape[0], len(boxes), samples, samples).mean((2, 3)).T


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def class_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float):
    """Indices kept by greedy NMS within each class, by descending score (ties by index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    ious = box_iou(boxes, boxes)
    keep: list[int] = []
    for i in order:
        if all(labels[j] != labels[i] or ious[i, j] <= iou for j in keep):
            keep.append(i)
    return keep


class DetrModule(nn.Module):
    def __init__(self, opts: dict):
        super().__init__()
        from transformers import DetrConfig, DetrForObjectDetection

        backbone = _resnet_config(opts, out_features=["stage4"])
        d = int(opts["d_model"])
        cfg = DetrConfig(
            backbone_config=backbone, num_labels=int(opts["classes"]),
            num_queries=int(opts["queries"]), d_model=d,
            encoder_layers=int(opts["layers"]), decoder_layers=int(opts["layers"]),
            encoder_attention_heads=max(1, d // 32), decoder_attention_heads=max(1, d // 32),
            encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
        )  # fmt: skip
        self.normalise = _Normalise()
        self.detr = DetrForObjectDetection(cfg)
        self.opts = opts
        self._c5: list[torch.Tensor] = []
        # the backbone's last stage, for the boxes' features: DETR does not return it
        self.detr.model.backbone.register_forward_hook(
            lambda _m, _i, out: self._c5.append(out[-1][0])
        )

    def forward(self, pixels: torch.Tensor, content_hw: torch.Tensor):
        size = pixels.shape[-1]
        mask = torch.zeros(pixels.shape[0], size, size, dtype=torch.long, device=pixels.device)
        for i, (h, w) in enumerate(content_hw.tolist()):
            mask[i, :h, :w] = 1
        self._c5.clear()
        out = self.detr(pixel_values=self.normalise(pixels), pixel_mask=mask)
        c5 = self._c5.pop()
        probs = out.logits.float().softmax(-1)  # [B, Q, classes + 1]; the last is no-object
        results = []
        for i, (h, w) in enumerate(content_hw.tolist()):
            cx, cy, bw, bh = out.pred_boxes[i].float().unbind(-1)
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
            boxes = boxes.clamp(0, 1)
            score, label = probs[i, :, :-1].max(-1)
            keep = self._select(boxes, score, label)
            kept = boxes[keep]
            # boxes are fractions of the content; the feature map covers the padded square
            on_square = kept * kept.new_tensor([w / size, h / size, w / size, h / size])
            feats = roi_align_mean(c5[i].float(), on_square)
            results.append((feats, kept, probs[i, keep]))
        return results

    def _select(self, boxes, score, label) -> list[int]:
        o = self.opts
        nms = class_nms(boxes, score, label, float(o["nms_iou"]))
        keep = [i for i in nms if score[i] >= float(o["score_threshold"])]
        # too few sure boxes: fill up to min_boxes with the next best, NMS survivors first
        rest = nms + sorted(set(range(len(score))) - set(nms), key=lambda i: (-float(score[i]), i))
        for i in rest:
            if len(keep) >= int(o["min_boxes"]):
                break
            if i not in keep:
                keep.append(i)
        return keep[: int(o["max_boxes"])]


class DetectorExtractor(Extractor):
    name = "detector"
    OPTIONS = {
        "input_size": 640, **RESNET50, "classes": 91, "queries": 100, "d_model": 256,
        "layers": 6, "score_threshold": 0.2, "nms_iou": 0.3, "min_boxes": 10, "max_boxes": 100,
    }  # fmt: skip

    def __init__(self, options=None, weights=None, seed=0):
        super().__init__(options, weights, seed)
        o = self.options
        if not 1 <= int(o["min_boxes"]) <= int(o["max_boxes"]) <= int(o["queries"]):
            raise ConfigError("options: need 1 <= min_boxes <= max_boxes <= queries")

    def make_module(self) -> nn.Module:
        return DetrModule(self.options)


EXTRACTORS: dict[str, type[Extractor]] = {"grid": GridExtractor, "detector": DetectorExtractor}


def get_extractor(name: str, options: dict, weights: str | None, seed: int) -> Extractor:
    """The extractor called `name` in EXTRACTORS, or `package.module:Name` of another."""
    if name in EXTRACTORS:
        return EXTRACTORS[name](options, weights, seed)
    if ":" not in name:
        raise ConfigError(
            f"extractor: unknown '{name}' (known: {', '.join(EXTRACTORS)}, or package.module:Name)"
        )
    mod, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"extractor: cannot load '{name}' ({e})") from None
    ext = factory(options, weights, seed)
    if not isinstance(ext, Extractor):
        raise ConfigError(f"extractor: '{name}' did not give an Extractor")
    return ext


# ---------------------------------------------------------------- weights


HUB = "hf:"  # weights=hf:REPO[@REVISION]: a model repository on the Hugging Face hub


@functools.cache
def _hub_snapshot(spec: str) -> str:
    """The local folder of `hf:REPO[@REVISION]`'s safetensors: the snapshot in the Hugging
    Face cache (HF_HOME / HF_HUB_CACHE) if it is there, so an offline node with a filled
    cache needs no network; else downloaded into that cache where the hub is reachable.
    huggingface_hub does the cache, the revisions and the downloads; the cached snapshot
    wins over a newer one on the hub (name a revision to pin another), and the manifest
    records the files' sha256 either way."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, _, revision = spec[len(HUB) :].partition("@")
    if not repo:
        raise ConfigError(f"weights={spec}: name a model repository (hf:org/name[@revision])")
    kw = {"repo_id": repo, "revision": revision or None, "allow_patterns": ["*.safetensors"]}
    try:
        try:
            return snapshot_download(**kw, local_files_only=True)
        except LocalEntryNotFoundError:
            return snapshot_download(**kw)
    except Exception as e:  # offline, unknown repository or revision, no access: one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"weights={spec}: not in the local Hugging Face cache and not downloadable ({reason})"
        ) from None


def _weight_files(path: str) -> list[str]:
    if path.startswith(HUB):  # the snapshot's safetensors only, whatever else is cached there
        snap = _hub_snapshot(path)
        files = sorted(
            os.path.join(snap, f) for f in os.listdir(snap) if f.endswith(".safetensors")
        )
        if not files:
            raise ConfigError(f"weights={path}: the repository has no safetensors weights")
        return files
    if os.path.isdir(path):
        files = sorted(
            f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".pt", ".pth"))
        )
        if not files:
            raise ConfigError(f"{path}: no weights file (.safetensors, .bin, .pt, .pth) in it")
        return [os.path.join(path, f) for f in files]
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: weights file not found (weights=...)")
    return [path]


def weights_digest(path: str) -> str:
    h = hashlib.sha256()
    for f in _weight_files(path):
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def load_weights(module: nn.Module, path: str) -> None:
    """A state dict from safetensors or torch files (no pickle), into `module`. Keys of a
    transformers checkpoint of the inner model ('resnet.*', 'model.*') are matched too."""
    state: dict = {}
    for f in _weight_files(path):
        if f.endswith(".safetensors"):
            from safetensors.torch import load_file

            state.update(load_file(f))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    own = module.state_dict()
    if not set(state) & set(own):  # a checkpoint of the wrapped transformers model
        inner = next(n for n, _ in module.named_children() if n != "normalise")
        state = {f"{inner}.{k}": v for k, v in state.items()}
    # a head the extractor has no use for (an image classifier's 'classifier.*'): ignored
    children = {n for n, _ in module.named_children()}
    head = sorted({k.split(".")[0] for k in state if k.split(".")[0] not in children})
    if head and set(state) & set(own):
        log.info("%s: ignoring the checkpoint's %s (not part of the extractor)", path, head)
        state = {k: v for k, v in state.items() if k.split(".")[0] in children}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        first = (wrong or missing or unexpected)[0]
        raise ConfigError(
            f"{path}: weights do not fit this extractor's settings ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} of another shape; first: {first})"
        )
    module.load_state_dict(state)
