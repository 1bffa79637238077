"""COCO captions: Karpathy's `dataset_coco.json` or the official `captions_<split>2014.json`.

Karpathy format: {"images": [{"cocoid", "split", "filename", "sentences": [{"raw",
"sentid"}, ...]}, ...]}, split one of train/restval/val/test; `split: train` takes train +
restval, as MMF does. Official format: {"images": [...], "annotations": [{"image_id", "id",
"caption"}, ...]}, one file per split.
"""

from __future__ import annotations

from collections.abc import Iterator

from vlpdist.errors import SourceError
from vlpdist.shards.sources.common import (
    Context,
    Option,
    SourceDef,
    grouped,
    id_field,
    name,
    read_json,
    str_field,
)

KARPATHY_SPLITS = {"train": ["train", "restval"], "val": ["val"], "test": ["test"]}


def samples(ctx: Context) -> Iterator:
    data = read_json(ctx.storage, ctx.inputs["captions"])
    fmt = ctx.options["format"]
    if fmt == "auto":
        images = data.get("images") if isinstance(data, dict) else None
        is_karpathy = isinstance(images, list) and bool(images) and "sentences" in images[0]
        fmt = "karpathy" if is_karpathy else "official"
    if not isinstance(data, dict) or not isinstance(
        data.get("images" if fmt == "karpathy" else "annotations"), list
    ):
        raise SourceError(f"{ctx.inputs['captions']}: not a COCO captions file in {fmt} format")
    ctx.extra["captions_format"] = fmt
    by_image: dict = {}
    first_where: dict = {}
    read = _karpathy if fmt == "karpathy" else _official
    for image_id, text, where in read(ctx, data):
        by_image.setdefault(image_id, []).append(text)
        first_where.setdefault(image_id, where)
    yield from grouped(ctx, by_image, first_where)


def _karpathy(ctx: Context, data: dict):
    splits = ctx.options["karpathy_splits"] or KARPATHY_SPLITS
    wanted = splits.get(ctx.recipe.split)
    if not isinstance(wanted, list):
        raise SourceError(
            f"split: '{ctx.recipe.split}' is not in options.karpathy_splits ({', '.join(splits)})"
        )
    file = name(ctx, "captions")
    for i, img in enumerate(data["images"]):
        where = f"{file}:images[{i}]"
        if isinstance(img, dict) and img.get("split") not in wanted and "split" in img:
            continue  # another split's image: not an item of this build
        ctx.report.read += 1
        image_id = id_field(img, "cocoid")
        sentences = img.get("sentences") if isinstance(img, dict) else None
        if image_id is None or not isinstance(sentences, list) or "split" not in img:
            ctx.skip(image_id if image_id is not None else i, "malformed image record", where)
            continue
        for j, sent in enumerate(sentences):
            raw = str_field(sent, "raw")
            if raw is None:
                ctx.skip(image_id, "caption is not a non-empty string", f"{where}.sentences[{j}]")
                continue
            yield image_id, ctx.text("caption", raw.strip(), caption_id=sent.get("sentid")), where


def _official(ctx: Context, data: dict):
    file = name(ctx, "captions")
    for i, ann in enumerate(data["annotations"]):
        where = f"{file}:annotations[{i}]"
        ctx.report.read += 1
        image_id, caption = id_field(ann, "image_id"), str_field(ann, "caption")
        if image_id is None or caption is None:
            ctx.skip(ann.get("id", i) if isinstance(ann, dict) else i, "malformed caption", where)
            continue
        yield image_id, ctx.text("caption", caption.strip(), caption_id=ann.get("id")), where


SOURCE = SourceDef(
    samples,
    inputs={"captions": "dataset_coco.json (Karpathy) or captions_<split>2014.json"},
    options={
        "format": Option("auto", "captions file format", choices=("auto", "karpathy", "official")),
        "karpathy_splits": Option(None, "split -> Karpathy splits it takes", (dict,)),
    },
)
