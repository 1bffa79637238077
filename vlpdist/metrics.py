"""Streaming metric accumulators for the downstream tasks' evaluation.

Each accumulator takes one batch at a time (`update`, or `update_batch` with an evaluation
Batch, which knows what of the batch its task is scored against) and reports at the end
(`compute`).
Inputs may be torch tensors (any device; argmax runs where the logits live, so only [B]
indices cross to the host) or numpy arrays. Samples flagged in `is_pad` only balance the
ranks and never count. An accumulator that has seen nothing reports 0.0 with n = 0.

Across ranks, `state()` is a float64 vector of sufficient statistics to sum (all_reduce)
and `merge(state)` adds one back: every rank runs the same number of batches (padding keeps
them equal), so the vectors have the same shape everywhere.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vlpdist.data.answers import vqa_accuracy

Array = torch.Tensor | np.ndarray


def _numpy(x: Array) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # numpy has no bfloat16
        return x.cpu().numpy()
    return np.asarray(x)


def _argmax(logits: Array) -> np.ndarray:
    idx = logits.detach().argmax(-1) if isinstance(logits, torch.Tensor) else logits.argmax(-1)
    return _numpy(idx).astype(np.int64)


def _keep(is_pad: Array | None, b: int) -> np.ndarray:
    """Bool [B], True for the real samples."""
    if is_pad is None:
        return np.ones(b, dtype=bool)
    pad = _numpy(is_pad).astype(bool).reshape(-1)
    if pad.shape != (b,):
        raise ValueError(f"is_pad has shape {pad.shape}, expected ({b},)")
    return ~pad


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


class VQAAccuracy:
    """Official VQA accuracy of the argmax answer, averaged over questions. VizWiz uses the
    same formula (its answers include "unanswerable"), so only the reported key differs."""

    def __init__(self, name: str = "vqa_accuracy"):
        self.name = name
        self.total, self.n = 0.0, 0

    def update(
        self, logits: Array, answers: list[list[str]], vocab: list[str], is_pad: Array | None
    ) -> None:
        pred = _argmax(logits)
        if len(answers) != len(pred):
            raise ValueError(f"{len(answers)} answer lists for {len(pred)} predictions")
        for i in np.flatnonzero(_keep(is_pad, len(pred))):
            if not answers[i]:
                # the official score of an unannotated question is undefined (test splits),
                # and counting it as 0 would quietly drag the mean down
                raise ValueError(f"sample {i} has no human answers to score against")
            self.total += vqa_accuracy(vocab[pred[i]], answers[i])
            self.n += 1

    def update_batch(self, logits: Array, batch, vocab: list[str]) -> None:
        """An evaluation Batch: its human answers, the predictions read in `vocab`."""
        self.update(logits, batch.answers, vocab, batch.is_pad)

    def compute(self) -> dict:
        return {self.name: _ratio(self.total, self.n), "n": self.n}

    def state(self) -> np.ndarray:
        return np.array([self.total, self.n], dtype=np.float64)

    def merge(self, state: Array) -> None:
        total, n = _numpy(state).astype(np.float64)
        self.total += float(total)
        self.n += int(round(n))


class Accuracy:
    """Top-1 accuracy of integer class labels (SNLI-VE)."""

    def __init__(self):
        self.correct, self.n = 0, 0

    def update(self, logits: Array, labels: Array, is_pad: Array | None) -> None:
        pred = _argmax(logits)
        gold = _numpy(labels).astype(np.int64).reshape(-1)
        if gold.shape != pred.shape:
            raise ValueError(f"labels have shape {gold.shape}, predictions {pred.shape}")
        keep = _keep(is_pad, len(pred))
        self.correct += int((pred[keep] == gold[keep]).sum())
        self.n += int(keep.sum())

    def update_batch(self, logits: Array, batch, _vocab=None) -> None:
        """An evaluation Batch: its class targets."""
        self.update(logits, batch.targets, batch.is_pad)

    def compute(self) -> dict:
        return {"accuracy": _ratio(self.correct, self.n), "n": self.n}

    def state(self) -> np.ndarray:
        return np.array([self.correct, self.n], dtype=np.float64)

    def merge(self, state: Array) -> None:
        correct, n = _numpy(state).astype(np.float64)
        self.correct += int(round(correct))
        self.n += int(round(n))


class MultiLabelF1:
    """Micro and macro F1 of thresholded sigmoid outputs against multi-hot targets (MM-IMDB).

    Micro F1 pools every (sample, label) decision: 2TP / (2TP + FP + FN). Macro F1 averages
    per-label F1 over the labels with at least one true or predicted positive in the data
    seen: for the others F1 is 0/0, and scoring them 0 or 1 would let a small evaluation
    subset that misses a rare genre move the mean by a whole label's weight."""

    def __init__(self):
        self.counts: np.ndarray | None = None  # int64 [3, G]: tp, fp, fn per label
        self.n = 0

    def update(
        self, logits: Array, targets: Array, is_pad: Array | None, threshold: float = 0.5
    ) -> None:
        """A label is predicted when sigmoid(logit) > threshold."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        x, y = _numpy(logits), _numpy(targets)
        if x.ndim != 2 or x.shape != y.shape:
            raise ValueError(f"logits {x.shape} and targets {y.shape} must both be [B, G]")
        keep = _keep(is_pad, len(x))
        # sigmoid(x) > t  <=>  x > log(t / (1 - t)): no exp, so no overflow on large logits
        self.add(x[keep] > math.log(threshold / (1.0 - threshold)), y[keep] >= 0.5)

    def add(self, pred: np.ndarray, gold: np.ndarray) -> None:
        """Bool [B, G] decisions and truths of real samples."""
        counts = np.stack(
            [(pred & gold).sum(0), (pred & ~gold).sum(0), (~pred & gold).sum(0)]
        ).astype(np.int64)
        self._add(counts)
        self.n += len(pred)

    def update_batch(self, logits: Array, batch, _vocab=None) -> None:
        """An evaluation Batch: its multi-hot targets."""
        self.update(logits, batch.targets, batch.is_pad)

    def _add(self, counts: np.ndarray) -> None:
        if self.counts is None:
            self.counts = np.zeros_like(counts)
        if counts.shape != self.counts.shape:
            raise ValueError(
                f"{counts.shape[1]} labels, earlier batches had {self.counts.shape[1]}"
            )
        self.counts += counts

    def compute(self) -> dict:
        if self.counts is None:
            return {"micro_f1": 0.0, "macro_f1": 0.0, "n": self.n}
        tp, fp, fn = self.counts
        den = 2 * tp + fp + fn
        seen = den > 0
        macro = float(np.mean(2 * tp[seen] / den[seen])) if seen.any() else 0.0
        return {"micro_f1": _ratio(2 * tp.sum(), den.sum()), "macro_f1": macro, "n": self.n}

    def state(self) -> np.ndarray:
        counts = np.zeros((3, 0)) if self.counts is None else self.counts
        return np.concatenate([[self.n], counts.reshape(-1)]).astype(np.float64)

    def merge(self, state: Array) -> None:
        s = _numpy(state).astype(np.float64).reshape(-1)
        self.n += int(round(s[0]))
        if len(s) > 1:
            self._add(np.rint(s[1:]).astype(np.int64).reshape(3, -1))


class ClassF1:
    """Top-1 accuracy and macro F1 of single-class labels (your own `label` task).

    Macro F1 averages the per-class F1 of the argmax decisions, over the classes with a true
    or predicted sample (as `MultiLabelF1` does): a class the classifier never predicts
    counts, at 0, wherever it is in the data. A target outside the vocabulary (a class only
    the val split has, IGNORE) is a miss: a false positive of the predicted class."""

    def __init__(self):
        self.accuracy, self.f1 = Accuracy(), MultiLabelF1()

    def update(self, logits: Array, labels: Array, is_pad: Array | None) -> None:
        self.accuracy.update(logits, labels, is_pad)
        keep = _keep(is_pad, len(logits))
        pred, gold = _argmax(logits)[keep], _numpy(labels).astype(np.int64).reshape(-1)[keep]
        classes = np.arange(logits.shape[-1])
        self.f1.add(pred[:, None] == classes, gold[:, None] == classes)

    def update_batch(self, logits: Array, batch, _vocab=None) -> None:
        """An evaluation Batch: its class targets."""
        self.update(logits, batch.targets, batch.is_pad)

    def compute(self) -> dict:
        return {**self.accuracy.compute(), "macro_f1": self.f1.compute()["macro_f1"]}

    def state(self) -> np.ndarray:
        return np.concatenate([self.accuracy.state(), self.f1.state()])

    def merge(self, state: Array) -> None:
        s = _numpy(state).astype(np.float64).reshape(-1)
        self.accuracy.merge(s[:2])
        self.f1.merge(s[2:])


_METRICS = {
    "vqa": lambda: VQAAccuracy("vqa_accuracy"),
    "vizwiz": lambda: VQAAccuracy("vizwiz_accuracy"),
    "snli_ve": Accuracy,
    "mmimdb": MultiLabelF1,
    "answers": lambda: VQAAccuracy("vqa_accuracy"),
    "label": ClassF1,
    "labels": MultiLabelF1,
}

# The metric that selects the best checkpoint of each task.
PRIMARY = {
    "vqa": "vqa_accuracy",
    "vizwiz": "vizwiz_accuracy",
    "snli_ve": "accuracy",
    "mmimdb": "micro_f1",
    "answers": "vqa_accuracy",
    "label": "accuracy",
    "labels": "micro_f1",
}


def metric_for(task: str) -> VQAAccuracy | Accuracy | MultiLabelF1 | ClassF1:
    """A fresh accumulator for a downstream task."""
    if task not in _METRICS:
        raise ValueError(f"no metric for task {task!r}; known: {sorted(_METRICS)}")
    return _METRICS[task]()
