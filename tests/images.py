"""Small real images drawn with PIL for the extraction tests: coloured shapes on textured
backgrounds, and files broken in the ways images in the wild are."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from vlpdist.bench.pictures import COLOURS, SHAPES, draw, jpeg, png

__all__ = ["COLOURS", "SHAPES", "draw", "jpeg", "png", "odd_images", "broken_images"]


def with_orientation(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(im, exif=exif.tobytes())


def odd_images(seed: int = 1000) -> dict[str, bytes]:
    """Files that decode, each in a way that needs care, by file name."""
    im, _ = draw(seed)
    grey16 = Image.fromarray((np.asarray(im.convert("L"), np.uint16) * 257).astype(np.uint16))
    rgba = im.convert("RGBA")
    rgba.putalpha(128)
    return {
        "cmyk.jpg": jpeg(im.convert("CMYK")),
        "grey.png": png(im.convert("L")),
        "grey16.png": png(grey16),
        "palette.png": png(im.convert("P")),
        "alpha.png": png(rgba),
        "rotated.jpg": with_orientation(im, 6),  # stored sideways, to be turned upright
    }


def broken_images(seed: int = 2000) -> dict[str, tuple[bytes, str]]:
    """Files that cannot be used, by file name, with a word their skip reason contains."""
    good = jpeg(draw(seed)[0])
    bomb = Image.new("L", (12000, 12000))  # 144M pixels: over the limit, tiny as a PNG
    return {
        "empty.jpg": (b"", "0 bytes"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "garbage.jpg": (os.urandom(2000), "not an image"),
        "bomb.png": (png(bomb), "decompression bomb"),
    }


def write_folder(root: str, n: int, broken: bool = True, odd: bool = True) -> dict:
    """n drawn images under root (in two sub-folders), plus the odd and broken ones;
    what was written, by image id."""
    os.makedirs(os.path.join(root, "a"), exist_ok=True)
    os.makedirs(os.path.join(root, "b"), exist_ok=True)
    written = {}
    for i in range(n):
        im, objects = draw(i)
        rel = f"{'ab'[i % 2]}/img{i:04d}"
        data = png(im) if i % 5 == 0 else jpeg(im)
        with open(os.path.join(root, rel + (".png" if i % 5 == 0 else ".jpg")), "wb") as f:
            f.write(data)
        written[rel] = objects
    for name, data in (odd_images() if odd else {}).items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        written[os.path.splitext(name)[0]] = "odd"
    for name, (data, _) in (broken_images() if broken else {}).items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write("not an image\n")
    return written
