"""Your own downstream task as JSON lines: one record per line,

  {"image_id": "cat_0001", "text": "What is on the sofa?", "answers": ["a cat", "cat", ...]}
  {"image_id": 17, "text": "a meme's text", "label": "hateful"}
  {"image_id": "img/0002.jpg", "text": "a plot summary", "labels": ["drama", "comedy"]}

with exactly one of `answers` (VQA-style: a list of human answers, scored with VQA accuracy
against soft scores, as task `answers`), `label` (one class: task `label`) or `labels`
(several classes: task `labels`), and an optional `id` (an int or a string). Other keys are
ignored (the build report names them). A file holds one kind: the first record's that names
one, or `options.kind`.

`answers` records become `question` texts with `answers` (so labels.json counts them as VQA
v2's are counted); `label`/`labels` records become `text` texts with `label`/`labels`. Every
text keeps its `line`; an `id` becomes `question_id` / `text_id`. Every line that cannot be
used is a counted skip with its reason and `file:line`, and so is every text whose image has
no features.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from vlpdist.shards.sources.common import (
    Context,
    Option,
    SourceDef,
    id_field,
    lines,
    name,
    sample,
    select,
    str_field,
)

KINDS = ("answers", "label", "labels")
TEXT_KIND = {"answers": "question", "label": "text", "labels": "text"}  # the sample json's
ID_FIELD = {"answers": "question_id", "label": "text_id", "labels": "text_id"}
KNOWN_KEYS = {"image_id", "text", "id", *KINDS}
FULL_VQA_ANSWERS = 4  # n identical answers score min((n - 1) / 3, 1) by the official formula


def _strings(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _value(kind: str, value: object) -> tuple[object, str | None]:
    """(the task field's value, None) or (None, skip reason)."""
    if kind == "label":
        if not _strings(value):
            return None, "label is not a non-empty string"
        return value.strip(), None
    if not isinstance(value, list) or not value or not all(_strings(v) for v in value):
        return None, f"{kind} is not a non-empty list of non-empty strings"
    values = [v.strip() for v in value]
    # answers keep their repeats (agreement is the VQA score); a label set does not
    return (values if kind == "answers" else list(dict.fromkeys(values))), None


def _record(line: str, kind: str | None, ignored: dict[str, int], no: int):
    """(image_id, text fields, kind) or (None, skip reason, kind); `kind` is the file's, set
    by the first JSON object that names exactly one."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg})", kind
    if not isinstance(rec, dict):
        return None, "not a JSON object", kind
    named = [k for k in KINDS if k in rec]
    if not named:
        return None, "no answers, label or labels (give exactly one)", kind
    if len(named) > 1:
        return None, f"{', '.join(named[:-1])} and {named[-1]} given (give exactly one)", kind
    kind = kind or named[0]
    if named[0] != kind:
        return None, f"a {named[0]} record in a file of {kind} records", kind
    image_id, text = id_field(rec, "image_id"), str_field(rec, "text")
    if image_id is None:
        return None, "no image_id (an integer or a non-empty string)", kind
    if text is None:
        return None, "no text (a non-empty string)", kind
    value, why = _value(kind, rec[kind])
    if why:
        return None, why, kind
    fields = {"text": text.strip(), kind: value, "line": no}
    if "id" in rec:
        if id_field(rec, "id") is None:
            return None, "id is not an integer or a non-empty string", kind
        fields[ID_FIELD[kind]] = rec["id"]
    for key in rec.keys() - KNOWN_KEYS:
        ignored.setdefault(key, no)
    return image_id, fields, kind


def samples(ctx: Context) -> Iterator:
    file = name(ctx, "texts")
    kind = None if ctx.options["kind"] == "auto" else ctx.options["kind"]
    by_image: dict[object, list[dict]] = {}
    wheres: dict[object, list[str]] = {}
    ignored: dict[str, int] = {}  # key -> first line
    for no, line in lines(ctx, "texts"):
        where = f"{file}:{no}"
        ctx.report.read += 1
        image_id, fields, kind = _record(line, kind, ignored, no)
        if image_id is None:
            ctx.skip(f"line {no}", fields, where)
            continue
        text = ctx.text(TEXT_KIND[kind], fields.pop("text"), **fields)
        by_image.setdefault(image_id, []).append(text)
        wheres.setdefault(image_id, []).append(where)
    _notes(ctx, kind, ignored, by_image)
    for image_id in select(ctx, list(by_image)):
        if ctx.features.lookup(image_id) is None:  # each text is a skip, at its own line
            for where in wheres[image_id]:
                ctx.skip(image_id, "no features for this image", where)
            continue
        out = sample(ctx, image_id, by_image[image_id], wheres[image_id][0])
        if out is not None:
            yield out


def _notes(ctx: Context, kind: str | None, ignored: dict[str, int], by_image: dict) -> None:
    ctx.extra["task"] = kind
    if kind is not None:
        how = "options.kind" if ctx.options["kind"] != "auto" else "the first record naming one"
        ctx.report.notes.append(f"kind: {kind} (from {how}); fine-tune with data.task={kind}")
    if ignored:
        shown = ", ".join(f"'{k}' (first on line {no})" for k, no in sorted(ignored.items()))
        ctx.report.notes.append(f"ignored keys: {shown}")
    if kind == "answers":
        few = sum(len(t["answers"]) < FULL_VQA_ANSWERS for ts in by_image.values() for t in ts)
        if few:
            ctx.report.notes.append(
                f"{few} records have fewer than {FULL_VQA_ANSWERS} answers: VQA accuracy gives "
                "n identical answers at most min((n - 1) / 3, 1), a single answer 0; for one "
                "answer per text use 'label'"
            )


SOURCE = SourceDef(
    samples,
    inputs={"texts": "your task as JSON lines: image_id, text, and answers | label | labels"},
    options={
        "kind": Option(
            "auto", "the records' kind (auto: the first record's)", choices=("auto", *KINDS)
        )
    },
)
