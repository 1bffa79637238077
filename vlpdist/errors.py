"""User-facing errors.

Anything a user can cause (a bad config, a wrong URL, a corrupt file) raises a subclass of
`VlpdistError` with a one-line message naming the file, key or URL. The CLI prints that
line and exits non-zero without a stack trace; everything else is a bug and keeps its trace.
"""


class VlpdistError(Exception):
    """A user mistake or an environment problem, reported as one line."""


class ConfigError(VlpdistError):
    """A config file or override is invalid."""


class StorageError(VlpdistError):
    """A storage URL cannot be read or written. `kind` says why, for callers that treat
    causes differently (a missing object is not a store that keeps failing): 'not_found',
    'transient' (retries exhausted), 'denied', 'missing_bucket', 'short' (fewer bytes than
    asked for) or 'permanent'."""

    def __init__(self, message: str, kind: str = "permanent"):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # keeps `kind` across processes (loader workers, Ray)
        return (type(self), (str(self), self.kind))


class ShardError(VlpdistError):
    """A shard or manifest is missing, corrupt or inconsistent."""


class SourceError(VlpdistError):
    """A public dataset file cannot be used to build shards."""
