"""Pictures drawn with PIL: coloured shapes on textured backgrounds. Real pixels for the
extraction bench and tests, with no download."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220),
           "yellow": (230, 210, 40)}  # fmt: skip
SHAPES = ("circle", "square", "triangle")


def draw(seed: int, size: tuple[int, int] = (96, 72)) -> tuple[Image.Image, list[dict]]:
    """A textured background with 1-3 shapes; the image and what is on it."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(60, 200, 3)
    noise = rng.normal(0, 18, (h, w, 3))
    stripes = (np.sin(np.arange(w) / rng.uniform(2, 6))[None, :, None] * 20).repeat(h, 0)
    im = Image.fromarray(np.clip(base + noise + stripes, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    objects = []
    unit = min(w, h)
    for _ in range(int(rng.integers(1, 4))):
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        s = int(rng.integers(unit // 6, unit // 2.4))
        x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        box = (x, y, x + s, y + s)
        if shape == "circle":
            d.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            d.rectangle(box, fill=COLOURS[colour])
        else:
            d.polygon([(x, y + s), (x + s // 2, y), (x + s, y + s)], fill=COLOURS[colour])
        objects.append({"colour": colour, "shape": shape, "box": box})
    return im, objects


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
