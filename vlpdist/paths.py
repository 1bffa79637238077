"""Where vlpdist keeps what it can recompute: one local cache root per node."""

from __future__ import annotations

import os


def cache_root() -> str:
    """$VLPDIST_CACHE_DIR, else $XDG_CACHE_HOME/vlpdist, else ~/.cache/vlpdist. Holds
    `shards/` (the node-local shard cache) and `flops/` (counted FLOPs per model shape)."""
    return os.environ.get("VLPDIST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vlpdist"
    )
