"""Pretraining corruption: masked language modelling, masked region modelling and
image-text mismatch draws, for one sample or a whole batch at once (leading axes are rows).

Pure functions on numpy arrays; all randomness comes from the `np.random.Generator`
passed in, so a loader that seeds one generator per batch of the epoch's fixed plan
replays exactly the same masks after a resume. Inputs are never modified in place.

"At least one" rule: when the Bernoulli draw selects nothing in a row but something could
have been selected, one eligible position of that row is selected uniformly at random. Short captions
(~10 tokens at 15%) would otherwise contribute no MLM loss about a fifth of the time,
and an all -100 label row makes a per-sample mean loss undefined. BERT implementations
commonly ensure this (UNITER / VL-BERT style); it lifts the effective rate slightly
above `prob` for short inputs only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index
MASK_FRACTION = 0.8  # of selected tokens: replaced by the mask token
RANDOM_FRACTION = 0.1  # of selected tokens: replaced by a random token; the rest are kept


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


def _select(eligible: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli(prob) over eligible positions, plus the at-least-one rule per row (last
    axis), off at prob 0, which is how a caller disables masking (e.g. for evaluation).
    The generator advances by the same amount whatever gets selected."""
    selected = (rng.random(eligible.shape) < prob) & eligible
    keys = rng.random(eligible.shape)  # a uniform eligible position per row, for the rule
    if prob > 0.0:
        rows_sel = selected.reshape(-1, eligible.shape[-1])
        rows_ok = eligible.reshape(-1, eligible.shape[-1])
        need = rows_ok.any(-1) & ~rows_sel.any(-1)
        if need.any():
            pick = np.where(rows_ok, keys.reshape(rows_ok.shape), -1.0).argmax(-1)
            rows_sel[np.flatnonzero(need), pick[need]] = True
    return selected


