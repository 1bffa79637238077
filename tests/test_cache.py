"""The node-local shard cache: the same batches with and without it, epochs after the first
read nothing remotely, one fill per shard per node, eviction under the limit, recovery from a
crash mid-fill, and a cache that cannot be used costs a warning, never a run."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import upload
from faultproxy import FaultProxy

from vlpdist.config import CacheConfig, DataConfig, DataSource
from vlpdist.data import cache as C
from vlpdist.data.loader import Loader
from vlpdist.storage import Storage

TESTS = Path(__file__).resolve().parent


def cfg_for(url, cache: CacheConfig, **kw) -> DataConfig:
    base = dict(batch_size=4, num_workers=0, max_regions=16, max_text_tokens=24,
                shuffle_window=2, read_span=2, cache=cache)  # fmt: skip
    base.update(kw)
    return DataConfig(sources=[DataSource(str(url))], **base)


def signature(batch) -> tuple:
    """Everything a batch holds that the model sees, as bytes."""
    return (tuple(batch.keys), tuple(str(t) for t in batch.text_ids),
            batch.input_ids.numpy().tobytes(), batch.feats.numpy().tobytes(),
            batch.boxes.numpy().tobytes(), batch.mlm_labels.numpy().tobytes(),
            batch.is_pad.numpy().tobytes())  # fmt: skip


def epoch(loader) -> tuple[list, dict]:
    """One epoch's batch signatures and the telemetry counters it added."""
    before = loader.counters()
    sigs = [signature(b) for b in loader]
    after = loader.counters()
    return sigs, {k: after[k] - before[k] for k in after}


def shard_bytes(local: Path) -> tuple[int, int]:
    m = json.loads((local / "index.json").read_text())
    return len(m["shards"]), sum(s["bytes"] for s in m["shards"])


@pytest.fixture
def on_s3(small_world, s3):
    return upload(small_world / "coco_like", s3.url("w", "coco_like"))


def test_same_batches_with_and_without_cache_and_epoch_two_reads_nothing_remote(
    small_world, on_s3, tmp_path
):
    local = Loader(cfg_for(small_world / "coco_like", CacheConfig()))
    want = [epoch(local)[0], epoch(local)[0]]
    off = Loader(cfg_for(on_s3, CacheConfig(enabled=False)))
    assert epoch(off)[0] == want[0]
    assert off.counters()["cache_hits"] == 0 and off.counters()["remote_bytes"] > 0

    cached = Loader(cfg_for(on_s3, CacheConfig(dir=str(tmp_path / "c")), num_workers=2))
    first, t1 = epoch(cached)
    second, t2 = epoch(cached)
    assert [first, second] == want  # bit for bit, epoch after epoch
    n, size = shard_bytes(small_world / "coco_like")
    assert t1["cache_fills"] == n and t1["cache_fill_bytes"] == size, t1
    assert t1["remote_bytes"] == size  # every byte once, as whole shards
    assert t2["remote_bytes"] == 0 and t2["cache_fills"] == 0 and t2["cache_misses"] == 0, t2
    assert t2["cache_hits"] > 0
    assert (
        sorted(p.suffix for p in (tmp_path / "c").iterdir() if p.suffix != ".lock") == [".tar"] * n
    )  # complete shards only, and the telemetry reaches the loader's record
    assert cached.telemetry()["cache_fills"] == n


