"""Collation: decoded samples → one typed `Batch` (texts packed, regions padded, masking
for pretraining, task targets for downstream).

Every random choice (which caption, which answer, MLM/MRM masks, image-text negatives)
comes from one generator per batch, seeded by (seed, epoch, the batch's first position in
the epoch's global sequence). Batches are fixed units of the plan, so this never depends on
the worker or rank that builds one: the same seed and epoch give the same batches whatever
the number of loader workers or ranks. One generator per batch (not per sample) lets the
masking run vectorised over the whole batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from vlpdist.config import DataConfig
from vlpdist.data.decode import Decoded
from vlpdist.data.index import TokenInfo
from vlpdist.data.masking import (
    content_words,
    itm_flags,
    mask_tokens,
    pick_negative,
    select_regions,
)
from vlpdist.data.plan import TEXT
from vlpdist.data.tasks import TASKS

IGNORE = -100


def _text_id(t: dict):
    return t.get("question_id", t.get("pair_id", t.get("text_id", t.get("_index"))))


@dataclass
class Batch:
    """What data hands to models: keyword tensors, [B, ...] on the first axis.

    Optional fields are None when the task has no use for them. `is_pad` marks repeats that
    only balance the ranks: losses and metrics must ignore them."""

    input_ids: torch.Tensor  # int64 [B, T]
    token_type_ids: torch.Tensor  # int64 [B, T]
    attention_mask: torch.Tensor  # int64 [B, T], 1 = real token
    feats: torch.Tensor  # float16 [B, R, D] (masked regions zeroed in pretraining)
    boxes: torch.Tensor  # float32 [B, R, 4] x1, y1, x2, y2 in [0, 1]
    region_mask: torch.Tensor  # int64 [B, R], 1 = real region
    is_pad: torch.Tensor  # bool [B]
    source: torch.Tensor  # int64 [B] index of the data source
    keys: list[str]  # sample keys (image) for tracing
    text_ids: list  # question_id / pair_id / text_id / the text's index per sample
    mlm_labels: torch.Tensor | None = None  # int64 [B, T], -100 = not predicted
    mrm_mask: torch.Tensor | None = None  # bool [B, R] regions to reconstruct
    mrm_feats: torch.Tensor | None = None  # float16 [M, D] original features of the M
    # selected regions, in the row-major order of mrm_mask (feats[mrm_mask] before zeroing)
    mrm_cls: torch.Tensor | None = None  # float16 [M, C] their detector distributions
    itm_labels: torch.Tensor | None = None  # int64 [B], 1 = the text is the image's own
    targets: torch.Tensor | None = None  # vqa/vizwiz/answers: float32 [B, A] soft scores;
    # snli_ve, label: int64 [B]; mmimdb, labels: float32 [B, G] multi-hot
    answers: list | None = None  # vqa/vizwiz: each question's human answers (the official
    # accuracy scores the prediction against them, not against the vocabulary's soft scores)

    def to(self, device) -> Batch:
        """On `device`, asynchronously from pinned memory (regions stay float16: they are
        cast where the model uses them, on the device)."""
        return self._map(lambda v: v.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """In page-locked memory, so that `to(cuda)` copies asynchronously (what DataLoader's
        pin_memory calls on a custom batch type)."""
        return self._map(lambda v: v.pin_memory())

    def _map(self, fn) -> Batch:
        return Batch(**{
            f.name: fn(v) if isinstance(v, torch.Tensor) else v
            for f in dataclasses.fields(self) for v in [getattr(self, f.name)]
        })  # fmt: skip

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class Collator:
    def __init__(
        self,
        cfg: DataConfig,
        tok: TokenInfo,
        feature_dim: int,
        cls_dim: int | None,
        labels: list[str] | None = None,
    ):
        self.cfg, self.tok, self.dim, self.cls_dim = cfg, tok, feature_dim, cls_dim
        self.task = TASKS[cfg.task]
        self.labels = labels or []
        self.label_index = {a: i for i, a in enumerate(self.labels)}
        self.mask_s = 0.0  # seconds spent masking (telemetry reads and resets it)

    def __call__(
        self,
        items: list[Decoded],
        entries: np.ndarray,
        positions: np.ndarray,
        pad: np.ndarray,
        source: np.ndarray,
        epoch: int,
        regions: tuple | None = None,
    ) -> Batch:
        cfg, b = self.cfg, len(items)
        rng = np.random.default_rng([cfg.seed, epoch, int(positions[0]), 3])
        texts = [self._text(d, int(e[TEXT]), rng) for d, e in zip(items, entries, strict=True)]
        itm = None
        if self.task.objectives and cfg.itm_prob > 0 and b > 1:
            flags = itm_flags(b, rng, cfg.itm_prob)
            texts = [texts[pick_negative(b, i, rng)] if flags[i] else texts[i] for i in range(b)]
            itm = (~flags).astype(np.int64)
        ids, types, att = self._pack(texts)
        feats, boxes, rmask = regions if regions is not None else self.regions(items)
        out = dict(
            input_ids=ids, token_type_ids=types, attention_mask=att,
            boxes=boxes, region_mask=rmask, is_pad=pad.astype(bool), source=source,
        )  # fmt: skip
        if self.task.objectives:
            t0 = time.perf_counter()
            self._mask(out, ids, att, feats, rmask, items, itm, rng)
            self.mask_s += time.perf_counter() - t0
        elif self.task.targets:
            out["targets"] = self.task.targets(texts, self.label_index)
        out["feats"] = feats
        # texts trimmed to the batch's longest (the regions were allocated so): a step
        # costs what the batch holds, not max_text_tokens x max_regions
        t = _round_up(int(att.sum(1).max()), self.cfg.max_text_tokens)
        for k in ("input_ids", "token_type_ids", "attention_mask", "mlm_labels"):
            if k in out:
                out[k] = out[k][:, :t]
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
        return Batch(
            **tensors,
            keys=[d.key for d in items],
            text_ids=[_text_id(t) for t in texts],
            answers=[list(t.get("answers") or []) for t in texts] if self.task.answers else None,
        )

    # -- texts
    def _text(self, d: Decoded, text_index: int, rng: np.random.Generator) -> dict:
        all_texts = d.meta["texts"]
        j = int(rng.integers(len(all_texts))) if text_index < 0 else text_index
        t = dict(all_texts[j])
        t["_index"] = j
        if self.task.objectives and t.get("answer_ids"):
            t["_pair"] = t["answer_ids"][int(rng.integers(len(t["answer_ids"])))]
        return t

    def _pack(self, texts: list[dict]) -> tuple[np.ndarray, ...]:
        tok, t_max = self.tok, self.cfg.max_text_tokens
        ids = np.full((len(texts), t_max), tok.pad, dtype=np.int64)
        types = np.zeros_like(ids)
        att = np.zeros_like(ids)
        for i, t in enumerate(texts):
            second = list(t.get("_pair") or [])[: max(0, t_max - 4)]
            room = t_max - 2 - (len(second) + 1 if second else 0)
            seq = [tok.cls, *t["ids"][:room], tok.sep]
            seg = [0] * len(seq)
            if second:  # VQA-P: question [SEP] answer [SEP], the answer as segment 1
                seq += [*second, tok.sep]
                seg += [1] * (len(second) + 1)
            ids[i, : len(seq)] = seq
            types[i, : len(seg)] = seg
            att[i, : len(seq)] = 1
        return ids, types, att

    # -- regions
    def regions(self, items: list[Decoded], pool=None) -> tuple[np.ndarray, ...]:
        """Padded batch buffers (feats, boxes, region mask) of `items`. The detector class
        distributions are not copied here: only the masked regions' rows are gathered.
        With a thread `pool`, halves of the batch are copied concurrently (numpy releases
        the GIL while copying): the copy is most of a batch's bytes."""
        b = len(items)
        if self.cfg.text_only:  # the control without an image: one masked, empty slot
            return (np.zeros((b, 1, self.dim), np.float16), np.zeros((b, 1, 4), np.float32),
                    np.zeros((b, 1), np.int64))  # fmt: skip
        r = _round_up(max(len(d.feats) for d in items), self.cfg.max_regions)
        # empty, not zeros: a fresh zeroed buffer is written twice (page faults on zero
        # pages, then the copy); only each row's padding tail is zeroed below
        feats = np.empty((b, r, self.dim), dtype=np.float16)
        boxes = np.zeros((b, r, 4), dtype=np.float32)
        mask = np.zeros((b, r), dtype=np.int64)

        def copy(rows: range) -> None:
            for i in rows:
                d = items[i]
                n = min(len(d.feats), r)
                feats[i, :n] = d.feats[:n]
                feats[i, n:] = 0
                boxes[i, :n] = d.boxes[:n]
                mask[i, :n] = 1

        if pool is None or b < 2:
            copy(range(b))
        else:
            list(pool.map(copy, (range(0, b // 2), range(b // 2, b))))
        return feats, boxes, mask

    # -- pretraining objectives
    def _mask(self, out, ids, att, feats, rmask, items, itm, rng) -> None:
        """MLM and MRM for the whole batch at once; a mismatched pair (ITM negative) gets
        neither, it teaches matching only (as ViLBERT does)."""
        cfg, tok = self.cfg, self.tok
        matched = np.ones(len(ids), dtype=bool) if itm is None else itm == 1
        maskable = (att == 1) & ~np.isin(ids, tok.special) & matched[:, None]
        grow = None
        if cfg.mlm_words == "content":  # whole content words, never "a", "of" or "."
            piece = np.isin(ids, tok.pieces)
            grow = piece & maskable
            maskable = content_words(maskable, ~np.isin(ids, tok.function), piece)
        labels = np.full_like(ids, IGNORE)
        if cfg.mlm_prob > 0:
            ids[:], labels = mask_tokens(
                ids, maskable, rng, vocab_size=tok.vocab_size, mask_id=tok.mask,
                prob=cfg.mlm_prob, special_ids=tok.special, grow=grow,
            )  # fmt: skip
        mrm = np.zeros(rmask.shape, dtype=bool)
        originals = feats[:0].reshape(0, feats.shape[-1])
        if cfg.mrm_prob > 0:
            # drawn over max_regions whatever the batch's trimmed width: the same draws
            # with or without trimming (regions past the width are never valid)
            valid = np.zeros((len(rmask), max(cfg.max_regions, rmask.shape[1])), dtype=bool)
            valid[:, : rmask.shape[1]] = (rmask == 1) & matched[:, None]
            mrm, zeroed = select_regions(valid, rng, prob=cfg.mrm_prob, zero_prob=cfg.mrm_zero_prob)
            mrm, zeroed = mrm[:, : rmask.shape[1]], zeroed[:, : rmask.shape[1]]
            originals = feats[mrm]  # a copy of the selected rows only: the regression targets
            feats[zeroed] = 0  # our own batch buffer
        out["mlm_labels"] = labels
        out["mrm_mask"] = mrm
        out["mrm_feats"] = originals
        if self.cls_dim:
            cls = np.zeros((int(mrm.sum()), self.cls_dim), dtype=np.float16)
            k = 0
            for i, d in enumerate(items):  # row-major order of mrm, one slice per sample
                rows = np.flatnonzero(mrm[i])
                if d.cls_prob is not None:
                    cls[k : k + len(rows)] = d.cls_prob[rows]
                k += len(rows)
            out["mrm_cls"] = cls
        if itm is not None:
            out["itm_labels"] = itm


def _round_up(n: int, cap: int, to: int = 8) -> int:
    """`n` up to a multiple of `to` (shapes that suit tensor cores, and few distinct ones),
    at most `cap`, at least 1."""
    return max(1, min(cap, -(-n // to) * to))


def shuffle_regions(batch):
    """The batch with each real sample's regions taken from a real sample of another image;
    texts and targets stay, padding keeps its own.

    A VQA or SNLI-VE image comes with several texts, next to each other in an eval batch, so
    taking the next sample's regions would mostly give a question its own image back. The
    real samples are ordered by image and each takes the regions m places on, m the most
    texts one image has in the batch: that pairs every text with another image whenever no
    image holds more than half of the batch (a batch of one image's texts keeps its own)."""
    real = torch.nonzero(~batch.is_pad).flatten().tolist()
    if len(real) < 2:
        return batch
    by_image = sorted(real, key=lambda i: batch.keys[i])  # stable: an image's texts in order
    m = max(Counter(batch.keys[i] for i in real).values())
    order = list(range(len(batch)))
    for j, i in enumerate(by_image):
        order[i] = by_image[(j + m) % len(by_image)]
    index = torch.tensor(order, device=batch.feats.device)
    moved = {k: getattr(batch, k)[index] for k in ("feats", "boxes", "region_mask")}
    return dataclasses.replace(batch, **moved)
