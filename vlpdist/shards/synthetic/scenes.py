"""What is in each image of a pool: objects (class, colour, size, box), stuff, region layout.

Drawn once per pool from the pool's own stream and kept as flat arrays; the renderer turns
chunks of it into features, the text writers read one image at a time (`Scenes.image`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vlpdist.shards.synthetic import text

if TYPE_CHECKING:
    from vlpdist.shards.synthetic.world import World

MAIN, DUP, STUFF, JUNK = 0, 1, 2, 3  # region kinds: an object, a loose box on it, stuff, clutter
SIZE_AREAS = ((0.01, 0.04), (0.05, 0.12), (0.15, 0.45))  # small, medium (no word), large
IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (640, 360))
COUNT_P = (0.55, 0.25, 0.12, 0.08)  # instances per class group: 1, 2, 3, 4


@dataclass
class Obj:
    cls: int
    color: int
    size: int  # index into SIZE_AREAS; 0 small, 2 large
    box: tuple[float, float, float, float]


@dataclass
class ImageScene:
    index: int
    objects: list[Obj]
    stuff: list[int]
    blur: float
    genres: list[int]  # MM-IMDB-like: all genres of the movie
    plot_genres: list[int]  # the genres its plot gives away
    class_prior: np.ndarray | None = None  # its pool's: how often each class is drawn

    def count(self, cls: int, color: int | None = None) -> int:
        return sum(o.cls == cls and (color is None or o.color == color) for o in self.objects)

    def classes(self) -> list[int]:
        return sorted({o.cls for o in self.objects})


class Scenes:
    """The discrete content of a pool of images (objects, stuff, region layout), as flat
    arrays; features are rendered from it chunk by chunk."""

    def __init__(self, world: World, pool: str, domain: dict, n: int, with_genres: bool):
        rng = world.rng("scenes", pool)
        self.pool, self.domain, self.n = pool, domain, n
        C, G = world.num_classes, len(world.genres)
        self.class_prior = prior = world.class_prior(pool, domain["prior_shift"])
        lo, hi = domain["objects"]
        n_obj = rng.integers(lo, hi + 1, n)
        cand = rng.choice(C, size=(n, 12), p=prior)
        counts = rng.choice(4, size=(n, 12), p=COUNT_P) + 1
        self.genres = np.zeros((n, G), bool)
        self.plot_genres = np.zeros((n, G), bool)
        if with_genres:  # each genre shows in the poster, in the plot, or in both
            k_genres = rng.choice(3, n, p=(0.45, 0.4, 0.15)) + 1
            channel = rng.choice(3, size=(n, G), p=(0.3, 0.3, 0.4))  # image, plot, both
            pick = rng.integers(0, 2, size=(n, G))
            for i in range(n):
                self.genres[i, rng.choice(G, k_genres[i], replace=False)] = True
        obj_cls, obj_start = [], [0]
        for i in range(n):
            groups: list[tuple[int, int]] = []
            if with_genres:
                for g in np.flatnonzero(self.genres[i]):
                    self.plot_genres[i, g] = channel[i, g] != 0
                    if channel[i, g] != 1:
                        groups.append((world.genres[g][1][pick[i, g]], 1))
            for c, k in zip(cand[i], counts[i], strict=True):
                total = sum(k for _, k in groups)
                if total >= n_obj[i]:
                    break
                if all(c != g for g, _ in groups):
                    groups.append((int(c), int(min(k, n_obj[i] - total))))
            for c, k in groups:
                obj_cls += [c] * k
            obj_start.append(len(obj_cls))
        self.obj_start = np.array(obj_start)
        self.obj_cls = np.array(obj_cls, dtype=np.int64)
        m = len(obj_cls)
        self.obj_img = np.repeat(np.arange(n), np.diff(self.obj_start))
        cdf = np.cumsum(world.color_prior[self.obj_cls], axis=1)
        self.obj_color = np.minimum((rng.random(m)[:, None] > cdf).sum(1), world.num_colors - 1)
        self.obj_size = rng.choice(3, m, p=(0.35, 0.3, 0.35))
        bounds = np.array(SIZE_AREAS)[self.obj_size]
        area = rng.uniform(bounds[:, 0], bounds[:, 1])
        aspect = np.exp(rng.normal(0, 0.4, m))
        w = np.minimum(np.sqrt(area * aspect), 0.95)
        h = np.minimum(area / w, 0.95)
        x1, y1 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        self.obj_box = np.stack([x1, y1, x1 + w, y1 + h], 1)
        self.obj_area = w * h
        # stuff: one ground kind, and sometimes sky or wall behind it
        ground = rng.integers(0, text.GROUND_STUFF, n)
        back = np.where(
            rng.random(n) < 0.5, rng.integers(text.GROUND_STUFF, len(text.STUFF), n), -1
        )
        self.stuff = np.stack([ground, back], 1)
        blur = domain["blur"]
        self.blur = rng.beta(2 * blur, 2 * (1 - blur), n) if blur > 0 else np.zeros(n)
        self.size_wh = np.array(IMAGE_SIZES)[rng.integers(0, len(IMAGE_SIZES), n)]
        # region layout: every object gets its region, the rest are loose boxes, stuff, clutter
        rmin, rmax = world.regions
        n_reg = np.maximum(rng.integers(rmin, rmax + 1, n), np.diff(self.obj_start))
        self.reg_start = np.concatenate([[0], np.cumsum(n_reg)])
        total = int(self.reg_start[-1])
        self.reg_img = np.repeat(np.arange(n), n_reg)
        first = np.arange(total) - self.reg_start[self.reg_img]
        is_main = first < np.diff(self.obj_start)[self.reg_img]
        kind = rng.choice([DUP, STUFF, JUNK], total, p=(0.5, 0.3, 0.2))
        self.reg_kind = np.where(is_main, MAIN, kind)
        n_img_obj = np.diff(self.obj_start)[self.reg_img]
        dup_of = (rng.random(total) * n_img_obj).astype(np.int64)
        self.reg_obj = np.where(is_main, first, dup_of) + self.obj_start[self.reg_img]
        self.reg_obj[(self.reg_kind == STUFF) | (self.reg_kind == JUNK)] = -1
        which = np.where((rng.random(total) < 0.5) & (self.stuff[self.reg_img, 1] >= 0), 1, 0)
        self.reg_stuff = np.where(self.reg_kind == STUFF, self.stuff[self.reg_img, which], -1)

    def image(self, i: int) -> ImageScene:
        a, b = self.obj_start[i], self.obj_start[i + 1]
        objects = [
            Obj(int(c), int(k), int(s), tuple(float(x) for x in box))
            for c, k, s, box in zip(
                self.obj_cls[a:b], self.obj_color[a:b], self.obj_size[a:b], self.obj_box[a:b],
                strict=True,
            )
        ]  # fmt: skip
        return ImageScene(
            index=i,
            objects=objects,
            stuff=[int(s) for s in self.stuff[i] if s >= 0],
            blur=float(self.blur[i]),
            genres=[int(g) for g in np.flatnonzero(self.genres[i])],
            plot_genres=[int(g) for g in np.flatnonzero(self.plot_genres[i])],
            class_prior=self.class_prior,
        )
