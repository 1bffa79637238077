"""Evaluation on the validation split with the task's metric, on every rank.

Each rank scores its share of the val set (padding repeats flagged, never counted); the
metric's sufficient statistics are summed over ranks, so the figure is the one a single
process would compute over the whole split.

Every evaluation is also run with the regions shuffled between the samples of each batch
(each text paired with another image's regions): `<metric>_shuffled`, and the difference,
`image_shuffle_gap`. A model that answers from the text alone loses nothing; the gap is
how much of the score the image is responsible for.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.distributed as tdist

from vlpdist.data.collate import shuffle_regions
from vlpdist.data.loader import Loader
from vlpdist.engine.dist import Dist
from vlpdist.metrics import PRIMARY, metric_for
from vlpdist.models.losses import model_inputs


class Evaluator:
    def __init__(self, cfg, dist: Dist, train: Loader):
        """`train`: the training split's loader, whose label vocabulary the val split is
        scored with and whose tokenizer (already fetched) it reads."""
        data = cfg.data
        # the val split scored with the train split's answer vocabulary, all of it, in order
        # of the plan; masking and negatives do not apply to downstream tasks
        self.cfg = dataclasses.replace(
            data, sources=cfg.eval.sources, batch_size=cfg.eval.batch_size or data.batch_size,
            fraction=1.0, answer_vocab=data.answer_vocab or data.sources[0].url, num_workers=0,
        )  # fmt: skip
        self.loader = Loader(self.cfg, cfg.storage, rank=dist.rank, world_size=dist.world,
                             tokenizer=train.tokenizer, pin_memory=True)  # fmt: skip
        self.task, self.dist, self.labels = data.task, dist, train.labels
        self.primary = PRIMARY[self.task]

    @torch.no_grad()
    def __call__(self, engine) -> dict:
        engine.eval()
        try:
            scores = [metric_for(self.task), metric_for(self.task)]  # true, shuffled regions
            for batch in self.loader:
                batch = batch.to(self.dist.device)
                for metric, b in zip(scores, (batch, shuffle_regions(batch)), strict=True):
                    metric.update_batch(engine(**model_inputs(b))["logits"], b, self.labels)
        finally:
            engine.train()
        true, shuffled = (self._merged(m) for m in scores)
        return {**true, f"{self.primary}_shuffled": shuffled[self.primary],
                "image_shuffle_gap": true[self.primary] - shuffled[self.primary]}  # fmt: skip

    def _merged(self, metric) -> dict:
        if self.dist.world == 1:
            return metric.compute()
        state = torch.from_numpy(metric.state()).to(self.dist.device)
        tdist.all_reduce(state)
        merged = metric_for(self.task)
        merged.merge(np.asarray(state.cpu()))
        return merged.compute()
