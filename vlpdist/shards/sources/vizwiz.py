"""VizWiz VQA: `<split>.json` from the VizWiz 2020+ release (Annotations.zip).

[{"image": "VizWiz_train_00000000.jpg", "question": ..., "answers": [{"answer",
"answer_confidence"}] x 10, "answer_type": ..., "answerable": 0 | 1}, ...]; the test split
has no answers, answer_type or answerable. One question per image; the question id is the
image file's stem.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from vlpdist.shards.sources.common import (
    Context,
    SourceDef,
    grouped,
    json_list,
    name,
    str_field,
)


def _question(ctx: Context, rec: dict, image: str) -> tuple[dict | None, str | None]:
    """(text record, None) or (None, skip reason)."""
    text = str_field(rec, "question")
    if text is None:
        return None, "no question"
    fields: dict = {"question_id": os.path.splitext(image)[0], "answers": []}
    if "answers" in rec:  # not in the test split
        answers = rec["answers"]
        if not isinstance(answers, list) or not all(
            isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers
        ):
            return None, "bad answers"
        fields["answers"] = [a["answer"] for a in answers]
        fields["answer_confidence"] = [a.get("answer_confidence") for a in answers]
        answerable, answer_type = rec.get("answerable"), str_field(rec, "answer_type")
        if isinstance(answerable, bool) or answerable not in (0, 1) or answer_type is None:
            return None, "bad label (answerable must be 0/1, answer_type a string)"
        fields["answerable"] = bool(answerable)
        fields["answer_type"] = answer_type
    return ctx.text("question", text, **fields), None


def samples(ctx: Context) -> Iterator:
    file = name(ctx, "annotations")
    by_image: dict = {}
    first_where: dict = {}
    for i, rec in enumerate(json_list(ctx, "annotations")):
        where = f"{file}:[{i}]"
        ctx.report.read += 1
        image = str_field(rec, "image")
        if image is None:
            ctx.skip(i, "no image name", where)
            continue
        text, why = _question(ctx, rec, image)
        if text is None:
            ctx.skip(image, why, where)
            continue
        by_image.setdefault(image, []).append(text)
        first_where.setdefault(image, where)
    yield from grouped(ctx, by_image, first_where)


SOURCE = SourceDef(samples, inputs={"annotations": "VizWiz <split>.json (Annotations.zip)"})
