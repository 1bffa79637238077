"""Broken copies of a shard set, for the fault tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy_with_corrupt_sample(src: Path, dst: Path) -> tuple[Path, Path, dict]:
    """A copy of the set at `src` whose first shard's 2nd sample has a flipped byte in its
    first tar header (the size stays the same); returns (set, that shard, manifest)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "index.json").read_text())
    shard = dst / m["shards"][0]["name"]
    raw = bytearray(shard.read_bytes())
    raw[m["shards"][0]["offsets"][1] + 5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return dst, shard, m
