"""Decoding one sample from its byte range: tar headers → members → zero-copy arrays.

The manifest's offsets give each sample's bytes [offsets[i], offsets[i+1]): its tar headers
and members, nothing else. We parse those 512-byte headers directly instead of opening a
`tarfile` per sample (webdataset's tar iterator wants a whole stream, and tarfile's per-
member object overhead dominates at thousands of samples/s), verify each header checksum so
a corrupted header is caught, and view .npy payloads with `np.frombuffer`: no copy, and no
pickle (object dtypes are refused).
"""

from __future__ import annotations

import ast
import functools
import json
import math
from dataclasses import dataclass

import numpy as np

BLOCK = 512
_ZERO_BLOCK = b"\0" * BLOCK


_NPY_MAGIC = b"\x93NUMPY"


class CorruptSample(ValueError):
    """The bytes of a sample are not the tar members the manifest promised."""


@dataclass
class Decoded:
    key: str
    feats: np.ndarray  # float16 [N, D], read-only view
    boxes: np.ndarray  # float32 [N, 4]
    cls_prob: np.ndarray | None
    meta: dict


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip()
    return int(field, 8) if field else 0


def members(buf: bytes | memoryview) -> tuple[str, dict[str, memoryview]]:
    """(key, {extension: payload}) of the tar members in `buf`."""
    view = memoryview(buf)
    pos, key, out = 0, None, {}
    while pos + BLOCK <= len(view):
        header = bytes(view[pos : pos + BLOCK])
        if header == _ZERO_BLOCK:
            break
        # the checksum counts its own 8 bytes as spaces (8 * 32 = 256)
        if _octal(header[148:156]) != sum(header) - sum(header[148:156]) + 256:
            raise CorruptSample(f"tar header checksum mismatch at byte {pos}")
        size = _octal(header[124:136])
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        if prefix:
            name = prefix + b"/" + name
        data_start = pos + BLOCK
        if data_start + size > len(view):
            raise CorruptSample(f"member '{name.decode(errors='replace')}' runs past the sample")
        if header[156:157] in (b"0", b"\0"):  # regular file; pax/links carry no member
            base = name.decode("utf-8").rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            if key is None:
                key = k
            elif k != key:
                raise CorruptSample(f"member '{base}' belongs to another sample than '{key}'")
            out[ext] = view[data_start : data_start + size]
        pos = data_start + -(-size // BLOCK) * BLOCK
    if key is None:
        raise CorruptSample("no tar member in the sample's byte range")
    return key, out


def npy(payload: memoryview) -> np.ndarray:
    """A read-only array viewing `payload` (an .npy file's bytes)."""
    if bytes(payload[:6]) != _NPY_MAGIC:
        raise CorruptSample("not an .npy payload")
    major = payload[6]
    if major == 1:
        hlen, start = int.from_bytes(payload[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(payload[8:12], "little"), 12
    else:
        raise CorruptSample(f"unknown .npy version {major}")
    dtype, shape, order = _npy_header(bytes(payload[start : start + hlen]))
    count = math.prod(shape)
    offset = start + hlen
    if offset + count * dtype.itemsize > len(payload):
        raise CorruptSample(".npy payload shorter than its header says")
    arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape, order=order)


@functools.lru_cache(maxsize=1024)
def _npy_header(text: bytes) -> tuple[np.dtype, tuple[int, ...], str]:
    """Parsed .npy header dict, cached: a set's arrays share a handful of headers, and
    parsing one (literal_eval, dtype construction) costs more than viewing the array."""
    try:
        header = ast.literal_eval(text.decode("latin1"))
        dtype = np.dtype(header["descr"])
        shape = tuple(int(n) for n in header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        raise CorruptSample(f"bad .npy header: {e}") from None
    if dtype.hasobject:
        raise CorruptSample(".npy holds Python objects (pickle); refused")
    return dtype, shape, "F" if header.get("fortran_order") else "C"


def decode(buf: bytes | memoryview) -> Decoded:
    """The sample in `buf` (its byte range in the shard)."""
    key, m = members(buf)
    try:
        meta = json.loads(bytes(m["json"]))
        feats, boxes = npy(m["feats.npy"]), npy(m["boxes.npy"])
    except KeyError as e:
        raise CorruptSample(f"sample '{key}' lacks its {e.args[0]} member") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptSample(f"sample '{key}': bad json ({e})") from None
    cls_prob = npy(m["cls_prob.npy"]) if "cls_prob.npy" in m else None
    if feats.ndim != 2 or boxes.shape != (feats.shape[0], 4):
        raise CorruptSample(f"sample '{key}': feats {feats.shape} and boxes {boxes.shape} disagree")
    return Decoded(key, feats, boxes, cls_prob, meta)
