"""Training engine: the only package that imports deepspeed. One entry, `run(cfg)`, for
pretraining, fine-tuning and captioners alike (data.task says which)."""

from __future__ import annotations


def run(cfg, claim: int | None = None) -> dict:
    """Train `cfg` on this process's rank; returns the run's summary (rank, export, record,
    metric, history). The checks that need no process group come first, so a bad config
    is one line in a second or two, before the heavy half of the engine is imported.
    `claim`: the generation of the study driver that started this attempt (lease.py),
    None for a run started by hand."""
    from vlpdist.engine import setup

    pre = setup.preflight(cfg)
    from vlpdist.engine import loop

    return loop.train(cfg, pre, claim)