@pytest.mark.parametrize("sizes", [(2, 1), (1, 3)])
def test_resume_with_cache_on_another_world_size(small_world, on_s3, tmp_path, sizes):
    """Part of an epoch on W ranks with the cache, the rest on W' ranks: the same units as
    one uninterrupted local pass, nothing lost or repeated."""
    want = {u for b in Loader(cfg_for(small_world / "coco_like", CacheConfig()))
            for u in zip(b.keys, b.text_ids, strict=True)}  # fmt: skip
    cache = CacheConfig(dir=str(tmp_path / "c"))
    seen, state = [], None
    for phase, w in enumerate(sizes):
        loaders = [Loader(cfg_for(on_s3, cache), rank=r, world_size=w) for r in range(w)]
        for ld in loaders:
            if state:
                ld.load_state_dict(state)
        steps = len(loaders[0])
        take = steps if phase == len(sizes) - 1 else steps // 2
        for ld in loaders:
            it = iter(ld)
            for _ in range(take):
                b = next(it)
                keep = ~b.is_pad.numpy()
                seen += [u for u, k in zip(zip(b.keys, b.text_ids, strict=True), keep,
                                           strict=True) if k]  # fmt: skip
            it.close()
        state = loaders[0].state_dict()
    assert len(seen) == len(set(seen)) == len(want) and set(seen) == want


CHILD = textwrap.dedent("""
    import json, sys
    from vlpdist.config import CacheConfig, DataConfig, DataSource
    from vlpdist.data.loader import Loader
    url, cache = sys.argv[1], sys.argv[2]
    cfg = DataConfig(sources=[DataSource(url)], batch_size=4, num_workers=1, max_regions=16,
                     max_text_tokens=24, shuffle_window=2, read_span=2,
                     cache=CacheConfig(dir=cache))
    ld = Loader(cfg)
    print("started", flush=True)
    keys = [k for b in ld for k in b.keys]
    print(json.dumps({"keys": keys, "tel": ld.counters()}), flush=True)
""")


def _child(url: str, cache: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, url, str(cache)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})  # fmt: skip


def test_two_processes_share_the_cache_each_shard_filled_once(small_world, on_s3, tmp_path):
    procs = [_child(on_s3, tmp_path / "c") for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0].splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0]["keys"] == outs[1]["keys"]
    n, size = shard_bytes(small_world / "coco_like")
    fills = [o["tel"]["cache_fills"] for o in outs]
    assert sum(fills) == n, fills  # never two fills of one shard on a node
    assert sum(o["tel"]["cache_fill_bytes"] for o in outs) == size


def test_a_process_killed_mid_fill_leaves_nothing_that_counts(small_world, on_s3, s3, tmp_path):
    cache = tmp_path / "c"
    with FaultProxy(s3.endpoint) as proxy:
        proxy.hold(".tar")
        child = _child(on_s3, cache, {"AWS_ENDPOINT_URL": proxy.url})
        assert child.stdout.readline().strip() == "started"
        assert proxy.held.wait(timeout=120), "no shard download started"
        parts = [p.name for p in cache.iterdir() if ".part-" in p.name]
        assert parts, sorted(p.name for p in cache.iterdir())  # a fill is under way
        os.killpg(child.pid, signal.SIGKILL)  # the process and its loader worker
        child.wait(timeout=60)
        proxy.release()
    assert not [p for p in cache.iterdir() if p.suffix == ".tar"]  # nothing half counts
    ld = Loader(cfg_for(on_s3, CacheConfig(dir=str(cache))))
    got, tel = epoch(ld)
    assert got == epoch(Loader(cfg_for(small_world / "coco_like", CacheConfig())))[0]
    n, _ = shard_bytes(small_world / "coco_like")
    assert tel["cache_fills"] == n
    assert not [p for p in cache.iterdir() if ".part-" in p.name]  # the crash's debris gone


def test_eviction_keeps_the_limit_and_the_batches(small_world, on_s3, tmp_path):
    n, size = shard_bytes(small_world / "coco_like")
    limit = size * 0.4  # about 40% of the set fits
    cache = CacheConfig(dir=str(tmp_path / "c"), limit_gb=limit / 1e9, ahead=2)
    ld = Loader(cfg_for(on_s3, cache))
    want = Loader(cfg_for(small_world / "coco_like", CacheConfig()))
    for _ in range(2):
        got, tel = epoch(ld)
        assert got == epoch(want)[0]
        held = sum(p.stat().st_size for p in (tmp_path / "c").iterdir() if p.suffix == ".tar")
        assert 0 < held <= limit
    total = ld.counters()
    assert total["cache_evictions"] > 0 and total["cache_hits"] > 0, total


