"""Epoch planning: which samples each rank and loader worker reads, in which order.

Everything here is a pure function of (manifests, seed, epoch, consumed, world size, rank):

1. units      every sample (pretraining: one image) or every text of every sample
              (downstream: one question / hypothesis / plot), from the manifests alone;
              optionally a seeded fraction of them (low-resource fine-tuning)
2. order      per source and epoch: shards permuted, then within each window of
              `shuffle_window` shards, runs of `read_span` consecutive units shuffled
              together (seeded); a run is one contiguous read
3. mixing     several sources interleaved by weight in runs (seeded); a source that runs
              out starts over in the same order
4. split      after `consumed` units, batch k of the rest goes to rank k % W; the last round
              is padded with repeats flagged `pad`, so every rank gets the same number of
              batches; rank-local batch j goes to loader worker j % num_workers

Because the epoch's global sequence does not depend on W or on the number of workers, the
state to resume is just (epoch, consumed): after s steps every rank has consumed the first
s * batch * W units, whatever W was, and the rest can be split over any other W'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# columns of a plan entry
SOURCE, SHARD, SAMPLE, TEXT = range(4)


@dataclass
class SourcePlan:
    """What planning needs of one shard set: per-shard sample and text counts."""

    samples: np.ndarray  # int64 [n_shards] samples per shard (0 for an excluded shard)
    texts: list[np.ndarray]  # per shard: int64 [samples] texts per sample
    weight: float = 1.0

    def units(self, per_text: bool) -> np.ndarray:
        """int64 [n, 3] (shard, sample, text); text = -1 when a unit is a whole image."""
        out = []
        for shard, n in enumerate(self.samples):
            if n == 0:
                continue
            sample = np.arange(n, dtype=np.int64)
            if per_text:
                counts = self.texts[shard][:n]
                sample = np.repeat(sample, counts)
                starts = np.cumsum(counts) - counts
                text = np.arange(len(sample), dtype=np.int64) - np.repeat(starts, counts)
            else:
                text = np.full(n, -1, dtype=np.int64)
            out.append(np.stack([np.full(len(sample), shard, dtype=np.int64), sample, text], 1))
        return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.int64)


def subset(units: np.ndarray, fraction: float, seed: int, source: int) -> np.ndarray:
    """The first ceil(fraction x n) units of a seeded permutation, in their original order:
    the same for every epoch, and nested across fractions (5% lies inside 10%)."""
    if fraction >= 1 or len(units) == 0:
        return units
    keep = max(1, int(np.ceil(fraction * len(units))))
    chosen = np.random.default_rng([seed, source, 4]).permutation(len(units))[:keep]
    return units[np.sort(chosen)]


def epoch_order(
    units: np.ndarray, seed: int, epoch: int, source: int, window: int, span: int = 1
) -> np.ndarray:
    """`units` reordered for this epoch: shards permuted, then within each window of
    `window` shards, runs of `span` consecutive units of a shard shuffled together.

    A run is read as one contiguous byte range (one request on object storage); span 1
    shuffles single units (best mixing, one request per sample)."""
    if len(units) == 0:
        return units
    shards = np.unique(units[:, 0])
    perm = np.random.default_rng([seed, epoch, source, 0]).permutation(shards)
    rank_of_shard = np.empty(shards.max() + 1, dtype=np.int64)
    rank_of_shard[perm] = np.arange(len(perm))
    # stable sort by the shard's position in the permutation keeps each shard's units
    # together and in their order within the shard
    by_shard = units[np.argsort(rank_of_shard[units[:, 0]], kind="stable")]
    window_of = rank_of_shard[by_shard[:, 0]] // window
    idx = np.arange(len(by_shard))
    new_shard = np.r_[True, by_shard[1:, 0] != by_shard[:-1, 0]]
    first_of_shard = np.maximum.accumulate(np.where(new_shard, idx, 0))
    run_in_shard = (idx - first_of_shard) // span
    run_id = np.cumsum(np.r_[True, (run_in_shard[1:] != run_in_shard[:-1]) | new_shard[1:]]) - 1
    out = np.empty_like(by_shard)
    bounds = np.flatnonzero(np.diff(window_of)) + 1
    for w, (lo, hi) in enumerate(zip([0, *bounds], [*bounds, len(by_shard)], strict=True)):
        runs = run_id[lo:hi] - run_id[lo]
        key = np.random.default_rng([seed, epoch, source, 1, w]).permutation(runs[-1] + 1)
        out[lo:hi] = by_shard[lo:hi][np.argsort(key[runs], kind="stable")]
    return out


def global_sequence(
    orders: list[np.ndarray],
    weights: list[float],
    seed: int,
    epoch: int,
    length: int | None,
    span: int = 1,
) -> np.ndarray:
    """int64 [L, 4] (source, shard, sample, text): the epoch's units, sources mixed by
    weight in runs of `span` units (so that a source's runs stay contiguous)."""
    sizes = [len(o) for o in orders]
    if length is None:
        length = sum(sizes)
    if len(orders) == 1:
        src = np.zeros(length, dtype=np.int64)
    else:
        p = np.asarray(weights, dtype=np.float64) * (np.asarray(sizes) > 0)
        rng = np.random.default_rng([seed, epoch, 2])
        pick = rng.choice(len(orders), size=-(-length // span), p=p / p.sum())
        src = np.repeat(pick, span)[:length]
    seq = np.empty((length, 4), dtype=np.int64)
    seq[:, SOURCE] = src
    for i, order in enumerate(orders):
        where = np.flatnonzero(src == i)
        if len(where):
            seq[where, 1:] = order[np.arange(len(where)) % len(order)]
    return seq


@dataclass
class RankPlan:
    """One rank's share of the rest of an epoch, as whole batches."""

    entries: np.ndarray  # int64 [steps, batch, 4]
    positions: np.ndarray  # int64 [steps, batch]: index in the epoch's global sequence
    pad: np.ndarray  # bool [steps, batch]: repeats that only balance the ranks

    @property
    def steps(self) -> int:
        return len(self.entries)


def split(seq: np.ndarray, consumed: int, batch: int, world: int, rank: int) -> RankPlan:
    """Rank `rank`'s batches of `seq[consumed:]`; every rank gets the same number."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    rest = seq[consumed:]
    pos = np.arange(consumed, len(seq), dtype=np.int64)
    per_step = batch * world
    steps = -(-len(rest) // per_step)
    total = steps * per_step
    pad = np.zeros(total, dtype=bool)
    if total > len(rest):  # balance: repeat units from the start of the rest, flagged
        extra = total - len(rest)
        pad[len(rest) :] = True
        rest = np.concatenate([rest, np.resize(rest, (extra, 4))])
        pos = np.concatenate([pos, np.resize(pos, extra)])
    shape = (steps * world, batch)
    mine = slice(rank, None, world)
    return RankPlan(
        entries=rest.reshape(*shape, 4)[mine],
        positions=pos.reshape(shape)[mine],
        pad=pad.reshape(shape)[mine],
    )


def worker_steps(steps: int, worker: int, num_workers: int) -> range:
    """Rank-local batch indices of one loader worker; the DataLoader takes one batch from
    each worker in turn, which puts them back in plan order."""
    return range(worker, steps, max(num_workers, 1))
