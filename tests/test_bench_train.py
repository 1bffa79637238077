"""`vlpdist bench train`: both loops run and train the same model on the same batch. Speed
goals (overhead_ratio <= 1.15) live in the benchmark, never in a test."""

from __future__ import annotations

import os

import pytest

from vlpdist.bench.train import run


@pytest.fixture
def restored_env():
    """`engine.dist.init()` writes RANK, MASTER_PORT, ... into os.environ for its one-rank
    group; later tests' `vlpdist` subprocesses inherit os.environ and must not see them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_engine_and_torch_loops_time_the_same_training(restored_env):
    r = run("visual_bert", "tiny", batch_size=8, steps=3, warmup=1, block=2)
    assert {"arch", "flavor", "batch_size", "steps", "engine_step_s", "torch_step_s",
            "overhead_ratio", "samples_per_s_engine", "target", "ok",
            "loss_engine_first", "loss_torch_first"} <= r.keys()  # fmt: skip
    assert (r["arch"], r["flavor"], r["batch_size"], r["steps"]) == ("visual_bert", "tiny", 8, 3)
    assert r["engine_step_s"] > 0 and r["torch_step_s"] > 0
    assert r["overhead_ratio"] == pytest.approx(r["engine_step_s"] / r["torch_step_s"], rel=1e-2)
    assert r["samples_per_s_engine"] == pytest.approx(8 / r["engine_step_s"], rel=1e-2)
    assert r["target"] == 1.15 and r["ok"] == (r["overhead_ratio"] <= r["target"])
    # same weights, same batch, same dropout masks: the loops' first losses agree
    assert r["loss_engine_first"] > 0
    assert r["loss_engine_first"] == pytest.approx(r["loss_torch_first"], rel=1e-5)
