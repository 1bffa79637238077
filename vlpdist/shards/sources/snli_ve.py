"""SNLI-VE: `snli_ve_<split>.jsonl` (necla-ml/SNLI-VE), one premise image / hypothesis pair
per line: {"Flickr30K_ID", "sentence1" (a caption), "sentence2" (the hypothesis),
"gold_label", "pairID", ...}; the images are Flickr30K's, keyed by their numeric id.
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
        image_id, pair_id = id_field(rec, "Flickr30K_ID"), id_field(rec, "pairID")
        hypothesis, label = str_field(rec, "sentence2"), str_field(rec, "gold_label")
        if image_id is None or pair_id is None or hypothesis is None:
            ctx.skip(pair_id or f"line {no}", "missing Flickr30K_ID, pairID or sentence2", where)
            continue
        if label not in SNLI_LABELS:
            ctx.skip(pair_id, f"bad label {label!r}", where)
            continue
        text = ctx.text("hypothesis", hypothesis, pair_id=pair_id, label=label)
        by_image.setdefault(image_id, []).append(text)
        first_where.setdefault(image_id, where)
    yield from grouped(ctx, by_image, first_where)


SOURCE = SourceDef(samples, inputs={"annotations": "snli_ve_<split>.jsonl"})
