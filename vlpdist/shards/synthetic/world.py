"""The world: classes with prototypes, attributes, visual domains, scenes and region features.

Every concept lives in a small concept space (latent_dim L): a class prototype is its
superclass's vector plus its own, a colour adds a vector correlated with its neighbours' in
`COLORS`, and size adds a vector scaled by the box's log-area. A region's concept vector
gets instance and region noise, a domain's style (a partial rotation and an offset: the
same object looks different on the web) and, for VizWiz-like images, blur towards the image
mean. Features are then embedded into D dims through a fixed random orthonormal map plus
per-dim gain, ReLU and fp16: non-negative, sparse-ish, like BUTD. cls_prob comes from a
"detector" trained on the photo look (cosine to the prototypes, plus logit noise), so it is
confused more on shifted and blurred domains, as a Visual Genome detector would be.
"""

from __future__ import annotations

import zlib

import numpy as np

from vlpdist.config.synth import DomainConfig, SynthConfig
from vlpdist.shards.synthetic import text
from vlpdist.shards.synthetic.scenes import DUP, MAIN, STUFF, Scenes

BUILTIN_DOMAINS = {
    "coco": dict(style="photo", shift=0.0, prior_shift=0.0, noise=0.5, blur=0.0, objects=[2, 6]),
    "web": dict(style="web", shift=0.45, prior_shift=0.6, noise=0.7, blur=0.0, objects=[1, 4]),
    "flickr": dict(style="photo", shift=0.15, prior_shift=0.3, noise=0.5, blur=0.0, objects=[2, 5]),
    "blind": dict(style="blind", shift=0.35, prior_shift=0.5, noise=0.7, blur=0.3, objects=[1, 3]),
    "poster": dict(style="web", shift=0.4, prior_shift=0.5, noise=0.6, blur=0.0, objects=[2, 5]),
}
DETECTOR_BETA, BACKGROUND_COS = 8.0, 0.3
CHUNK = 128  # images rendered at once; a constant, so the random streams never depend on it


def rng_for(seed: int, *names: str | int) -> np.random.Generator:
    """An independent, stable stream per purpose: adding a dataset changes no other one."""
    keys = [n if isinstance(n, int) else zlib.crc32(n.encode()) for n in names]
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def resolve_domain(name: str, overrides: DomainConfig | None) -> dict:
    out = dict(BUILTIN_DOMAINS[name])
    for key, value in vars(overrides or DomainConfig()).items():
        if value is not None:
            out[key] = list(value) if isinstance(value, list) else value
    return out


