"""VQA v2: the official questions and annotations JSON files.

questions   v2_OpenEnded_mscoco_<subtype>_questions.json (subtype train2014, val2014,
            test2015, test-dev2015):
            {"questions": [{"image_id", "question", "question_id"}, ...], "info", ...}
annotations v2_mscoco_<subtype>_annotations.json (train2014, val2014 only):
            {"annotations": [{"question_id", "image_id", "answers": [{"answer",
            "answer_confidence", "answer_id"}] x 10, "multiple_choice_answer",
            "answer_type", "question_type"}, ...]}

Two sources read them: `vqa2` (downstream: all 10 answers, multiple_choice_answer,
answer_type; the annotations may be left out, as for the test splits, whose answers are not
public: every question then has `answers: []`) and `vqa2_pretrain` (VQA-P as MMF's
masked_vqa2: the question with its answers as text, so every answer also gets token ids in
`answer_ids`).
"""

from __future__ import annotations

from collections.abc import Iterator

from vlpdist.shards.sources.common import (
    Context,
    SourceDef,
    grouped,
    id_field,
    json_list,
    name,
    str_field,
)


def _answers(ann: object) -> list[str] | None:
    answers = ann.get("answers") if isinstance(ann, dict) else None
    if not isinstance(answers, list) or not answers:
        return None
    out = [a.get("answer") if isinstance(a, dict) else None for a in answers]
    return out if all(isinstance(a, str) for a in out) else None


def _questions(ctx: Context, pretrain: bool) -> Iterator:
    annotations = None
    if "annotations" in ctx.inputs:
        annotations = {}
        for ann in json_list(ctx, "annotations", "annotations"):
            qid = id_field(ann, "question_id")
            if qid is not None:
                annotations[qid] = ann  # a record without question_id matches no question
    file = name(ctx, "questions")
    for i, q in enumerate(json_list(ctx, "questions", "questions")):
        where = f"{file}:questions[{i}]"
        ctx.report.read += 1
        qid, image_id = id_field(q, "question_id"), id_field(q, "image_id")
        text = str_field(q, "question")
        if qid is None or image_id is None or text is None:
            ctx.skip(qid if qid is not None else i, "malformed question record", where)
            continue
        if annotations is None:
            yield image_id, ctx.text("question", text, question_id=qid, answers=[]), where
            continue
        ann = annotations.get(qid)
        if ann is None:
            ctx.skip(qid, "no annotation for this question", where)
            continue
        answers = _answers(ann)
        if answers is None:
            ctx.skip(qid, "bad answers in annotation", where)
            continue
        fields: dict = {"question_id": qid, "answers": answers}
        if pretrain:
            fields["answer_ids"] = [ctx.encode(a) for a in answers]
        else:
            mca, answer_type = (
                str_field(ann, "multiple_choice_answer"),
                str_field(ann, "answer_type"),
            )
            if mca is None or answer_type is None:
                ctx.skip(qid, "no multiple_choice_answer or answer_type", where)
                continue
            fields["multiple_choice_answer"] = mca
            fields["answer_type"] = answer_type
        yield image_id, ctx.text("question", text, **fields), where


def _samples(ctx: Context, pretrain: bool) -> Iterator:
    by_image: dict = {}
    first_where: dict = {}
    for image_id, text, where in _questions(ctx, pretrain):
        by_image.setdefault(image_id, []).append(text)
        first_where.setdefault(image_id, where)
    yield from grouped(ctx, by_image, first_where)


def samples(ctx: Context) -> Iterator:
    return _samples(ctx, pretrain=False)


def pretrain_samples(ctx: Context) -> Iterator:
    return _samples(ctx, pretrain=True)


_INPUTS = {
    "questions": "v2_OpenEnded_mscoco_<subtype>_questions.json",
    "annotations": "v2_mscoco_<subtype>_annotations.json",
}
SOURCE = SourceDef(samples, inputs=_INPUTS, optional=("annotations",))
PRETRAIN_SOURCE = SourceDef(pretrain_samples, inputs=_INPUTS)
