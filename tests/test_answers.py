"""Answer normalisation, vocabularies and soft scores, checked by hand against the official
VQA evaluation's behaviour."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from vlpdist.data.answers import ANSWERS_FILE, soft_scores, vocab_from_doc, vqa_accuracy
from vlpdist.shards.answers import (
    answers_doc,
    count_answers,
    normalize_answer,
    target_answer,
    vocab_from_counts,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),  # number words become digits
        ("ten", "10"),
        ("none", "0"),  # official quirk: "none" is a number word
        ("eleven", "eleven"),  # the table stops at ten
        ("the dog", "dog"),  # articles go
        ("A man on an elephant", "man on elephant"),
        ("dont know", "don't know"),  # contractions table
        ("isnt", "isn't"),
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("3.5", "3.5"),  # a period inside a number stays
        (".5", ".5"),
        ("a.m.", "am"),
        ("1,000", "1000"),  # digit,digit: every punctuation mark is deleted, not spaced
        ("1,000 (approx)", "1000 approx"),
        ("Hello, World!", "hello world"),  # ", " deleted; "!" with no space becomes a space
        ("black/white", "black white"),
        ("black / white", "black white"),  # "/" next to a space is deleted
        ("x-ray", "x ray"),
        ("  Yes\n", "yes"),
        ("red\tand\nblue", "red and blue"),
        ("10:30", "10:30"),  # ":" is not in the official punctuation list
        ("Im", "im"),  # the capitalised table keys never match after lowercasing
        ("what's up?", "what's up"),
        ("the", ""),
    ],
)
def test_normalize_answer_official_cases(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_is_idempotent_on_its_output():
    # Callers normalise already normalised vocabulary entries; that must be a no-op.
    rng = random.Random(0)
    alphabet = "ab t e,.!?/-'0123 none the dont"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        once = normalize_answer(s)
        assert normalize_answer(once) == once, s


VOCAB = {"yes": 0, "no": 1, "maybe": 2, "blue": 3, "red": 4}


def test_soft_scores_ten_annotators():
    answers = ["yes"] * 4 + ["no"] * 3 + ["maybe"] * 2 + ["blue"]
    idx, scores = soft_scores(answers, VOCAB)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    assert idx.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(scores, [1.0, 0.9, 0.6, 0.3], rtol=0, atol=1e-6)


def test_soft_scores_normalise_before_counting():
    # "Yes", "yes." and " YES" are the same answer: 3 of 10 -> 0.9, not 0.3 each.
    answers = ["Yes", "yes.", " YES", "no", "no", "No.", "no", "Blue", "blue!", "the blue"]
    idx, scores = soft_scores(answers, VOCAB)
    got = dict(zip(idx.tolist(), scores.tolist(), strict=True))
    assert got == pytest.approx({0: 0.9, 1: 1.0, 3: 0.9})


def test_soft_scores_drop_out_of_vocab_mass():
    # 6 annotators said something outside the vocabulary: n stays 10, their mass is lost.
    answers = ["green"] * 6 + ["yes"] * 4
    idx, scores = soft_scores(answers, VOCAB)
    assert idx.tolist() == [0]
    assert scores.tolist() == pytest.approx([1.0])
    idx, scores = soft_scores(["purple"] * 10, VOCAB)
    assert idx.shape == (0,) and scores.shape == (0,)
    assert soft_scores([], VOCAB)[0].shape == (0,)


def test_soft_scores_non_ten_annotators_by_hand():
    # n = 5, "yes" by 2: leaving out a "yes" annotator (2 subsets) leaves 1 match -> 1/3;
    # leaving out another (3 subsets) leaves 2 matches -> 2/3. Mean = (2/3 + 2) / 5 = 8/15.
    # "no" by 3: drop a "no" (3x) -> 2/3; drop a "yes" (2x) -> 3 matches -> 1. (2 + 2)/5.
    idx, scores = soft_scores(["yes", "yes", "no", "no", "no"], VOCAB)
    assert idx.tolist() == [0, 1]
    assert scores.tolist() == pytest.approx([8 / 15, 4 / 5])
    # n = 3, all agree: every 2-annotator subset has 2 matches -> 2/3.
    assert soft_scores(["red"] * 3, VOCAB)[1].tolist() == pytest.approx([2 / 3])


def test_vqa_accuracy_by_hand():
    answers = ["yes"] * 4 + ["no"] * 3 + ["maybe"] * 2 + ["blue"]
    assert vqa_accuracy("Yes!", answers) == pytest.approx(1.0)
    assert vqa_accuracy("no", answers) == pytest.approx(0.9)
    assert vqa_accuracy("the maybe", answers) == pytest.approx(0.6)
    assert vqa_accuracy("blue", answers) == pytest.approx(0.3)
    assert vqa_accuracy("green", answers) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("yes", []) == 0.0
    # n = 4, 1 match: 3 of 4 leave-one-out subsets contain it -> 3 * (1/3) / 4 = 0.25.
    assert vqa_accuracy("cat", ["cat", "dog", "dog", "dog"]) == pytest.approx(0.25)


def q(answers, mca=None, kind="question"):
    rec = {"kind": kind, "text": "?", "ids": [], "answers": answers}
    if mca is not None:
        rec["multiple_choice_answer"] = mca
    return rec


def test_target_answer():
    # multiple_choice_answer wins even when the human majority says otherwise.
    assert target_answer(q(["no"] * 6 + ["yes"] * 4, mca="Yes")) == "yes"
    assert target_answer(q(["No", "no.", "yes"])) == "no"  # normalised majority
    assert target_answer(q(["zebra", "apple", "Apple.", "zebra"])) == "apple"  # tie
    assert target_answer(q([])) is None
    assert target_answer(q(["the", "?"])) is None  # nothing left after normalising


def test_count_answers_units_are_questions():
    records = [
        q(["yes"] * 10),
        q(["no"] * 6 + ["yes"] * 4, mca="yes"),
        q(["two", "2", "3"]),  # majority "2"
        q(["no"] * 10, mca="No."),
        q([]),  # no answers: not counted
        {"kind": "caption", "text": "a dog", "ids": [], "answers": ["yes"]},
    ]
    assert count_answers(records) == Counter({"yes": 2, "2": 1, "no": 1})


def test_vocab_threshold_and_order():
    counts = Counter({"yes": 50, "no": 50, "2": 9, "red": 9, "blue": 8, "cat": 12})
    assert vocab_from_counts(counts) == ["no", "yes", "cat", "2", "red"]
    assert vocab_from_counts(counts, min_count=10) == ["no", "yes", "cat"]
    assert vocab_from_counts(counts, min_count=1)[-1] == "blue"
    shuffled = dict(reversed(list(counts.items())))
    assert vocab_from_counts(shuffled) == vocab_from_counts(counts)


def test_answers_doc_roundtrip():
    counts = Counter({"yes": 3, "no": 5, "blue": 1})
    doc = json.loads(json.dumps(answers_doc(counts)))
    assert ANSWERS_FILE == "answers.json"
    assert doc["normalization"] == "vqa-official"
    assert doc["unit"] == "questions per target answer"
    assert list(doc["counts"]) == ["no", "yes", "blue"]
    assert vocab_from_doc(doc, min_count=2) == ["no", "yes"]
    with pytest.raises(ValueError, match="normalised"):
        vocab_from_doc({**doc, "normalization": "mmf-evalai"}, min_count=1)
