"""One storage layer for every URL: plain paths, file://, s3:// and any fsspec protocol.

- S3 settings come from `StorageConfig`, else from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_REGION. Secrets never reach a log line or an error.
- Transient errors (5xx, throttling, resets, timeouts) are retried here with exponential
  backoff and full jitter, a bounded number of times, each retry logged. s3fs and
  botocore retry on their own too; both are switched off so that the bound is real
  and every retry is visible. aiohttp re-sends an idempotent request once by itself when
  a kept-alive connection breaks before the reply; that cannot be switched off, so it is
  counted (an aiohttp TraceConfig sees every send) and added to `Storage.retries`.
- Permanent errors (no such bucket, access denied, not found) fail at once as one line.
- Writes are atomic for readers: on object stores a single PUT/multipart upload becomes
  visible only when complete; on file systems we write a temporary name and rename.
  A multi-object dataset is committed by writing its manifest last.

What counts as transient is `faults.py`; S3 range reads that resume at the byte and the
HTTP session that counts re-sends are `s3.py`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import fsspec

from vlpdist.config.common import StorageConfig
from vlpdist.errors import StorageError
from vlpdist.storage.faults import classify, client_error_info
from vlpdist.storage.s3 import RangeReader, counting_session, s3_range_into

log = logging.getLogger(__name__)
T = TypeVar("T")

# Protocols whose single-object upload is atomic (visible only once complete).
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


def split_protocol(url: str) -> tuple[str, str]:
    """('s3', 'bucket/key') for 's3://bucket/key'; ('file', '/abs/path') for plain paths."""
    if "://" in url:
        proto, _, rest = url.partition("://")
        if proto == "file":
            return "file", os.path.abspath(rest)
        return proto, rest
    return "file", os.path.abspath(url)


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def is_local(url: str) -> bool:
    return split_protocol(url)[0] == "file"


def _bucket(url: str) -> str:
    return split_protocol(url)[1].split("/", 1)[0]


# ---------------------------------------------------------------- the storage object


class Storage:
    """Opens, lists, reads and writes URLs with one set of settings and one retry policy."""

    def __init__(
        self, cfg: StorageConfig | None = None, sleep: Callable[[float], None] = time.sleep
    ):
        self.cfg = cfg or StorageConfig()
        self._fs: dict[str, fsspec.AbstractFileSystem] = {}
        self._sleep = sleep
        self._retried = 0  # transient errors we retried
        self.resends = 0  # requests the HTTP layer sent again by itself (S3)

    # -- settings and secrets
    def _s3_settings(self) -> dict:
        c, env = self.cfg, os.environ
        return {
            "endpoint_url": c.endpoint_url or env.get("AWS_ENDPOINT_URL") or None,
            "region": c.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            "key": c.access_key_id or env.get("AWS_ACCESS_KEY_ID"),
            "secret": c.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY"),
        }

    def redact(self, text: str) -> str:
        """Replace every known secret value in `text` with '***'."""
        s = self._s3_settings()
        for secret in (s["key"], s["secret"], os.environ.get("AWS_SESSION_TOKEN")):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def filesystem(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        proto, path = split_protocol(url)
        if proto not in self._fs:
            self._fs[proto] = self._make_fs(proto, url)
        return self._fs[proto], path

    def _make_fs(self, proto: str, url: str) -> fsspec.AbstractFileSystem:
        if proto == "file":
            return fsspec.filesystem("file")
        if proto in ("s3", "s3a"):
            s = self._s3_settings()
            kwargs: dict = {
                "anon": self.cfg.anon,
                "use_listings_cache": False,
                "skip_instance_cache": True,
                # botocore's own retries off: ours are bounded, jittered and logged.
                "config_kwargs": {
                    "retries": {"total_max_attempts": 1, "mode": "standard"},
                    "connect_timeout": 10,
                    "read_timeout": 60,
                    "http_session_cls": counting_session(self),
                },
                "client_kwargs": {"region_name": s["region"]} if s["region"] else {},
            }
            if s["endpoint_url"]:
                kwargs["endpoint_url"] = s["endpoint_url"]
            if not self.cfg.anon and s["key"]:
                kwargs.update(key=s["key"], secret=s["secret"])
            try:
                fs = fsspec.filesystem("s3", **kwargs)
            except Exception as e:  # bad endpoint URL and the like
                raise StorageError(
                    f"{url}: cannot set up S3 access: {self.redact(str(e))}"
                ) from None
            fs.retries = 1  # s3fs's internal retry loop off, see module docstring
            return fs
        try:
            return fsspec.filesystem(proto)
        except (ImportError, ValueError) as e:
            raise StorageError(f"{url}: unsupported storage protocol '{proto}': {e}") from None

    @property
    def retries(self) -> int:
        """Every request sent again after a transient failure: ours and the HTTP layer's."""
        return self._retried + self.resends

    # -- the retry policy
    def call(self, what: str, url: str, fn: Callable[[], T]) -> T:
        """Run `fn` with bounded, jittered, logged retries of transient errors."""
        r = self.cfg.retry
        first = time.monotonic()
        for attempt in range(1, r.max_attempts + 1):
            try:
                return fn()
            except StorageError:
                raise
            except Exception as e:
                kind = classify(e)
                if kind != "transient":
                    raise self._permanent(kind, what, url, e) from None
                delay = random.uniform(0, min(r.max_delay_s, r.base_delay_s * 2 ** (attempt - 1)))
                elapsed = time.monotonic() - first
                if attempt == r.max_attempts or elapsed + delay > r.deadline_s:
                    raise StorageError(
                        f"{url}: {what} failed after {attempt} attempts in {elapsed:.1f}s "
                        f"(storage.retry): {self._describe(e)}",
                        "transient",
                    ) from None
                log.warning(
                    "storage: %s %s: %s; retry %d/%d in %.2fs",
                    what, url, self._describe(e), attempt, r.max_attempts - 1, delay,
                )  # fmt: skip
                self._retried += 1
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _describe(self, e: BaseException) -> str:
        code, status = client_error_info(e)
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        label = (
            type(e).__name__
            + (f" {code}" if code else "")
            + (f" (HTTP {status})" if status else "")
        )
        return self.redact(f"{label}: {text}" if text else label)

    def _permanent(self, kind: str, what: str, url: str, e: BaseException) -> StorageError:
        if kind == "missing_bucket":
            return StorageError(f"{url}: no such bucket '{_bucket(url)}'", kind)
        if kind == "denied":
            return StorageError(
                f"{url}: access denied while trying to {what} (check the credentials: "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the config's storage section)",
                kind,
            )
        if kind == "not_found":
            return StorageError(f"{url}: not found", kind)
        return StorageError(f"{url}: cannot {what}: {self._describe(e)}", kind)

    # -- reading
    def exists(self, url: str) -> bool:
        fs, path = self.filesystem(url)
        return self.call("check", url, lambda: fs.exists(path))

    def size(self, url: str) -> int:
        fs, path = self.filesystem(url)
        return int(self.call("stat", url, lambda: fs.size(path)))

    def read_bytes(self, url: str, start: int | None = None, end: int | None = None) -> bytes:
        """The whole object, or bytes [start, end). On S3 a range is streamed into a buffer
        that outlives a failed attempt, so a retry asks only for the bytes still missing."""
        if split_protocol(url)[0] in ("s3", "s3a") and start is not None and end is not None:
            got = bytearray()
            self.read_into(url, start, end, got)
            return bytes(got)
        fs, path = self.filesystem(url)
        return self.call("read", url, lambda: fs.cat_file(path, start=start, end=end))

    def read_into(self, url: str, start: int, end: int, sink) -> None:
        """Bytes [start, end) appended to `sink` (anything with `extend` and `len`, empty at
        first) as they arrive, never held whole in memory; on S3 a retry asks only for the
        bytes still missing. An exception `sink` raises ends the read (a StorageError as it
        is, without retries)."""
        fs, path = self.filesystem(url)
        if split_protocol(url)[0] in ("s3", "s3a"):
            self.call("read", url, lambda: s3_range_into(fs, path, start + len(sink), end, sink))
        else:
            sink.extend(self.call("read", url, lambda: fs.cat_file(path, start=start, end=end)))

    def read_text(self, url: str) -> str:
        return self.read_bytes(url).decode("utf-8")

    def open_read(self, url: str, chunk_size: int = 8 << 20) -> io.BufferedReader:
        """A sequential reader. Remote objects are read in ranged chunks; a transient error
        re-requests from the exact byte where it broke, so nothing is lost or repeated."""
        if is_local(url):
            path = split_protocol(url)[1]
            try:
                return open(path, "rb")  # noqa: SIM115 - returned to the caller
            except OSError as e:
                raise self._permanent(classify(e), "read", url, e) from None
        return io.BufferedReader(RangeReader(self, url, chunk_size), buffer_size=chunk_size)

    def iter_chunks(self, url: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        with self.open_read(url, chunk_size) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def ls(self, url: str) -> list[str]:
        """Child URLs of a directory/prefix, sorted; [] when it does not exist."""
        fs, path = self.filesystem(url)
        proto = split_protocol(url)[0]
        try:
            entries = self.call("list", url, lambda: fs.ls(path, detail=False))
        except StorageError as e:
            if e.kind == "not_found":
                return []
            raise
        prefix = "" if proto == "file" else f"{proto}://"
        return sorted(prefix + e.rstrip("/") for e in entries)

    def glob(self, pattern: str) -> list[str]:
        """URLs matching a glob pattern, sorted ([pattern] itself when it has no wildcard
        and exists); [] when nothing matches."""
        if not any(c in pattern for c in "*?["):
            return [pattern] if self.exists(pattern) else []
        fs, path = self.filesystem(pattern)
        proto = split_protocol(pattern)[0]
        prefix = "" if proto == "file" else f"{proto}://"
        return sorted(prefix + p for p in self.call("list", pattern, lambda: fs.glob(path)))

    def find(self, url: str) -> list[str]:
        """Every file below a directory/prefix as `url`/relative path, sorted; [] when
        there is none."""
        fs, path = self.filesystem(url)
        try:
            entries = self.call("list", url, lambda: fs.find(path))
        except StorageError as e:
            if e.kind == "not_found":
                return []
            raise
        root = path.rstrip("/")
        rels = [e[len(root) + 1 :] if e.startswith(root + "/") else e for e in entries]
        return sorted(join(url, r) for r in rels if r)

    # -- writing
    def write_bytes(self, url: str, data: bytes) -> None:
        with self.open_write(url) as f:
            f.write(data)

    def write_text(self, url: str, text: str) -> None:
        self.write_bytes(url, text.encode("utf-8"))

    @contextlib.contextmanager
    def open_write(self, url: str) -> Iterator[io.BufferedWriter]:
        """Write to a local temporary file; on success, commit it to `url` atomically.
        If the body raises, nothing becomes visible at `url`."""
        fd, tmp = tempfile.mkstemp(prefix=".vlpdist-", dir=self._local_tmp_dir(url))
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            self.put_file(tmp, url)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _local_tmp_dir(self, url: str) -> str | None:
        """Same directory as a local target (so rename is atomic), else the system temp."""
        if not is_local(url):
            return None
        d = os.path.dirname(split_protocol(url)[1])
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{url}: cannot create directory: {e.strerror}") from None
        return d

    def put_file(self, local_path: str, url: str) -> None:
        """Commit a finished local file to `url`, atomically for readers."""
        proto, path = split_protocol(url)
        if proto == "file":
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                shutil.copyfile(local_path, tmp)
                os.replace(tmp, path)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise self._permanent(classify(e), "write", url, e) from None
            return
        fs, path = self.filesystem(url)
        if proto in ATOMIC_PUT:
            self.call("write", url, lambda: fs.put_file(local_path, path))
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"  # other fsspec stores: temp key, then move
        self.call("write", url, lambda: fs.put_file(local_path, tmp))
        self.call("commit", url, lambda: fs.mv(tmp, path))

    def get_file(self, url: str, local_path: str) -> None:
        """Copy the object at `url` to a local file, streamed (not held in memory), retried;
        the file appears complete or not at all."""
        os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
        tmp = f"{local_path}.tmp-{uuid.uuid4().hex}"
        try:
            with self.open_read(url) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
            os.replace(tmp, local_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def get_dir(self, url: str, local_dir: str, skip: tuple[str, ...] = ()) -> str:
        """Copy every object under `url` into `local_dir`, keeping relative paths (except
        those in `skip`); each file streamed and atomic as in `get_file`."""
        for file_url in self.find(url):
            rel = file_url[len(url.rstrip("/")) + 1 :]  # find() keeps the url as given
            if rel not in skip:
                self.get_file(file_url, os.path.join(local_dir, rel))
        return local_dir

    def rm(self, url: str, recursive: bool = False) -> None:
        fs, path = self.filesystem(url)
        self.call("delete", url, lambda: fs.rm(path, recursive=recursive))
