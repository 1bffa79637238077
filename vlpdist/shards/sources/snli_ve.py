"""SNLI-VE: `snli_ve_<split>.jsonl` (necla-ml/SNLI-VE), one premise image / hypothesis pair
per line: an SNLI 1.0 record {"sentence1" (a caption), "sentence2" (the hypothesis),
"gold_label", "pairID", "captionID", "annotator_labels", parses} plus the image's id.

The image id has two spellings. The files linked from the SNLI-VE README (the original
`snli_ve_generator.py`, which MMF and UNITER read) write "Flikr30kID" (sic) with the file
name, "2248275918.jpg"; the later `vet/tools/snli_ve_generator.py` writes "Flickr30K_ID",
"2248275918". Both are read, and the '.jpg' is dropped, so both give the numeric Flickr30K
id that features are keyed by, and the same image ids and sample keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from vlpdist.shards.schema import SNLI_LABELS
from vlpdist.shards.sources.common import (
    Context,
    SourceDef,
    grouped,
    id_field,
    lines,
    name,
    str_field,
)


def _image_id(rec: dict):
    """The numeric Flickr30K id of either generator's record, or None."""
    image_id = id_field(rec, "Flickr30K_ID")
    if image_id is None:
        image_id = id_field(rec, "Flikr30kID")
    if isinstance(image_id, str) and image_id.endswith(".jpg"):
        image_id = image_id.removesuffix(".jpg") or None
    return image_id


def samples(ctx: Context) -> Iterator:
    file = name(ctx, "annotations")
    by_image: dict = {}
    first_where: dict = {}
    for no, line in lines(ctx, "annotations"):
        where = f"{file}:{no}"
        ctx.report.read += 1
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            ctx.skip(f"line {no}", "malformed JSON line", where)
            continue
        image_id, pair_id = _image_id(rec), id_field(rec, "pairID")
        hypothesis, label = str_field(rec, "sentence2"), str_field(rec, "gold_label")
        if image_id is None or pair_id is None or hypothesis is None:
            ctx.skip(
                pair_id or f"line {no}",
                "missing Flickr30K_ID (or Flikr30kID), pairID or sentence2",
                where,
            )
            continue
        if label not in SNLI_LABELS:
            ctx.skip(pair_id, f"bad label {label!r}", where)
            continue
        text = ctx.text("hypothesis", hypothesis, pair_id=pair_id, label=label)
        by_image.setdefault(image_id, []).append(text)
        first_where.setdefault(image_id, where)
    yield from grouped(ctx, by_image, first_where)


SOURCE = SourceDef(samples, inputs={"annotations": "snli_ve_<split>.jsonl"})
