"""Generated captions (the paper's CCG-style sets): captions a captioning model wrote for an
image set whose features we have.

Accepted files: a JSON mapping {image_id: caption or [captions]}; a JSON list in the COCO
results format [{"image_id", "caption"}, ...] (what caption evaluation scripts write); or
JSON lines {"image_id", "caption"}. Which captioner wrote them (`options.captioner`) is
recorded in the manifest's `extra`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from vlpdist.errors import SourceError
from vlpdist.shards.sources.common import (
    Context,
    Option,
    SourceDef,
    grouped,
    id_field,
    lines,
    name,
    read_json,
)


def _records(ctx: Context) -> Iterator[tuple[object, object, str]]:
    """(image id or None, caption value, where) for every record of the file."""
    file, url = name(ctx, "captions"), ctx.inputs["captions"]
    fmt = ctx.options["format"]
    if fmt == "auto":
        fmt = "jsonl" if url.endswith(".jsonl") else "json"
    if fmt == "jsonl":
        for no, line in lines(ctx, "captions"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                yield None, None, f"{file}:{no}"
                continue
            yield id_field(rec, "image_id"), _get(rec, "caption"), f"{file}:{no}"
        return
    data = read_json(ctx.storage, url)
    if isinstance(data, dict):
        for image_id, caption in data.items():
            yield image_id, caption, f"{file}:{json.dumps(image_id)}"
    elif isinstance(data, list):
        for i, rec in enumerate(data):
            yield id_field(rec, "image_id"), _get(rec, "caption"), f"{file}:[{i}]"
    else:
        raise SourceError(f"{url}: expected a mapping or a list of {{image_id, caption}}")


def _get(rec: object, key: str):
    return rec.get(key) if isinstance(rec, dict) else None


def samples(ctx: Context) -> Iterator:
    ctx.extra["captioner"] = ctx.options["captioner"]
    by_image: dict = {}
    first_where: dict = {}
    for image_id, caption, where in _records(ctx):
        ctx.report.read += 1
        captions = caption if isinstance(caption, list) else [caption]
        if image_id is None or not captions:
            item = image_id if image_id is not None else where
            ctx.skip(item, "malformed record (need image_id and caption)", where)
            continue
        for c in captions:
            if not isinstance(c, str) or not c.strip():
                ctx.skip(image_id, "caption is not a non-empty string", where)
                continue
            by_image.setdefault(image_id, []).append(ctx.text("caption", c.strip()))
            first_where.setdefault(image_id, where)
    yield from grouped(ctx, by_image, first_where)


SOURCE = SourceDef(
    samples,
    inputs={"captions": "generated captions: .json or .jsonl keyed by image id"},
    options={
        "format": Option("auto", "captions file format", choices=("auto", "json", "jsonl")),
        "captioner": Option(None, "which model wrote the captions (recorded)", (str, dict)),
    },
)
