"""Reading the bytes of a batch's samples: one byte range per sample from the manifest's
offsets (adjacent ones coalesced), concurrent, retried by the storage layer.

Range reads instead of streaming whole shards: with the plan's windowed shuffle, every
consumer needs samples spread over several shards; reading each sample's own range means
every byte is read exactly once across all ranks and workers, and skipping a consumed part
of an epoch costs nothing. Local files use `os.pread` on a cached descriptor.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vlpdist.data.index import Source
from vlpdist.data.plan import SAMPLE, SHARD, SOURCE
from vlpdist.errors import StorageError
from vlpdist.storage import Storage, is_local, split_protocol

MAX_RUN = 32 << 20  # cap of one coalesced read


class Fetcher:
    def __init__(self, storage: Storage, sources: list[Source], threads: int, stats: dict):
        self.storage, self.sources, self.stats = storage, sources, stats
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vlpdist-read")
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()  # reader threads share the counters and descriptors

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def fetch(self, entries: np.ndarray) -> list[memoryview | Exception]:
        """The bytes of each entry's sample, or the error that kept it from being read."""
        out: list[memoryview | Exception] = [StorageError("not read")] * len(entries)
        runs = self._runs(entries)
        t0 = time.perf_counter()
        retries_before = self.storage.retries
        results = self.pool.map(self._read_run, runs)
        for (url, start, end, members), got in zip(runs, results, strict=True):
            for i, lo, hi in members:
                if isinstance(got, Exception):
                    out[i] = got
                elif len(got) < end - start:
                    out[i] = StorageError(f"{url}: short read at byte {start} (truncated shard?)")
                else:
                    out[i] = got[lo - start : hi - start]
        with self._lock:
            self.stats["fetch_s"] = self.stats.get("fetch_s", 0.0) + time.perf_counter() - t0
            self.stats["retries"] = (
                self.stats.get("retries", 0) + self.storage.retries - retries_before
            )
        return out

    def _runs(self, entries: np.ndarray) -> list[tuple[str, int, int, list]]:
        """Group entries by shard; merge samples whose byte ranges touch."""
        ranges: dict[str, list[tuple[int, int, int]]] = {}
        for i, e in enumerate(entries):
            src: Source = self.sources[e[SOURCE]]
            off = src.offsets[e[SHARD]]
            ranges.setdefault(src.shard_urls[e[SHARD]], []).append(
                (int(off[e[SAMPLE]]), int(off[e[SAMPLE] + 1]), i)
            )
        runs = []
        for url, items in ranges.items():
            items.sort()
            start, end, members = items[0][0], items[0][1], []
            for lo, hi, i in items:
                if lo > end or hi - start > MAX_RUN:
                    runs.append((url, start, end, members))
                    start, members = lo, []
                end = max(end, hi)
                members.append((i, lo, hi))
            runs.append((url, start, end, members))
        return runs

    def _read_run(self, run) -> memoryview | Exception:
        url, start, end, _ = run
        try:
            if is_local(url):
                with self._lock:
                    fd = self._fds.get(url)
                    if fd is None:
                        fd = self._fds[url] = os.open(split_protocol(url)[1], os.O_RDONLY)
                data = os.pread(fd, end - start, start)
            else:
                data = self.storage.read_bytes(url, start, end)
        except (StorageError, OSError) as e:
            return e if isinstance(e, StorageError) else StorageError(f"{url}: {e}")
        with self._lock:
            self.stats["bytes_read"] = self.stats.get("bytes_read", 0) + len(data)
            self.stats["requests"] = self.stats.get("requests", 0) + 1
        return memoryview(data)
