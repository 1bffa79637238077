"""A reverse proxy on loopback that injects object-store faults in front of a real S3 server.

Faults are scheduled per request: `proxy.plan(["503", "reset", "cut", None, ...])` gives the
next requests those faults in order (None = pass through); `proxy.rate(p, kinds, seed)`
injects a seeded random fault into a fraction p of requests. Every request is logged
(method, path, Range header, fault) so tests can see retries and resume offsets.
  503    answer 503 SlowDown (S3's throttling reply) without contacting the server
  reset  close the connection with a TCP reset before answering
  cut    forward, then send the headers and only half the body, then close (GET only)
`proxy.hold(match)` makes every GET whose path contains `match` send half its body and then
wait for `proxy.release()`; `proxy.held` is set when the first one waits (a test kills the
client mid-download at that moment).
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te"}


class FaultProxy:
    def __init__(self, upstream: str):
        u = urlparse(upstream)
        self.upstream = (u.hostname, u.port)
        self.log: list[dict] = []
        self._planned: deque = deque()
        self._rate, self._kinds, self._rng = 0.0, ("503",), random.Random(0)
        self._lock = threading.Lock()
        self._hold: str | None = None
        self.held, self._released = threading.Event(), threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    def plan(self, faults: list[str | None]) -> None:
        with self._lock:
            self._planned.extend(faults)

    def rate(self, p: float, kinds=("503", "reset", "cut"), seed: int = 0) -> None:
        with self._lock:
            self._rate, self._kinds, self._rng = p, tuple(kinds), random.Random(seed)

    def hold(self, match: str) -> None:
        self._hold = match

    def release(self) -> None:
        self._hold = None
        self._released.set()

    def _next_fault(self, method: str) -> str | None:
        with self._lock:
            if self._planned:
                fault = self._planned.popleft()
            elif self._rate and self._rng.random() < self._rate:
                fault = self._rng.choice(self._kinds)
            else:
                fault = None
        return None if fault == "cut" and method != "GET" else fault

    def faults(self, kind: str | None = None) -> int:
        return sum(1 for e in self.log if e["fault"] and (kind is None or e["fault"] == kind))

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if size == 0:
                            return out
                        out += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST, the client sees "connection reset"
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True

            def _any(self) -> None:
                body = self._body()
                fault = proxy._next_fault(self.command)
                proxy.log.append(
                    {"method": self.command, "path": self.path,
                     "range": self.headers.get("Range"), "fault": fault}
                )  # fmt: skip
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    if self.command != "HEAD":  # a HEAD reply has no body
                        self.wfile.write(SLOWDOWN)
                    return
                if fault == "reset":
                    return self._reset()
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if proxy._hold and self.command == "GET" and proxy._hold in self.path:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    proxy.held.set()
                    proxy._released.wait()
                    self.wfile.write(data[len(data) // 2 :])
                    return
                if fault == "cut" and len(data) > 1:
                    # half the body, then a clean close: the client gets those bytes and
                    # then an early end of the body (a reset would discard them unread)
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_WR)
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        return Handler
