"""Config sections more than one command reads: object-store settings and data sources."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from vlpdist.config.loader import SECRET, Invalid


@dataclass
class RetryConfig:
    max_attempts: int = 10
    """Tries per storage call, the first one included; transient errors only. When they are
    spent (or `deadline_s` is), the call fails with one line naming the object: a run stops
    rather than lose data."""
    base_delay_s: float = 0.2
    """First backoff delay; doubles per retry, with full jitter."""
    max_delay_s: float = 10.0
    """Cap of one backoff delay."""
    deadline_s: float = 300.0
    """No retry starts later than this many seconds after a call's first try."""

    def __post_init__(self):
        if self.max_attempts < 1:
            raise Invalid("max_attempts", "must be >= 1")
        if self.deadline_s <= 0:
            raise Invalid("deadline_s", "must be > 0")
        if self.base_delay_s < 0:
            raise Invalid("base_delay_s", "must be >= 0")
        if self.max_delay_s < self.base_delay_s:
            raise Invalid(
                "max_delay_s",
                f"{self.max_delay_s} < base_delay_s {self.base_delay_s}",
                others=("base_delay_s",),
            )


@dataclass
class StorageConfig:
    """Object-store settings. Unset fields fall back to the standard AWS_* variables."""

    endpoint_url: str | None = None
    """S3 endpoint (MinIO, a loopback test server); else AWS_ENDPOINT_URL; else AWS."""
    region: str | None = None
    """S3 region; else AWS_REGION / AWS_DEFAULT_REGION."""
    access_key_id: str | None = field(default=None, metadata=SECRET)
    """Else AWS_ACCESS_KEY_ID. Never printed."""
    secret_access_key: str | None = field(default=None, metadata=SECRET)
    """Else AWS_SECRET_ACCESS_KEY. Never printed."""
    anon: bool = False
    """Unsigned requests (public buckets)."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    """Backoff for transient errors (5xx, throttling, resets, timeouts)."""

    def resolved(self) -> StorageConfig:
        """These settings with this process's AWS_* variables filled in where unset, to
        travel with the work (Ray task arguments, never printed): workers on other nodes
        then need no AWS_* variables of their own."""
        env = {
            "endpoint_url": os.environ.get("AWS_ENDPOINT_URL"),
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            "access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
            "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        }
        filled = {k: v for k, v in env.items() if v and getattr(self, k) is None}
        return dataclasses.replace(self, **filled)


@dataclass
class DataSource:
    url: str
    """Dataset directory holding index.json (any storage URL)."""
    weight: float = 1.0
    """Relative sampling weight when several sources are mixed."""

    def __post_init__(self):
        if self.weight <= 0:
            raise Invalid("weight", "must be > 0")