def _touch_shards(cache: C.ShardCache, urls: list[str]) -> None:
    for u in urls:
        Path(cache.dir, cache.shards[u].key + ".tar").write_bytes(b"x" * cache.shards[u].size)


def test_belady_evicts_the_shard_needed_furthest_ahead_never_one_in_use(tmp_path):
    urls = [f"s3://b/set/{i:06d}.tar" for i in range(5)]
    shards = {u: C.Entry(u, f"k{i}", 1000, None) for i, u in enumerate(urls)}
    cache = C.ShardCache(str(tmp_path), 3500, shards, Storage(), ahead=0)
    # this epoch: shard 0 now, then 1, 2, 3; shard 4 only in the next epoch
    cache.plan({urls[i]: (100 * i, 100 * i + 99) for i in range(4)}, {urls[4]: (0, 9)}, 400)
    held = lambda: sorted(p.stem for p in tmp_path.glob("*.tar"))  # noqa: E731
    _touch_shards(cache, [urls[1], urls[2], urls[4]])  # 3000 of 3500 bytes
    part = cache._reserve(shards[urls[0]])  # needed now: the next epoch's shard 4 makes room
    assert part and held() == ["k1", "k2"]
    os.unlink(part)
    _touch_shards(cache, [urls[0]])  # as its fill would have left it
    assert cache._reserve(shards[urls[3]]) is None  # all held ones are needed before it
    assert held() == ["k0", "k1", "k2"]
    # a shard in use (another process's shared lock) is never evicted
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); sys.stdin.read()",
         str(tmp_path / "k1.tar")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        cache.advance(250)  # 0 and 1 are done for good, 2 is in use now, 3 comes next
        assert cache._reserve(shards[urls[3]])
        assert held() == ["k1", "k2"]  # k1 (in use elsewhere) stays, k0 went
    finally:
        holder.communicate("", timeout=30)


def test_a_cache_that_cannot_be_used_is_one_warning_and_streaming(
    small_world, on_s3, tmp_path, caplog
):
    want = epoch(Loader(cfg_for(small_world / "coco_like", CacheConfig())))[0]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    C._warned.clear()
    with caplog.at_level(logging.WARNING, logger="vlpdist.data.cache"):
        got, tel = epoch(Loader(cfg_for(on_s3, CacheConfig(dir=str(blocker / "cache")))))
    assert got == want and tel["cache_fills"] == 0 and tel["remote_bytes"] > 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "cannot be used" in lines[0] and str(blocker) in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlpdist.data.cache"):
        tiny = CacheConfig(dir=str(tmp_path / "full"), limit_gb=1e-9)
        got, tel = epoch(Loader(cfg_for(on_s3, tiny)))
    assert got == want and tel["cache_fills"] == 0 and tel["cache_misses"] > 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "full" in lines[0], lines


def test_a_shard_that_differs_from_its_manifest_is_not_cached(small_world, s3, tmp_path, caplog):
    from corrupt import copy_with_corrupt_sample

    bad = tmp_path / "bad"
    copy_with_corrupt_sample(small_world / "coco_like", bad)
    url = upload(bad, s3.url("bad"))
    C._warned.clear()
    off = Loader(cfg_for(url, CacheConfig(enabled=False)))
    want, want_tel = epoch(off)
    with caplog.at_level(logging.WARNING, logger="vlpdist.data.cache"):
        got, tel = epoch(Loader(cfg_for(url, CacheConfig(dir=str(tmp_path / "c")))))
    assert got == want and tel["corrupt_samples"] == want_tel["corrupt_samples"] > 0
    assert any("not cached" in r.getMessage() for r in caplog.records)
    n, _ = shard_bytes(bad)
    assert tel["cache_fills"] == n - 1  # all but the damaged one
    assert np.isfinite(tel["remote_bytes"])
