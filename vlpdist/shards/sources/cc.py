"""Conceptual Captions: `Train_GCC-training.tsv` (or the validation file), no header, one
image per line: caption <TAB> url.

The image id is the 0-based row index by default, which is how most feature extractions
of CC name their images; `options.image_id` is a template over {row}, {url_md5} and
{url_sha1} (e.g. '{row:09d}' for zero-padded file names). The file (3.3M lines) is streamed;
a subset (`size`/`fraction`) is drawn over rows with one extra counting pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from vlpdist.errors import SourceError
from vlpdist.shards.sources.common import (
    Context,
    Option,
    SourceDef,
    count_lines,
    lines,
    name,
    sample,
    select_indices,
)


def _image_id(template: str, row: int, url: str) -> str:
    fields = {"row": row}
    if "{url_" in template:
        fields["url_md5"] = hashlib.md5(url.encode()).hexdigest()
        fields["url_sha1"] = hashlib.sha1(url.encode()).hexdigest()
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise SourceError(f"options.image_id: bad template {template!r}: {e}") from None


def samples(ctx: Context) -> Iterator:
    template, first = ctx.options["image_id"], ctx.options["first_row"]
    file = name(ctx, "captions")
    keep = None
    if ctx.options["size"] is not None or ctx.options["fraction"] < 1:
        keep = select_indices(ctx, count_lines(ctx, "captions"))
    for no, line in lines(ctx, "captions", keep):
        row = no - 1
        where = f"{file}:{no}"
        ctx.report.read += 1
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            ctx.skip(row, "expected 'caption<TAB>url'", where)
            continue
        caption, url = parts[0].strip(), parts[1].strip()
        image_id = _image_id(template, row + first, url)
        out = sample(ctx, image_id, [ctx.text("caption", caption, url=url)], where)
        if out is not None:
            yield out


SOURCE = SourceDef(
    samples,
    inputs={"captions": "Train_GCC-training.tsv or Validation_GCC-1.1.0-Validation.tsv"},
    options={
        "image_id": Option("{row}", "image id template over {row}, {url_md5}, {url_sha1}"),
        "first_row": Option(0, "row number of the file's first line"),
    },
)