class World:
    """Everything fixed by the seed before any image: concepts, looks, words."""

    def __init__(self, cfg: SynthConfig):
        self.cfg, self.seed = cfg, cfg.seed
        rng = rng_for(cfg.seed, "world")
        self.num_classes, self.num_colors = cfg.num_classes, cfg.num_colors
        self.regions = tuple(cfg.regions)
        L, D, C = cfg.latent_dim, cfg.feature_dim, cfg.num_classes
        self.class_table = text.CLASS_TABLE[:C]
        self.supers = list(dict.fromkeys(row[0] for row in self.class_table))
        self.class_super = np.array([self.supers.index(row[0]) for row in self.class_table])
        super_vecs = rng.standard_normal((len(self.supers), L))
        # siblings share half their prototype: dogs get confused with cats, not with buses
        self.protos = np.sqrt(0.5) * (super_vecs[self.class_super] + rng.standard_normal((C, L)))
        self.stuff_protos = rng.standard_normal((len(text.STUFF), L))
        walk = [rng.standard_normal(L)]
        for _ in range(cfg.num_colors - 1):
            walk.append(0.6 * walk[-1] + 0.8 * rng.standard_normal(L))
        self.color_vecs = 0.7 * np.array(walk)
        self.size_vec = 0.5 * rng.standard_normal(L)
        self.color_prior = rng.dirichlet(np.full(cfg.num_colors, 2.0), C)
        ranks = rng.permutation(C)
        self.base_prior = (ranks + 3.0) ** -0.7
        self.base_prior /= self.base_prior.sum()
        q, _ = np.linalg.qr(rng.standard_normal((D, L)))
        self.embed = (q.T * np.sqrt(D / L)).astype(np.float32)  # [L, D], rows orthogonal
        self.styles = {}
        for name in ("photo", "web", "blind"):
            srng = rng_for(cfg.seed, "style", name)
            rot, _ = np.linalg.qr(srng.standard_normal((L, L)))
            self.styles[name] = dict(
                rot=rot,
                offset=0.7 * srng.standard_normal(L),
                log_gain=0.3 * srng.standard_normal(D),
                offset_d=0.3 * srng.standard_normal(D),
            )
        self.domains = {n: resolve_domain(n, cfg.domains.get(n)) for n in BUILTIN_DOMAINS}
        grng = rng_for(cfg.seed, "genres")
        pairs = grng.choice(C, size=2 * cfg.num_genres, replace=2 * cfg.num_genres > C)
        self.genres = [
            (text.GENRES[g][0], [int(pairs[2 * g]), int(pairs[2 * g + 1])], text.GENRES[g][1])
            for g in range(cfg.num_genres)
        ]
        self.labels = ["background", *(row[1] for row in self.class_table), *text.STUFF]

    def rng(self, *names: str | int) -> np.random.Generator:
        return rng_for(self.seed, *names)

    def class_prior(self, pool: str, prior_shift: float) -> np.ndarray:
        own = self.rng("prior", pool.removesuffix("_val")).dirichlet(np.full(self.num_classes, 0.5))
        p = (1 - prior_shift) * self.base_prior + prior_shift * own
        return p / p.sum()

    def scenes(self, pool: str, domain: str, n: int, with_genres: bool = False) -> Scenes:
        return Scenes(self, pool, self.domains[domain], n, with_genres)

    def render(self, sc: Scenes, lo: int, hi: int) -> list[dict]:
        """Per image of [lo, hi) of a pool: feats, boxes, cls_prob, the region truth, and
        `main`, the region index of each object's own box."""
        rng = self.rng("render", sc.pool, lo)
        dom, cfg = sc.domain, self.cfg
        L, D = cfg.latent_dim, cfg.feature_dim
        r0, r1 = sc.reg_start[lo], sc.reg_start[hi]
        o0, o1 = sc.obj_start[lo], sc.obj_start[hi]
        kind, img = sc.reg_kind[r0:r1], sc.reg_img[r0:r1]
        obj = sc.reg_obj[r0:r1] - o0
        R, noise = r1 - r0, dom["noise"]
        size_scalar = (np.log(sc.obj_area[o0:o1]) - np.log(0.08)) / 1.2
        obj_z = (
            self.protos[sc.obj_cls[o0:o1]]
            + self.color_vecs[sc.obj_color[o0:o1]]
            + size_scalar[:, None] * self.size_vec
            + 0.5 * noise * rng.standard_normal((o1 - o0, L))
        )
        ground = self.stuff_protos[sc.stuff[img, 0]]
        w = rng.uniform(0.6, 1.0, R)[:, None]
        z = 0.8 * rng.standard_normal((R, L))  # clutter, kept where kind == JUNK
        is_obj = kind <= DUP
        z[is_obj] = obj_z[obj[is_obj]]
        z[kind == DUP] = (
            w[kind == DUP] * z[kind == DUP] + (1 - w[kind == DUP]) * ground[kind == DUP]
        )
        is_stuff = kind == STUFF
        z[is_stuff] = self.stuff_protos[sc.reg_stuff[r0:r1][is_stuff]]
        z += noise * rng.standard_normal((R, L))
        b = sc.blur[img][:, None]
        if b.any():  # blur: each region drifts to its image's mean and drowns in noise
            sums = np.zeros((hi - lo, L))
            np.add.at(sums, img - lo, z)
            mean = sums / np.bincount(img - lo, minlength=hi - lo)[:, None]
            z = (1 - b) * z + b * mean[img - lo] + 0.7 * b * rng.standard_normal((R, L))
        style, shift = self.styles[dom["style"]], dom["shift"]
        mix = ((1 - shift) * np.eye(L) + shift * style["rot"]) / np.hypot(1 - shift, shift)
        z = z @ mix + shift * style["offset"]
        cls_prob = self._detect(z, rng)
        gain = np.exp(shift * style["log_gain"]).astype(np.float32)
        x = (z.astype(np.float32) @ self.embed) * gain + (shift * style["offset_d"]).astype(
            np.float32
        )
        x += 0.25 * rng.standard_normal((R, D), dtype=np.float32)
        feats = np.maximum(x, 0).astype(np.float16)
        boxes = self._boxes(sc, r0, r1, rng)
        labels = np.where(is_obj, 1 + sc.obj_cls[sc.reg_obj[r0:r1]], 0)
        labels = np.where(is_stuff, 1 + self.num_classes + sc.reg_stuff[r0:r1], labels)
        local_obj = np.where(is_obj, obj + o0 - sc.obj_start[img], -1)
        # BUTD lists regions by detector confidence: objects tend to come first, not always
        order = np.lexsort((-cls_prob[:, 1:].max(1), img))
        where = np.empty(R, np.int64)
        where[order] = np.arange(R) - (sc.reg_start[img] - r0)[order]
        main_of = np.empty(o1 - o0, np.int64)
        main_of[obj[kind == MAIN]] = where[kind == MAIN]
        out = []
        for i in range(lo, hi):
            rs = order[sc.reg_start[i] - r0 : sc.reg_start[i + 1] - r0]
            out.append(
                dict(
                    feats=feats[rs],
                    boxes=boxes[rs],
                    cls_prob=cls_prob[rs],
                    main=main_of[sc.obj_start[i] - o0 : sc.obj_start[i + 1] - o0],
                    truth={"label": labels[rs].tolist(), "object": local_obj[rs].tolist()},
                )
            )
        return out

    def _detect(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        protos = np.concatenate([self.protos, self.stuff_protos])
        cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (
            protos / np.linalg.norm(protos, axis=1, keepdims=True)
        ).T
        cos = np.concatenate([np.full((len(z), 1), BACKGROUND_COS), cos], 1)
        logits = DETECTOR_BETA * cos + self.cfg.detector_noise * rng.standard_normal(cos.shape)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(1, keepdims=True)).astype(np.float16)

    def _boxes(self, sc: Scenes, r0: int, r1: int, rng: np.random.Generator) -> np.ndarray:
        kind, R = sc.reg_kind[r0:r1], r1 - r0
        own = sc.obj_box[np.maximum(sc.reg_obj[r0:r1], 0)]
        wh = np.stack([own[:, 2] - own[:, 0], own[:, 3] - own[:, 1]] * 2, 1)
        loose = own + rng.normal(0, 0.15, (R, 4)) * wh  # a proposal overlapping the object
        x1, w = rng.uniform(0, 0.5, R), rng.uniform(0.3, 0.5, R)
        y1 = rng.uniform(0.55, 0.75, R)
        ground = np.stack([x1, y1, x1 + w, np.ones(R)], 1)
        sky = np.stack([x1, np.zeros(R), x1 + w, 1 - y1], 1)
        is_ground = sc.reg_stuff[r0:r1] < text.GROUND_STUFF
        cw, ch = rng.uniform(0.03, 0.3, R), rng.uniform(0.03, 0.3, R)
        cx, cy = rng.uniform(0, 1 - cw), rng.uniform(0, 1 - ch)
        clutter = np.stack([cx, cy, cx + cw, cy + ch], 1)
        boxes = np.select(
            [
                kind[:, None] == MAIN,
                kind[:, None] == DUP,
                (kind == STUFF)[:, None] & is_ground[:, None],
            ],
            [own, loose, ground],
            default=np.where((kind == STUFF)[:, None], sky, clutter),
        )
        boxes[:, :2] = np.clip(boxes[:, :2], 0, 0.99)  # every box keeps a positive area
        boxes[:, 2:] = np.clip(np.maximum(boxes[:, 2:], boxes[:, :2] + 0.01), 0, 1)
        return boxes.astype(np.float32)