def _random_tokens(
    count: int, vocab_size: int, specials: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """`count` ids uniform over [0, vocab_size) minus `specials` (sorted, unique, in range).

    Draw from a range shortened by the number of specials, then step over each special in
    ascending order: the k-th draw becomes the k-th allowed id. Costs O(#specials) instead
    of materialising a vocabulary-sized array per sample."""
    allowed = vocab_size - specials.size
    if allowed <= 0:
        raise ValueError("every token id is special: nothing to draw a random token from")
    out = rng.integers(0, allowed, size=count, dtype=np.int64)
    for s in specials:
        out += out >= s
    return out


def mask_tokens(
    ids: np.ndarray,
    maskable: np.ndarray,
    rng: np.random.Generator,
    *,
    vocab_size: int,
    mask_id: int,
    prob: float = 0.15,
    special_ids: Sequence[int] = (),
    grow: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masked language modelling on token sequences `ids` [..., T].

    Each position with `maskable` True is selected with probability `prob` (the caller
    marks special tokens and padding not maskable); of the selected, 80% become `mask_id`,
    10% a random id in [0, vocab_size) outside `special_ids`, 10% stay as they are.
    Returns (new ids, same dtype as `ids`; labels int64: the original id where selected,
    -100 elsewhere), plus the at-least-one rule of the module docstring. With `grow` (bool,
    True at WordPiece continuation pieces), each selected position's word is masked whole.
    """
    ids = np.asarray(ids)
    maskable = np.asarray(maskable, dtype=bool)
    if ids.shape != maskable.shape:
        raise ValueError(f"ids {ids.shape} and maskable {maskable.shape} differ in shape")
    _check_prob("prob", prob)
    specials = np.unique(np.asarray(special_ids, dtype=np.int64))
    specials = specials[(specials >= 0) & (specials < vocab_size)]

    selected = _select(maskable, prob, rng)
    if grow is not None:  # whole words: the selected starts take their continuation pieces
        selected = whole_words(selected, grow, np.ones_like(selected))
    # One uniform draw per position decides mask / random / keep, drawn for every position
    # so the generator advances by the same amount whatever got selected.
    u = rng.random(ids.shape)
    to_mask = selected & (u < MASK_FRACTION)
    to_random = selected & (u >= MASK_FRACTION) & (u < MASK_FRACTION + RANDOM_FRACTION)

    new_ids = ids.copy()
    new_ids[to_mask] = mask_id
    new_ids[to_random] = _random_tokens(int(to_random.sum()), vocab_size, specials, rng)
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    labels[selected] = ids[selected]
    return new_ids, labels


# English function words: what `data.mlm_words: content` never masks. A list, not the
# annotations: on real captions it leaves the object, attribute, count and action words.
_STOP = (
    "a an the this that these those there here is are was were be been being am it its "
    "of in on at to from by with for as into onto over under near next and or but "
    "some any each every another other such very too also not no yes do does did has have "
    "had can could will would should may might i you he she we they me him her us them my "
    "your his our their what which who whom whose where when why how"
)
STOP_WORDS = frozenset(_STOP.split())


def content_words(eligible: np.ndarray, content: np.ndarray, piece: np.ndarray) -> np.ndarray:
    """Where MLM may start a mask under `data.mlm_words: content`: eligible tokens that
    begin a content word (`content`: not a stop word or punctuation; `piece`: a WordPiece
    continuation such as '##s', never a start)."""
    return eligible & content & ~piece


def whole_words(selected: np.ndarray, piece: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Grow each selected word start over its continuation pieces, so a word is masked
    whole (its pieces cannot be guessed from each other)."""
    out = selected.copy()
    for t in range(1, out.shape[-1]):
        out[..., t] |= out[..., t - 1] & piece[..., t] & eligible[..., t]
    return out


def mask_regions(
    feats: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator,
    *,
    prob: float = 0.15,
    zero_prob: float = 0.9,
) -> tuple[np.ndarray, np.ndarray]:
    """Masked region modelling on regions `feats` [..., N, D] (one image or a batch).

    Each valid region is selected with probability `prob`; a selected region's features
    are zeroed with probability `zero_prob`, else left as they are (the analogue of BERT's
    10% keep, so the model cannot learn that only zero vectors are ever predicted).
    Returns (a copy of feats with the zeroing applied, selected bool [..., N]). The caller
    builds the targets at selected regions: the detector's `cls_prob` for the KL loss and
    the original features for regression. At-least-one rule as for tokens.
    """
    feats = np.asarray(feats)
    valid = np.asarray(valid, dtype=bool)
    if feats.ndim < 2 or valid.shape != feats.shape[:-1]:
        raise ValueError(f"valid {valid.shape} does not match regions of feats {feats.shape}")
    selected, zeroed = select_regions(valid, rng, prob=prob, zero_prob=zero_prob)
    new_feats = feats.copy()
    new_feats[zeroed] = 0
    return new_feats, selected


def select_regions(
    valid: np.ndarray, rng: np.random.Generator, *, prob: float = 0.15, zero_prob: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """The draws of `mask_regions` without touching features: (selected, zeroed) bool
    [..., N]. A batch collator copies the regression targets `feats[selected]` and then
    zeroes `feats[zeroed]` in its own buffer, instead of copying every feature."""
    _check_prob("prob", prob)
    _check_prob("zero_prob", zero_prob)
    selected = _select(np.asarray(valid, dtype=bool), prob, rng)
    return selected, selected & (rng.random(selected.shape) < zero_prob)


def pick_negative(n: int, i: int, rng: np.random.Generator) -> int:
    """An index j != i, uniform over [0, n): whose text sample i borrows for a mismatched
    image-text pair (another image of the same batch)."""
    if n < 2:
        raise ValueError(f"a negative needs at least 2 samples in the batch, got {n}")
    if not 0 <= i < n:
        raise ValueError(f"index {i} outside [0, {n})")
    # Draw from the n - 1 others and shift past i: uniform with no rejection loop.
    j = int(rng.integers(0, n - 1))
    return j + 1 if j >= i else j


def itm_flags(n: int, rng: np.random.Generator, prob: float = 0.5) -> np.ndarray:
    """Bool [n]: True makes that sample a mismatched (negative) image-text pair."""
    _check_prob("prob", prob)
    return rng.random(n) < prob
