"""Images in, RGB pixels out: listing a folder, glob or tar of images on any storage URL,
and decoding each image the same way wherever it comes from.

Nothing is dropped silently. An image that cannot be used raises `BadImage` with a reason
that the build report lists with its path. Decoding applies EXIF orientation, flattens
alpha onto white, scales 16-bit images to 8 bits, converts palette, greyscale and CMYK to
RGB, and refuses images over a pixel limit before decoding them (a decompression bomb).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlpdist.errors import SourceError
from vlpdist.shards.features import expand
from vlpdist.storage import Storage

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
_GLOB_CHARS = re.compile(r"[*?\[]")
_ORIENTATION = 0x0112  # the EXIF tag


class BadImage(Exception):  # noqa: N818 - a counted skip, not a failure
    """This image cannot be used; `reason` becomes the skip reason in the build report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageRef:
    """Where one image's bytes are: a file, or bytes [start, end) of a tar."""

    image_id: str  # the path below the input root, without its extension
    url: str
    where: str  # how the report names it: the file's URL, or tar URL:member
    start: int | None = None
    end: int | None = None

    def read(self, storage: Storage) -> bytes:
        return storage.read_bytes(self.url, self.start, self.end)


# ---------------------------------------------------------------- listing


def list_images(storage: Storage, spec: str) -> tuple[list[ImageRef], list[str]]:
    """The images of a directory, a glob, or a tar (or a glob of tars) at any storage URL,
    sorted by image id, and notes for the build report. Ids are the paths below the
    directory (or inside the tar) without the extension; two files with one id are an error
    naming both, since their features could not be told apart."""
    notes: list[str] = []
    if spec.endswith(".tar"):  # one tar, or a glob of tars
        refs = [r for tar in expand(storage, spec, "images") for r in _tar_members(storage, tar)]
    elif _GLOB_CHARS.search(spec):
        files = expand(storage, spec, "images")
        root = _glob_root(spec)
        refs, other = _files(files, root)
        if other:
            notes.append(f"{other} files that are not images ({', '.join(IMAGE_EXTS)}) ignored")
    else:
        if not storage.exists(spec):
            raise SourceError(f"{spec}: images not found (images=...)")
        refs, other = _files(storage.find(spec), spec)
        if other:
            notes.append(f"{other} files that are not images ({', '.join(IMAGE_EXTS)}) ignored")
    refs.sort(key=lambda r: r.image_id)
    for a, b in zip(refs, refs[1:], strict=False):
        if a.image_id == b.image_id:
            raise SourceError(
                f"{a.where} and {b.where}: two images with the id '{a.image_id}' "
                "(rename one: their features could not be told apart)"
            )
    if not refs:
        raise SourceError(f"{spec}: no images there ({', '.join(IMAGE_EXTS)})")
    return refs, notes


def regions_name(spec: str) -> str:
    """A name for the regions of the images at `spec`: its folder's or tar's name."""
    path = spec.rstrip("/")
    if _GLOB_CHARS.search(path):
        path = _glob_root(path)
    base = path.rsplit("/", 1)[-1]
    base = base[: -len(".tar")] if base.endswith(".tar") else base
    return f"{re.sub(r'[^A-Za-z0-9_-]+', '_', base).strip('_') or 'images'}_regions"


def _glob_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard: ids are relative to it."""
    head = pattern[: _GLOB_CHARS.search(pattern).start()]
    return head.rsplit("/", 1)[0] if "/" in head else "."


def _image_id(rel: str) -> str:
    return os.path.splitext(rel.lstrip("./"))[0]


def _files(urls: list[str], root: str) -> tuple[list[ImageRef], int]:
    refs, other = [], 0
    root = root.rstrip("/")
    for url in urls:
        if not url.lower().endswith(IMAGE_EXTS):
            other += 1
            continue
        rel = url[len(root) + 1 :] if url.startswith(root + "/") else os.path.basename(url)
        refs.append(ImageRef(_image_id(rel), url, url))
    return refs, other


def _tar_members(storage: Storage, url: str) -> list[ImageRef]:
    """The image members of a tar, as byte ranges of it (read later, one image at a time)."""
    refs = []
    with storage.open_read(url) as f:
        try:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for m in tar:
                    if m.isfile() and m.name.lower().endswith(IMAGE_EXTS):
                        start = m.offset_data
                        refs.append(
                            ImageRef(
                                _image_id(m.name), url, f"{url}:{m.name}", start, start + m.size
                            )
                        )
        except tarfile.TarError as e:
            raise SourceError(f"{url}: not a readable tar ({e})") from None
    return refs


# ---------------------------------------------------------------- decoding


def decode(
    data: bytes, max_pixels: int, at_least: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file's bytes → uint8 RGB [H, W, 3], upright, and the image's full (width,
    height). With `at_least`, a JPEG is decoded at the smallest power-of-two reduction that
    keeps both sides at least that large (libjpeg's DCT scaling): a 12-megapixel photo for a
    448-pixel model decodes at a quarter of each side, many times faster. Raises BadImage."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit and raises at twice it; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage(
                    f"{w}x{h} pixels is over the limit of {max_pixels} (decompression bomb)"
                )
            if at_least and im.format == "JPEG":
                im.draft("RGB", (at_least, at_least))
            turned = im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
            im.load()
            im = ImageOps.exif_transpose(im)
    except BadImage:
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(f"over PIL's decompression-bomb limit ({e})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's truncated/corrupt data errors
        raise BadImage(f"corrupt or truncated image data ({e})") from None
    if im.width == 0 or im.height == 0:
        raise BadImage(f"empty image ({im.width}x{im.height})")
    return _to_rgb(im), ((h, w) if turned else (w, h))


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit (and 32-bit) greyscale: PIL's convert("L") clips instead of scaling
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        grey = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize so the longer side is `size` (aspect kept, bilinear), pad to size x size at the
    bottom/right with zeros; returns the square and the content's (height, width)."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[:nh, :nw] = resized
    return out, (nh, nw)


def stretch(rgb: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize to size x size (aspect not kept, as grid features do); content is all of it."""
    out = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return out, (size, size)
