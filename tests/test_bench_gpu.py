"""`vlpdist bench gpu` runs on CPU at the tiny flavor: the engine's bf16 ZeRO-1 steps fed by
the real loader, with FLOPs charged per batch shape. Its figures on a GPU are the note's."""

from __future__ import annotations

import os

import pytest

from vlpdist.bench.gpu import run


@pytest.fixture
def restored_env():
    """`engine.dist.init()` writes RANK, MASTER_PORT, ... into os.environ for its one-rank
    group; later tests' subprocesses must not see them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_bench_gpu_on_cpu_measures_both_architectures(restored_env):
    recs = run(steps=1, warmup=1, samples=16, max_batch=4, peak_tflops=0.5)
    assert [r["arch"] for r in recs] == ["visual_bert", "vilbert"]
    for r in recs:
        assert (r["flavor"], r["device"], r["batch_size"], r["precision"], r["zero_stage"]) == (
            "tiny", "cpu", 4, "bf16", 1)  # fmt: skip
        assert r["samples_per_s"] > 0 and r["tflops_per_device"] > 0
        # captions are shorter than max_text_tokens: trimmed batches cost less than padded
        assert 0 < r["flops_per_sample"] < r["flops_per_sample_padded"]
        # both figures are printed to 4 decimals: at CPU rates that rounding is > 1%
        assert r["mfu"] == pytest.approx(r["tflops_per_device"] / 0.5, rel=1e-2, abs=2e-4)
        assert 0 <= r["data_wait_fraction"] <= 1 and r["peak_memory_gib"] > 0
        assert r["loss_last"] > 0
    assert "target_mfu" not in recs[0]  # the target is VisualBERT-base's on a GPU
