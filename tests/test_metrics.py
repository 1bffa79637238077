"""Metric accumulators, checked on small cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlpdist.metrics import (
    PRIMARY,
    Accuracy,
    MultiLabelF1,
    VQAAccuracy,
    metric_for,
)

VOCAB = ["2", "3", "yes", "unanswerable"]


def _onehot_logits(idx: list[int], a: int = len(VOCAB)) -> np.ndarray:
    out = np.zeros((len(idx), a), dtype=np.float32)
    out[np.arange(len(idx)), idx] = 1.0
    return out


@pytest.mark.parametrize(
    "answers, expected",
    [
        # 4 of 10 humans say "two" (normalised to "2"): every leave-one-out subset keeps >= 3
        (["two"] * 4 + ["3"] * 6, 1.0),
        # exactly 3 of 10: the 3 subsets dropping a match keep 2 (2/3), the 7 others keep 3
        # (1): (3 * 2/3 + 7 * 1) / 10 = 0.9, the official score, not 1.0
        (["Two."] * 3 + ["3"] * 7, 0.9),
        # 1 of 10: 9 subsets keep it (1/3), 1 drops it (0): 9 * 1/3 / 10 = 0.3
        (["2"] + ["3"] * 9, 0.3),
        (["3"] * 10, 0.0),
    ],
)
def test_vqa_accuracy_official_score(answers, expected):
    m = VQAAccuracy()
    m.update(_onehot_logits([0]), [answers], VOCAB, np.array([False]))
    assert m.compute() == {"vqa_accuracy": pytest.approx(expected), "n": 1}


def test_vqa_accuracy_ignores_padding_and_averages():
    m = VQAAccuracy()
    answers = [["two"] * 10, ["2"] + ["3"] * 9, [], ["3"] * 10]
    # the pad (an unannotated repeat) is neither scored nor checked for answers
    m.update(_onehot_logits([0, 0, 0, 0]), answers, VOCAB, torch.tensor([0, 0, 1, 1]).bool())
    assert m.compute() == {"vqa_accuracy": pytest.approx((1.0 + 0.3) / 2), "n": 2}


def test_vqa_accuracy_refuses_unannotated_questions():
    with pytest.raises(ValueError, match="no human answers"):
        VQAAccuracy().update(_onehot_logits([0]), [[]], VOCAB, None)
    with pytest.raises(ValueError, match="is_pad"):
        VQAAccuracy().update(_onehot_logits([0, 1]), [["2"], ["3"]], VOCAB, np.zeros(3, bool))


def test_vizwiz_named_key_and_unanswerable():
    m = metric_for("vizwiz")
    answers = [["unanswerable"] * 6 + ["yes"] * 4, ["unanswerable"] * 10]
    m.update(torch.tensor(_onehot_logits([3, 2])), answers, VOCAB, torch.zeros(2, dtype=bool))
    assert m.compute() == {"vizwiz_accuracy": pytest.approx(0.5), "n": 2}


def test_accuracy_torch_and_numpy():
    logits = np.array([[0.1, 2, 0], [3, 0, 0], [0, 0, 1], [0, 5, 0]], dtype=np.float32)
    labels = np.array([1, 0, 0, 2])  # right, right, wrong, (pad: would be wrong)
    pad = np.array([False, False, False, True])
    a, b = Accuracy(), Accuracy()
    a.update(logits, labels, pad)
    b.update(torch.tensor(logits, dtype=torch.bfloat16), torch.tensor(labels), torch.tensor(pad))
    assert a.compute() == b.compute() == {"accuracy": pytest.approx(2 / 3), "n": 3}


# Rows are samples, columns labels; sample 4 is padding (it would add false positives
# everywhere and bring label 2 into the macro mean). Predictions are logit > 0.
F1_LOGITS = np.array(
    [[2, -1, -3, -1], [1, 1, -2, -1], [-1, 3, -1, -2], [-2, -1, -1, -1], [5, 5, 5, 5]],
    dtype=np.float32,
)
F1_TARGETS = np.array(
    [[1, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32
)
F1_PAD = np.array([False, False, False, False, True])
# label 0: pred 1100, true 1101 -> tp 2 fp 0 fn 1 -> F1 = 4 / 5 = 0.8
# label 1: pred 0110, true 0011 -> tp 1 fp 1 fn 1 -> F1 = 2 / 4 = 0.5
# label 2: pred 0000, true 0000 -> no positives at all -> left out of the macro mean
# label 3: pred 0000, true 1000 -> tp 0 fp 0 fn 1 -> F1 = 0 (counted)
# micro: TP 3, FP 1, FN 3 -> 6 / (6 + 1 + 3) = 0.6; macro: (0.8 + 0.5 + 0) / 3
F1_EXPECTED = {"micro_f1": pytest.approx(0.6), "macro_f1": pytest.approx(1.3 / 3), "n": 4}


def test_multilabel_f1_hand_computed():
    m = MultiLabelF1()
    m.update(F1_LOGITS, F1_TARGETS, F1_PAD)
    assert m.compute() == F1_EXPECTED
    t = MultiLabelF1()
    t.update(torch.tensor(F1_LOGITS).half(), torch.tensor(F1_TARGETS), torch.tensor(F1_PAD))
    assert t.compute() == F1_EXPECTED


def test_multilabel_f1_threshold_on_sigmoid():
    # sigmoid(1) = 0.731: positive at 0.5, negative at 0.8; huge logits must not overflow
    logits, targets = np.array([[1.0, 1e4, -1e4]]), np.array([[1.0, 1.0, 0.0]])
    lo, hi = MultiLabelF1(), MultiLabelF1()
    lo.update(logits, targets, None)
    hi.update(logits, targets, None, threshold=0.8)
    assert lo.compute()["micro_f1"] == pytest.approx(1.0)
    assert hi.compute()["micro_f1"] == pytest.approx(2 / 3)  # tp 1, fn 1
    with pytest.raises(ValueError, match="threshold"):
        lo.update(logits, targets, None, threshold=1.0)


def test_empty_accumulators_report_zero():
    assert VQAAccuracy("vizwiz_accuracy").compute() == {"vizwiz_accuracy": 0.0, "n": 0}
    assert Accuracy().compute() == {"accuracy": 0.0, "n": 0}
    assert MultiLabelF1().compute() == {"micro_f1": 0.0, "macro_f1": 0.0, "n": 0}
    only_pads = Accuracy()
    only_pads.update(np.ones((2, 3)), np.zeros(2), np.ones(2, dtype=bool))
    assert only_pads.compute() == {"accuracy": 0.0, "n": 0}


def _random_batch(task: str, rng: np.random.Generator, b: int = 23):
    pad = rng.random(b) < 0.2
    if task == "vqa":
        answers = [list(rng.choice(VOCAB, size=10)) for _ in range(b)]
        return (rng.normal(size=(b, len(VOCAB))), answers, VOCAB, pad)
    if task == "snli_ve":
        return (rng.normal(size=(b, 3)), rng.integers(0, 3, b), pad)
    return (rng.normal(size=(b, 7)), (rng.random((b, 7)) < 0.3).astype(np.float32), pad)


def _rows(args, lo: int, hi: int):
    return tuple(x if x is VOCAB else x[lo:hi] for x in args)


@pytest.mark.parametrize("task", ["vqa", "snli_ve", "mmimdb"])
def test_several_updates_equal_one_and_states_merge(task):
    args = _random_batch(task, np.random.default_rng(0))
    whole, parts, rank0, rank1, reduced = (metric_for(task) for _ in range(5))
    whole.update(*args)
    for lo, hi in [(0, 5), (5, 6), (6, 17), (17, 23)]:
        parts.update(*_rows(args, lo, hi))
    rank0.update(*_rows(args, 0, 11))
    rank1.update(*_rows(args, 11, 23))
    reduced.merge(torch.from_numpy(rank0.state() + rank1.state()))  # what all_reduce gives
    expected = whole.compute()
    assert expected["n"] == int((~args[-1]).sum())
    assert parts.compute() == pytest.approx(expected)
    assert reduced.compute() == pytest.approx(expected)


def test_metric_for_and_primary_agree():
    for task, key in PRIMARY.items():
        assert key in metric_for(task).compute()
    assert metric_for("vqa") is not metric_for("vqa")  # fresh each time
    with pytest.raises(ValueError, match="known"):
        metric_for("pretrain")
