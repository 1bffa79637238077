"""VQA answers on the loader's side: soft scores, official accuracy and the vocabulary of a
stored answers document. Normalisation and answer counting live with the shard schema
(vlpdist.shards.answers), which writes the document this module reads.

Soft scores are the official accuracy averaged over the n leave-one-out annotator subsets,
the target the bottom-up-attention / Pythia / MMF VQA heads are trained against.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

from vlpdist.shards.answers import NORMALIZATION, normalize_answer, vocab_from_counts

ANSWERS_FILE = "answers.json"  # stored next to a dataset's shards


def _loo_accuracy(matches: int, n: int) -> float:
    """Official accuracy of an answer given by `matches` of `n` annotators: min(#matches/3, 1)
    averaged over the n subsets that leave one annotator out. Leaving out a matching
    annotator leaves matches-1, any other leaves matches. n = 1 gives 0 (empty subset)."""
    if n <= 0 or matches <= 0:
        return 0.0
    hit = matches * min((matches - 1) / 3.0, 1.0)
    miss = (n - matches) * min(matches / 3.0, 1.0)
    return (hit + miss) / n


def soft_scores(
    answers: list[str], vocab_index: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse soft target of one question: (vocab indices int64 ascending, scores float32).

    n is the number of human answers, including any outside the vocabulary: their score
    mass is dropped (as in MMF), never renormalised onto the answers that remain."""
    n = len(answers)
    counts = Counter(normalize_answer(a) for a in answers)
    pairs = sorted(
        (vocab_index[a], _loo_accuracy(c, n)) for a, c in counts.items() if a in vocab_index
    )
    pairs = [(i, s) for i, s in pairs if s > 0.0]
    idx = np.fromiter((i for i, _ in pairs), dtype=np.int64, count=len(pairs))
    scores = np.fromiter((s for _, s in pairs), dtype=np.float32, count=len(pairs))
    return idx, scores


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    """Official per-question VQA accuracy of a prediction against the human answers."""
    p = normalize_answer(pred)
    return _loo_accuracy(sum(normalize_answer(a) == p for a in answers), len(answers))


def vocab_from_doc(doc: dict, min_count: int) -> list[str]:
    """The vocabulary of a stored answers document. A document normalised another way
    would silently mismatch every lookup, so it is refused."""
    if doc.get("normalization") != NORMALIZATION:
        raise ValueError(
            f"answers document normalised with {doc.get('normalization')!r}, "
            f"expected {NORMALIZATION!r}"
        )
    counts = doc.get("counts")
    if not isinstance(counts, dict):
        raise ValueError("answers document has no 'counts' mapping")
    return vocab_from_counts(counts, min_count)
