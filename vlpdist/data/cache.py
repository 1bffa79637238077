"""A node-local shard cache: shards of object storage copied to local disk once per node,
shared by every rank and loader worker on it, filled in the order the epoch plan needs them.

Why by hand: fsspec's `filecache`/`simplecache` keep one process's copies with no size limit
shared safely between processes and no knowledge of what is needed next; MosaicML streaming
and LitData have such caches but own the whole dataset format and loader. Ours serves the
loader's byte ranges from a mapped file, exactly as a local shard set is read, so batches
are the same bytes with or without it.

Layout of `data.cache.dir`:
  <key>.tar           a complete shard (key: its sha256 from the manifest, or a hash of URL
                      and size); it only ever appears by rename, so it is whole or absent
  <key>.part-<size>   a fill in progress; its size counts against the limit
  <key>.lock          held (flock, exclusive) by the one process filling <key>
  .dir.lock           held while a process makes room and reserves it
A process reading a shard holds a shared flock on its open <key>.tar; eviction asks for the
exclusive lock without waiting, so a shard in use is never evicted. flock locks go with
their process: a crash mid-fill leaves a .part whose lock is free, and the next process to
make room deletes it.

Eviction is Belady's: the shard whose next use in the plan lies furthest ahead goes first
(shards this process never needs, e.g. another run's, before any), and a shard is admitted
only when what it would evict is needed later than itself; otherwise it is read remotely.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vlpdist.data.plan import SHARD, SOURCE
from vlpdist.errors import StorageError
from vlpdist.paths import cache_root
from vlpdist.storage import Storage, is_local

log = logging.getLogger(__name__)
KEEP_FREE = 1 << 30  # bytes of the disk never filled, whatever the limit
NEVER = float("inf")
_warned: set[str] = set()  # one warning per cause and process


def _warn(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("data: %s", what)


def default_dir() -> str:
    return os.path.join(cache_root(), "shards")


@dataclass(frozen=True)
class Entry:
    """One remote shard the cache may hold."""

    url: str
    key: str
    size: int
    sha256: str | None


def entries(sources) -> dict[str, Entry]:
    """The remote shards of `sources` (local ones are read in place), by URL."""
    out = {}
    for s in sources:
        for info, url in zip(s.manifest["shards"], s.shard_urls, strict=True):
            if is_local(url):
                continue
            sha, size = info.get("sha256"), int(info["bytes"])
            key = sha or hashlib.sha256(f"{url}\0{size}".encode()).hexdigest()
            out[url] = Entry(url, key[:40], size, sha)
    return out


def uses(seq: np.ndarray, urls: list[list[str]]) -> dict[str, tuple[int, int]]:
    """First and last position of each shard in an epoch's global sequence."""
    if len(seq) == 0:
        return {}
    width = max(len(u) for u in urls)
    ids = seq[:, SOURCE] * width + seq[:, SHARD]
    uniq, first = np.unique(ids, return_index=True)
    _, last_rev = np.unique(ids[::-1], return_index=True)
    last = len(ids) - 1 - last_rev
    return {urls[i // width][i % width]: (int(f), int(la))
            for i, f, la in zip(uniq.tolist(), first, last, strict=True)}  # fmt: skip


class _Sink:
    """Where a fill's bytes go as they arrive: the .part file, the running sha256, the
    remote byte count; closing the cache ends a fill ahead here."""

    def __init__(self, f, cache: ShardCache):
        self.f, self.cache, self.n, self.digest = f, cache, 0, hashlib.sha256()

    def extend(self, chunk) -> None:
        if self.cache._stop:
            raise StorageError("the loader is done", "cancelled")
        self.f.write(chunk)
        self.digest.update(chunk)
        self.n += len(chunk)
        with self.cache._lock:
            self.cache._counts["remote_bytes"] += len(chunk)

    def __len__(self) -> int:
        return self.n


class ShardCache:
    """One process's handle on the node's cache: serves byte ranges of cached shards, fills
    missing ones (on demand, and ahead in a thread), counts what it did."""

    def __init__(self, directory: str, limit_bytes: int, shards: dict[str, Entry],
                 storage: Storage, ahead: int):  # fmt: skip
        self.dir, self.limit, self.shards, self.storage = directory, limit_bytes, shards, storage
        self.ahead = ahead
        self._by_key = {e.key: e.url for e in shards.values()}
        self._open: dict[str, tuple[int, mmap.mmap]] = {}  # url -> (locked fd, map)
        self._skip: set[str] = set()  # shards not to fill again (bad sha256, store errors)
        self._refused: dict[str, int] = {}  # shards refused for room, at which position
        self._filling = True  # off after a write error: the disk is full or broken
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._now: dict[str, tuple[int, int]] = {}  # this epoch's (first, last) use
        self._later: dict[str, int] = {}  # first use in the next epoch, as a position
        self._pos = 0
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, cfg, storage: Storage, sources) -> ShardCache | None:
        """The cache for `sources` under `cfg` (a `CacheConfig`), or None: turned off, no
        remote shard, or a directory that cannot be used (one warning; the loader streams)."""
        shards = entries(sources)
        if not cfg.enabled or not shards:
            return None
        directory = cfg.dir or default_dir()
        try:
            os.makedirs(directory, exist_ok=True)
            os.close(os.open(os.path.join(directory, ".dir.lock"), os.O_CREAT | os.O_RDWR, 0o644))
            probe = os.path.join(directory, f".probe-{os.getpid()}")
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o644))
            os.unlink(probe)
        except OSError as e:
            _warn(f"data.cache.dir {directory}: cannot be used ({e.strerror or e}); shards "
                  "are streamed from storage without a cache")  # fmt: skip
            return None
        return cls(directory, int(cfg.limit_gb * 1e9), shards, storage, cfg.ahead)

    # -- the plan: which shard is needed when
    def plan(self, now: dict[str, tuple[int, int]], later: dict[str, tuple[int, int]],
             epoch_len: int) -> None:  # fmt: skip
        """Uses of the shards in this epoch and the next (the cache plans across the turn)."""
        self._now = now
        self._later = {u: epoch_len + f for u, (f, _) in later.items()}

    def next_use(self, url: str | None) -> float:
        if url is None:
            return NEVER
        first, last = self._now.get(url, (-1, -1))
        if self._pos <= last:
            return max(first, self._pos)
        return self._later.get(url, NEVER)

    def advance(self, pos: int) -> None:
        """The process has reached `pos` of the epoch: shards it is done with are let go
        (evictable; their mapped views stay valid), and the prefetcher looks further."""
        with self._lock:
            self._pos = max(self._pos, pos)
            done = [u for u in self._open if self._now.get(u, (0, -1))[1] < self._pos]
            for url in done:
                os.close(self._open.pop(url)[0])
        with self._wake:
            self._wake.notify_all()

    # -- reading
    def holds(self, url: str) -> bool:
        """Whether the node's cache has `url` complete now (reading it is a local read)."""
        if url in self._open:
            return True
        e = self.shards.get(url)
        return e is not None and os.path.exists(self._path(e.key + ".tar"))

    def view(self, url: str, start: int, end: int) -> memoryview | None:
        """Bytes [start, end) of a remote shard from the cache (filled now if missing and it
        may be admitted), or None: read it from storage."""
        with self._lock:
            got = self._open.get(url)
        got = got or self._map(url)
        hit = got is not None  # a miss: filled now (waiting for another process's fill
        if got is None and self._fill(url, block=True) == "done":  # counts too) or remote
            got = self._map(url)
        with self._lock:
            self._counts["cache_hits" if hit else "cache_misses"] += 1
        if got is None:
            return None
        return memoryview(got[1])[start : min(end, len(got[1]))]

    def _map(self, url: str) -> tuple[int, mmap.mmap] | None:
        e = self.shards[url]
        path = self._path(e.key + ".tar")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # in use: not evicted while held
            st = os.fstat(fd)
            if st.st_nlink == 0 or st.st_size != e.size:  # evicted meanwhile, or not ours
                os.close(fd)
                return None
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError:
            os.close(fd)
            return None
        with self._lock:
            if url in self._open:  # another thread of this process mapped it first
                os.close(fd)
                return self._open[url]
            self._open[url] = (fd, mm)
        return fd, mm

    # -- filling
    def _fill(self, url: str, block: bool) -> str:
        """Copy one shard into the cache: 'done' (it is there), 'busy' (another process is
        filling it and `block` is False), 'refused' (no room for it) or 'failed'."""
        if not self._filling or url in self._skip or self._refused.get(url) == self._pos:
            return "failed"
        e = self.shards[url]
        lock = os.open(self._path(e.key + ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            except BlockingIOError:
                return "busy"
            if os.path.exists(self._path(e.key + ".tar")):
                return "done"
            state = self._copy(e)
            if state == "refused":  # asked again once the loader has moved on
                self._refused[url] = self._pos
            return state
        except OSError as err:
            self._filling = False
            _warn(f"data.cache.dir {self.dir}: cannot write ({err.strerror or err}); shards "
                  "are streamed from storage")  # fmt: skip
            return "failed"
        finally:
            os.close(lock)  # releases the fill lock

    def _copy(self, e: Entry) -> str:
        part = self._reserve(e)
        if part is None:
            return "refused"
        try:
            with open(part, "wb") as f:
                sink = _Sink(f, self)
                # one sequential GET of the whole object, streamed to disk; a broken
                # connection resumes at its first missing byte (Storage.read_into)
                self.storage.read_into(e.url, 0, e.size, sink)
                # on disk before the rename: after a power cut the name never points at
                # blocks that were not written
                f.flush()
                os.fsync(f.fileno())
            got = sink.digest.hexdigest()
            if sink.n != e.size or (e.sha256 and got != e.sha256):
                self._skip.add(e.url)
                _warn(f"{e.url}: {sink.n} bytes with sha256 {got[:12]}..., the manifest says "
                      f"{e.size} bytes and {(e.sha256 or '?')[:12]}...; not cached, read from "
                      "storage")  # fmt: skip
                return "failed"
            os.replace(part, self._path(e.key + ".tar"))
            part = None
        except StorageError as err:
            if err.kind != "cancelled":
                self._skip.add(e.url)  # the reader's own request reports it, as uncached
            return "failed"
        finally:
            if part is not None:
                with contextlib.suppress(OSError):
                    os.unlink(part)
        with self._lock:
            self._counts["cache_fill_bytes"] += sink.n
            self._counts["cache_fills"] += 1
        return "done"

    def _reserve(self, e: Entry) -> str | None:
        """Make room for `e` under the limit and the disk's free space, evicting the shards
        needed furthest ahead; its .part file (the reservation), or None if it is not worth
        a shard needed sooner."""
        dl = os.open(self._path(".dir.lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(dl, fcntl.LOCK_EX)
            used, complete = 0, []
            for name in os.listdir(self.dir):
                key, _, rest = name.partition(".")
                if rest == "tar":
                    size = self._size(name)
                    used += size
                    complete.append((self.next_use(self._by_key.get(key)), key, size))
                elif rest.startswith("part-"):
                    if key == e.key or self._stale(key):  # a crashed fill: never counts
                        with contextlib.suppress(OSError):
                            os.unlink(self._path(name))
                    else:
                        used += int(rest[5:])
            st = os.statvfs(self.dir)
            room = min(self.limit - used, st.f_bavail * st.f_frsize - KEEP_FREE)
            mine = self.next_use(e.url)
            for when, key, size in sorted(complete, reverse=True):
                if room >= e.size or when <= mine:
                    break
                if self._evict(key):
                    room += size
            if room < e.size:
                _warn(f"data.cache.dir {self.dir}: full (data.cache.limit_gb or the disk); "
                      "shards that do not fit are streamed from storage")  # fmt: skip
                return None
            part = self._path(f"{e.key}.part-{e.size}")
            os.close(os.open(part, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644))
            return part
        finally:
            os.close(dl)

    def _evict(self, key: str) -> bool:
        """Delete a complete shard unless a process holds it (its shared lock)."""
        try:
            fd = os.open(self._path(key + ".tar"), os.O_RDONLY)
        except OSError:
            return True  # gone already
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            os.unlink(self._path(key + ".tar"))
        finally:
            os.close(fd)
        with self._lock:
            self._counts["cache_evictions"] += 1
        return True

    def _stale(self, key: str) -> bool:
        """A .part of `key` whose filler is gone: its lock can be taken at once."""
        fd = os.open(self._path(key + ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def _size(self, name: str) -> int:
        try:
            return os.stat(self._path(name)).st_size
        except OSError:
            return 0

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # -- filling ahead
    def start(self) -> None:
        """Fill the next `ahead` shards of the plan in a thread, soonest needed first."""
        self._thread = threading.Thread(target=self._ahead, name="vlpdist-cache", daemon=True)
        self._thread.start()

    def _ahead(self) -> None:
        while not self._stop:
            with self._lock:
                pos = self._pos
            wanted = sorted((self.next_use(u), u) for u in set(self._now) | set(self._later))
            did = False
            for when, url in wanted[: self.ahead]:
                if self._stop or when == NEVER:
                    break
                if self.holds(url):
                    continue
                state = self._fill(url, block=False)
                did = did or state == "done"
                if state == "refused":
                    break  # what follows is needed even later
            with self._wake:
                if not self._stop and not did and self._pos == pos:
                    # nothing to do until the loader moves on (or another process finishes
                    # a fill this one skipped as busy: looked at again within a second)
                    self._wake.wait(timeout=1.0)

    def take_counts(self) -> dict[str, int]:
        """Counters since the last call (a batch's telemetry delta)."""
        with self._lock:
            out, self._counts = dict(self._counts), Counter()
        return out

    def close(self) -> None:
        self._stop = True
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for fd, _ in self._open.values():
                os.close(fd)
            self._open.clear()
