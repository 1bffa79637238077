"""Evaluation on the validation split with the task's metric, on every rank.

Each rank scores its share of the val set (padding repeats flagged, never counted); the
metric's sufficient statistics are summed over ranks, so the figure is the one a single
process would compute over the whole split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.distributed as tdist

from vlpdist.analysis.metrics import PRIMARY, metric_for
from vlpdist.data.loader import Loader
from vlpdist.engine.dist import Dist
from vlpdist.models.losses import model_inputs


class Evaluator:
    def __init__(self, cfg, dist: Dist, labels: list[str] | None):
        data = cfg.data
        # the val split scored with the train split's answer vocabulary, all of it, in order
        # of the plan; masking and negatives do not apply to downstream tasks
        self.cfg = dataclasses.replace(
            data, sources=cfg.eval.sources, batch_size=cfg.eval.batch_size or data.batch_size,
            fraction=1.0, answer_vocab=data.answer_vocab or data.sources[0].url, num_workers=0,
        )  # fmt: skip
        self.loader = Loader(self.cfg, cfg.storage, rank=dist.rank, world_size=dist.world)
        self.task, self.dist, self.labels = data.task, dist, labels
        self.primary = PRIMARY[self.task]

    @torch.no_grad()
    def __call__(self, engine) -> dict:
        metric = metric_for(self.task)
        engine.eval()
        try:
            for batch in self.loader:
                batch = batch.to(self.dist.device)
                logits = engine(**model_inputs(batch))["logits"]
                if self.task in ("vqa", "vizwiz"):
                    metric.update(logits, batch.answers, self.labels, batch.is_pad)
                else:
                    metric.update(logits, batch.targets, batch.is_pad)
        finally:
            engine.train()
        if self.dist.world == 1:
            return metric.compute()
        state = torch.from_numpy(metric.state()).to(self.dist.device)
        tdist.all_reduce(state)
        merged = metric_for(self.task)
        merged.merge(np.asarray(state.cpu()))
        return merged.compute()
