"""S3 byte ranges that survive a broken connection, and an HTTP session that counts the
requests aiohttp sends again by itself (see the package docstring)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from vlpdist.errors import StorageError

if TYPE_CHECKING:
    from vlpdist.storage import Storage


def counting_session(storage: Storage):
    """aiobotocore's HTTP session with a TraceConfig that counts, per request, the times its
    headers were sent: more than once is aiohttp's own silent re-send."""
    import aiohttp
    from aiobotocore.httpsession import AIOHTTPSession

    async def start(_session, ctx, _params) -> None:
        ctx.sends = 0

    async def sent(_session, ctx, _params) -> None:
        ctx.sends = getattr(ctx, "sends", 0) + 1
        if ctx.sends > 1:
            storage.resends += 1

    if not hasattr(AIOHTTPSession, "_get_session"):  # another aiobotocore: count nothing
        return AIOHTTPSession
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(start)
    trace.on_request_headers_sent.append(sent)
    trace.freeze()

    class CountingSession(AIOHTTPSession):
        async def _get_session(self, proxy_url):
            session = await super()._get_session(proxy_url)
            if trace not in session.trace_configs:
                session.trace_configs.append(trace)
            return session

    return CountingSession


def s3_range_into(fs, path: str, start: int, end: int, out: bytearray) -> None:
    """GET bytes [start, end) of an S3 object, appending to `out` as they arrive: when the
    connection breaks mid-body, what was received stays in `out` for the next attempt.
    (s3fs's cat_file reads the whole body before returning, losing a partial read.)"""
    from fsspec.asyn import sync

    if start >= end:
        return
    bucket, key, version = fs.split_path(path)

    async def fetch() -> None:
        kw = {"VersionId": version} if version else {}
        resp = await fs._call_s3(
            "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **kw
        )
        body = resp["Body"]
        try:
            while chunk := await body.read(1 << 20):
                out.extend(chunk)
        finally:
            body.close()

    sync(fs.loop, fetch)


class RangeReader(io.RawIOBase):
    """Raw sequential reader over ranged GETs; each range is retried by `Storage.call`,
    so a connection reset mid-object resumes at the exact byte offset."""

    def __init__(self, storage: Storage, url: str, chunk_size: int):
        self.storage, self.url, self.chunk_size = storage, url, chunk_size
        self.pos = 0
        self.total = storage.size(url)

    def readable(self) -> bool:
        return True

    def readall(self) -> bytes:
        # RawIOBase's default reads 8 KB at a time: one request each
        parts = []
        while self.pos < self.total:
            end = min(self.total, self.pos + self.chunk_size)
            parts.append(self.storage.read_bytes(self.url, self.pos, end))
            self.pos = end
        return b"".join(parts)

    def readinto(self, b) -> int:
        if self.pos >= self.total:
            return 0
        end = min(self.total, self.pos + max(len(b), 1))
        data = self.storage.read_bytes(self.url, self.pos, end)
        if not data:
            raise StorageError(
                f"{self.url}: object ended at byte {self.pos} of {self.total}", "short"
            )
        n = len(data)
        b[:n] = data
        self.pos += n
        return n
