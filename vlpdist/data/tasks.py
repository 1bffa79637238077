"""What each task is to the data layer, one row per `data.task`: what a unit of the epoch
is, where its label vocabulary comes from, and what a text's target is. The loader and the
collator read their row once, when they are built; a new task is a new row here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vlpdist.config import DataConfig
from vlpdist.data.answers import soft_scores
from vlpdist.data.index import answer_vocab, name_vocab
from vlpdist.data.masking import IGNORE_INDEX
from vlpdist.shards.schema import SNLI_LABELS
from vlpdist.storage import Storage


@dataclass(frozen=True)
class DataTask:
    per_text: bool
    """A unit of the epoch is one text (every question counts); else one image, of which
    one text is drawn each epoch (pretraining: the image is the sample)."""
    objectives: bool = False
    """Batches carry the pretraining objectives: MLM/MRM masks, image-text pairs, VQA-P
    answers as a second segment. Only these batches need detector classes."""
    vocab: Callable[[Storage, str, DataConfig], list[str]] | None = None
    """The label vocabulary, from the shard set at that URL; None: the task has none."""
    targets: Callable[[list[dict], dict[str, int]], np.ndarray] | None = None
    """Each text's target row, from the texts and the vocabulary's index; None: no
    `targets` (pretraining learns from its masks, a caption is its own target)."""
    answers: bool = False
    """Batches keep each text's human answers: the VQA metric scores against them."""


def _answers(storage: Storage, url: str, cfg: DataConfig) -> list[str]:
    return answer_vocab(storage, url, cfg.answer_min_count)


def _names(key: str) -> Callable[[Storage, str, DataConfig], list[str]]:
    """The names counted under `key` in labels.json, as the vocabulary."""
    return lambda storage, url, _cfg: name_vocab(storage, url, key)


def _soft_scores(texts: list[dict], index: dict[str, int]) -> np.ndarray:
    scores = np.zeros((len(texts), len(index)), dtype=np.float32)
    for i, t in enumerate(texts):
        idx, val = soft_scores(t.get("answers") or [], index)
        scores[i, idx] = val
    return scores


def _snli_label(texts: list[dict], _index: dict[str, int]) -> np.ndarray:
    return np.array([SNLI_LABELS.index(t["label"]) for t in texts], dtype=np.int64)


def _class(texts: list[dict], index: dict[str, int]) -> np.ndarray:
    """A JSON-lines `label` task's class index; IGNORE_INDEX for a class the vocabulary (the
    train split's) lacks: no logit to learn it from, a miss when scored."""
    return np.array([index.get(t.get("label"), IGNORE_INDEX) for t in texts], dtype=np.int64)


def _multi_hot(key: str) -> Callable[[list[dict], dict[str, int]], np.ndarray]:
    """Multi-hot rows of the names in each text's `key` field (names outside the vocabulary
    have no column)."""

    def targets(texts: list[dict], index: dict[str, int]) -> np.ndarray:
        hot = np.zeros((len(texts), len(index)), dtype=np.float32)
        for i, t in enumerate(texts):
            for g in t.get(key) or []:
                if g in index:
                    hot[i, index[g]] = 1.0
        return hot

    return targets


_VQA = DataTask(per_text=True, vocab=_answers, targets=_soft_scores, answers=True)
TASKS = {
    "pretrain": DataTask(per_text=False, objectives=True),
    "caption": DataTask(per_text=True),
    "vqa": _VQA,
    "vizwiz": _VQA,
    "snli_ve": DataTask(per_text=True, targets=_snli_label),
    "mmimdb": DataTask(per_text=True, vocab=_names("genres"), targets=_multi_hot("genres")),
    # your own task as JSON lines (shards/sources/jsonl.py): VQA-style answers, one class,
    # several classes
    "answers": _VQA,
    "label": DataTask(per_text=True, vocab=_names("label"), targets=_class),
    "labels": DataTask(per_text=True, vocab=_names("labels"), targets=_multi_hot("labels")),
}
