"""Pretraining masking: rates within tolerance over many draws, invariants, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from vlpdist.data.masking import itm_flags, mask_regions, mask_tokens, pick_negative

V, MASK, CLS, SEP, PAD = 1000, 103, 101, 102, 0
SPECIALS = (PAD, 100, CLS, SEP, MASK)


def sequence(rng, length=40):
    """[CLS] words [SEP] with padding: only the words are maskable."""
    words = rng.integers(200, V, size=length - 10)
    ids = np.concatenate([[CLS], words, [SEP], np.full(8, PAD)]).astype(np.int64)
    maskable = np.zeros(length, dtype=bool)
    maskable[1 : 1 + words.size] = True
    return ids, maskable


def run_tokens(seed=0, samples=700):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        ids, maskable = sequence(rng)
        new, labels = mask_tokens(
            ids, maskable, rng, vocab_size=V, mask_id=MASK, special_ids=SPECIALS
        )
        out.append((ids, maskable, new, labels))
    return out


def test_mask_token_rates_and_invariants():
    runs = run_tokens()  # 700 x 30 = 21k maskable tokens
    ids, maskable, new, labels = (np.concatenate(x) for x in zip(*runs, strict=True))
    selected = labels != -100
    assert not selected[~maskable].any()  # specials and padding never selected
    assert (new[~selected] == ids[~selected]).all()  # untouched where not selected
    assert (labels[selected] == ids[selected]).all()  # labels are the original ids
    assert labels.dtype == np.int64 and new.dtype == ids.dtype

    rate = selected.sum() / maskable.sum()
    assert rate == pytest.approx(0.15, abs=0.01)
    n = selected.sum()
    masked = (new[selected] == MASK).mean()
    kept = (new[selected] == ids[selected]).mean()
    randomised = 1.0 - masked - kept  # a random draw can equal the original: rare (1/995)
    assert masked == pytest.approx(0.8, abs=0.025), n
    assert randomised == pytest.approx(0.1, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)
    replaced = new[selected & (new != ids) & (new != MASK)]
    assert not np.isin(replaced, SPECIALS).any()


def test_random_tokens_avoid_specials_and_cover_the_rest():
    # A tiny vocabulary where specials are half of it: random tokens must never be special
    # and must reach every other id, including those above and between the specials.
    rng = np.random.default_rng(1)
    specials = (0, 2, 5, 7)
    ids = np.full(400, 9, dtype=np.int32)
    seen = set()
    for _ in range(300):
        new, labels = mask_tokens(
            ids, np.ones(400, bool), rng, vocab_size=8, mask_id=2, prob=1.0,
            special_ids=specials,
        )  # fmt: skip
        assert (labels == 9).all()
        seen |= set(new[new != 2].tolist()) - {9}
    assert seen == {1, 3, 4, 6}


def test_mask_tokens_does_not_modify_input_and_is_deterministic():
    ids, maskable = sequence(np.random.default_rng(3))
    before = ids.copy()
    a = mask_tokens(ids, maskable, np.random.default_rng(7), vocab_size=V, mask_id=MASK)
    b = mask_tokens(ids, maskable, np.random.default_rng(7), vocab_size=V, mask_id=MASK)
    c = mask_tokens(ids, maskable, np.random.default_rng(8), vocab_size=V, mask_id=MASK)
    assert (ids == before).all()
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not all((x == y).all() for x, y in zip(a, c, strict=True))


def test_at_least_one_token_selected():
    ids = np.array([CLS, 500, 501, SEP])
    maskable = np.array([False, True, True, False])
    for seed in range(200):
        _, labels = mask_tokens(
            ids, maskable, np.random.default_rng(seed), vocab_size=V, mask_id=MASK, prob=1e-9
        )
        sel = np.flatnonzero(labels != -100)
        assert sel.size == 1 and sel[0] in (1, 2)
    # Nothing maskable, or prob 0 (masking off): nothing selected, no error.
    _, labels = mask_tokens(ids, np.zeros(4, bool), np.random.default_rng(0), vocab_size=V,
                            mask_id=MASK)  # fmt: skip
    assert (labels == -100).all()
    _, labels = mask_tokens(ids, maskable, np.random.default_rng(0), vocab_size=V,
                            mask_id=MASK, prob=0.0)  # fmt: skip
    assert (labels == -100).all()


def test_mask_tokens_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        mask_tokens(np.zeros(3), np.zeros(4, bool), np.random.default_rng(), vocab_size=V,
                    mask_id=MASK)  # fmt: skip
    with pytest.raises(ValueError, match="prob"):
        mask_tokens(np.zeros(3), np.ones(3, bool), np.random.default_rng(), vocab_size=V,
                    mask_id=MASK, prob=1.5)  # fmt: skip


def test_mask_regions_rates_and_invariants():
    rng = np.random.default_rng(0)
    sel_all, zero_all, valid_all = [], [], []
    for _ in range(600):  # 600 x 36 regions, 30 valid each: 18k valid regions
        feats = rng.standard_normal((36, 16)).astype(np.float16) + np.float16(3)
        valid = np.arange(36) < 30
        before = feats.copy()
        new, selected = mask_regions(feats, valid, rng)
        assert (feats == before).all()  # not modified in place
        assert new.dtype == feats.dtype and new.shape == feats.shape
        assert selected.dtype == bool and not selected[~valid].any()
        zeroed = (new == 0).all(axis=1)
        assert not zeroed[~selected].any()
        assert (new[selected & ~zeroed] == feats[selected & ~zeroed]).all()
        sel_all.append(selected)
        zero_all.append(zeroed)
        valid_all.append(valid)
    selected, zeroed = np.concatenate(sel_all), np.concatenate(zero_all)
    assert selected.sum() / np.concatenate(valid_all).sum() == pytest.approx(0.15, abs=0.01)
    assert zeroed[selected].mean() == pytest.approx(0.9, abs=0.025)


def test_mask_regions_deterministic_and_at_least_one():
    feats = np.ones((10, 4), np.float32)
    valid = np.zeros(10, bool)
    valid[[2, 7]] = True
    a = mask_regions(feats, valid, np.random.default_rng(5), prob=1e-9)
    b = mask_regions(feats, valid, np.random.default_rng(5), prob=1e-9)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    for seed in range(100):
        _, selected = mask_regions(feats, valid, np.random.default_rng(seed), prob=1e-9)
        assert selected.sum() == 1 and selected[[2, 7]].any()
    _, selected = mask_regions(feats, np.zeros(10, bool), np.random.default_rng(0))
    assert not selected.any()
    with pytest.raises(ValueError):
        mask_regions(feats, np.ones(9, bool), np.random.default_rng(0))


def test_pick_negative_never_self_and_uniform():
    rng = np.random.default_rng(0)
    n, i, draws = 5, 2, 20_000
    picks = np.array([pick_negative(n, i, rng) for _ in range(draws)])
    assert (picks != i).all() and picks.min() >= 0 and picks.max() < n
    freq = np.bincount(picks, minlength=n) / draws
    np.testing.assert_allclose(np.delete(freq, i), 0.25, atol=0.015)
    assert pick_negative(2, 0, rng) == 1 and pick_negative(2, 1, rng) == 0
    with pytest.raises(ValueError):
        pick_negative(1, 0, rng)
    with pytest.raises(ValueError):
        pick_negative(4, 4, rng)


def test_itm_flags_rate():
    flags = itm_flags(20_000, np.random.default_rng(0))
    assert flags.dtype == bool and flags.shape == (20_000,)
    assert flags.mean() == pytest.approx(0.5, abs=0.015)
    assert not itm_flags(100, np.random.default_rng(0), prob=0.0).any()
    assert itm_flags(100, np.random.default_rng(0), prob=1.0).all()
    same = itm_flags(50, np.random.default_rng(9)) == itm_flags(50, np.random.default_rng(9))
    assert same.all()


def test_content_words_are_masked_whole_and_stop_words_never():
    from vlpdist.data.masking import STOP_WORDS, content_words, whole_words

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "of", ".", "pink", "chair",
             "surf", "##board", "and", "the", "green", "pizza"]  # fmt: skip
    ids = np.array([[2, 5, 8, 9, 12, 5, 10, 11, 7, 3], [2, 13, 14, 15, 6, 5, 10, 11, 3, 0]])
    att = (ids != 0).astype(bool)
    piece = ids == words.index("##board")
    function = np.isin(ids, [i for i, w in enumerate(words) if w in STOP_WORDS or w == "."])
    eligible = att & ~np.isin(ids, [0, 1, 2, 3, 4])
    starts = content_words(eligible, ~function, piece)
    assert [[words[i] for i in row[m]] for row, m in zip(ids, starts, strict=True)] == [
        ["pink", "chair", "surf"], ["green", "pizza", "surf"]]  # fmt: skip
    rng = np.random.default_rng(0)
    seen = np.zeros_like(ids, dtype=bool)
    for _ in range(200):  # every eligible start gets masked sometimes, with its pieces
        new, labels = mask_tokens(ids, starts, rng, vocab_size=len(words), mask_id=4,
                                  prob=0.5, special_ids=[0, 1, 2, 3, 4], grow=piece & eligible)  # fmt: skip
        sel = labels != -100
        assert not (sel & function).any() and not (sel & ~att).any()
        assert ((sel & piece) == (np.roll(sel, 1, axis=1) & piece)).all()  # "##board" with "surf"
        seen |= sel
    assert (seen == (starts | (piece & eligible))).all()
    # the synthetic world's tokenizer has no continuation pieces: whole_words changes nothing
    assert (whole_words(starts, np.zeros_like(piece), eligible) == starts).all()
