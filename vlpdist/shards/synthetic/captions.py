"""Pretraining texts written from an image's scene: captions, alt-text, generated captions.

coco_like captions use the literal class, colour, size and stuff words that VQA questions
use for the same objects, so caption pretraining teaches exactly the word-region bindings
the downstream task needs. cc_like alt-text names one or two objects, mostly by synonyms,
hypernyms and other colour words, and is sometimes about something the image does not
show. ccg_like is what a CC-style captioner says about in-domain images: CC's phrasing,
but built from the detector's view of the image, so mostly right and more literal.

The texts of one image are distinct (`Writer.distinct`), and a definite reference ("the
large pizza") names exactly one object of its image (`Writer.describe`), so every label
drawn from the scene is well-defined: the only noise is the annotators'.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from vlpdist.shards.synthetic import text as T
from vlpdist.shards.synthetic.scenes import ImageScene, Obj
from vlpdist.shards.synthetic.world import World

TRIES = 10  # draws per text before a slot gives up on finding one unlike the image's others


def area(o: Obj) -> float:
    return (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])


class Writer:
    """Text generators of one world, drawing from one dataset's random stream."""

    def __init__(self, world: World, rng: np.random.Generator):
        self.w, self.rng, self.cfg = world, rng, world.cfg

    # -- words and draws
    def word(self, c: int) -> str:
        return self.w.class_table[c][1]

    def plural(self, c: int) -> str:
        return self.w.class_table[c][2]

    def hyper(self, c: int) -> str:
        return T.SUPER_WORDS[self.w.class_table[c][0]]

    def pick(self, seq):
        seq = list(seq)
        return seq[int(self.rng.integers(len(seq)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick_weighted_from(self, choices: list[int], weights) -> int:
        p = np.asarray(weights, float)[choices]
        return choices[int(self.rng.choice(len(choices), p=p / p.sum()))]

    def other_color(self, exclude: set[int], cls: int | None = None) -> int:
        """A colour not in `exclude`; of a class, as often as that class has it, so a wrong
        colour in a "no" question or a contradiction is as plausible as a true one."""
        choices = [k for k in range(self.w.num_colors) if k not in exclude]
        if not choices:
            return self.pick(range(self.w.num_colors))
        if cls is None:
            return self.pick(choices)
        return self.pick_weighted_from(choices, self.w.color_prior[cls])

    def absent_class(self, sc: ImageScene, weights=None) -> int:
        """A class not in the image, drawn as often as its pool shows it (times `weights`),
        so "is there a dog?" is no likelier to be "no" for a common class than a rare one."""
        present = set(sc.classes())
        choices = [c for c in range(self.w.num_classes) if c not in present]
        if sc.class_prior is None:
            return self.pick(choices)
        w = sc.class_prior if weights is None else sc.class_prior * weights
        return self.pick_weighted_from(choices, w)

    def distinct(
        self, n: int, plan: Callable[[int], Any], draw: Callable[[Any], dict | None]
    ) -> list[dict]:
        """Up to n texts of one image, no two alike. Slot j draws its plan once (an answer
        type, a label), then up to TRIES texts under it, so rejecting repeats keeps the
        plans' mix; a slot that finds nothing new gets a fresh plan, and after 4n slots the
        image keeps fewer than n texts (its templates allow no more): bounded, never stuck.
        `draw` returns a record with a "text", or None where the plan fits no object."""
        out: list[dict] = []
        seen: set[str] = set()
        for _ in range(4 * n):
            if len(out) == n:
                break
            p = plan(len(out))
            for _ in range(TRIES):
                t = draw(p)
                if t is not None and t["text"] not in seen:
                    seen.add(t["text"])
                    out.append(t)
                    break
        return out

    # -- referring to one object: the words must fit it and nothing else in the image
    def attr(self, o: Obj, key: str):
        return {"cls": o.cls, "super": self.hyper(o.cls), "color": o.color, "size": o.size}[key]

    def describe(
        self, sc: ImageScene, o: Obj, keys: tuple[str, ...], optional=("size",)
    ) -> tuple[str, ...] | None:
        """The attributes that name o: `keys` plus the fewest of `optional` that leave no
        other object of the image fitting the words, or None when none do (two pizzas that
        differ only in colour cannot be asked about by colour). Size words are categories:
        "large" fits large objects only, and medium has no word."""
        usable = [k for k in optional if k != "size" or o.size != 1]
        for r in range(len(usable) + 1):
            for extra in itertools.combinations(usable, r):
                ks = (*keys, *extra)
                fits = [
                    x for x in sc.objects if all(self.attr(x, k) == self.attr(o, k) for k in ks)
                ]
                if len(fits) == 1:
                    return ks
        return None

    def named(self, sc: ImageScene, keys: tuple[str, ...], optional=("size",)) -> list:
        """(object, attributes naming it) for each object some description picks out alone."""
        found = [(o, self.describe(sc, o, keys, optional)) for o in sc.objects]
        return [(o, ks) for o, ks in found if ks is not None]

    def phrase(self, o: Obj, keys: tuple[str, ...]) -> str:
        """'large green pizza', 'green food': o in the words of `keys`, in English order."""
        words = [T.SIZES[o.size // 2]] if "size" in keys else []
        words += [T.COLORS[o.color]] if "color" in keys else []
        return " ".join([*words, self.word(o.cls) if "cls" in keys else self.hyper(o.cls)])

    def noun_phrase(self, sc: ImageScene, c: int, p_color=0.7, p_size=0.3) -> tuple[str, bool]:
        """'a small red dog' or 'two dogs' for the objects of class c; (phrase, is plural)."""
        objs = [o for o in sc.objects if o.cls == c]
        if len(objs) > 1:
            same = len({o.color for o in objs}) == 1
            color = f"{T.COLORS[objs[0].color]} " if same and self.chance(p_color) else ""
            return f"{T.NUMBER_WORDS[len(objs)]} {color}{self.plural(c)}", True
        o, words = objs[0], [self.word(c)]
        if self.chance(p_color):
            words.insert(0, T.COLORS[o.color])
        if o.size != 1 and self.chance(p_size):
            words.insert(0, T.SIZES[o.size // 2])
        return f"{T.article(words[0])} {' '.join(words)}", False

    def relation(self, a: Obj, b: Obj) -> str:
        dx = (a.box[0] + a.box[2] - b.box[0] - b.box[2]) / 2
        dy = (a.box[1] + a.box[3] - b.box[1] - b.box[3]) / 2
        if max(abs(dx), abs(dy)) < 0.15:
            return self.pick(T.RELATIONS[4:])
        if abs(dx) >= abs(dy):
            return T.RELATIONS[0] if dx < 0 else T.RELATIONS[1]
        return T.RELATIONS[2] if dy < 0 else T.RELATIONS[3]  # y grows downwards

    # -- coco_like: literal, several per image
    def captions(self, sc: ImageScene, n: int) -> list[dict]:
        texts = self.distinct(n, lambda j: None, lambda _: {"text": self.caption(sc)})
        return [
            {"kind": "caption", "text": t["text"], "caption_id": sc.index * 10 + j}
            for j, t in enumerate(texts)
        ]

    def caption(self, sc: ImageScene) -> str:
        classes = [int(c) for c in self.rng.permutation(sc.classes())]
        fits = [
            t for t in T.CAPTION_TEMPLATES if sum(f"{{{x}}}" in t for x in "abc") <= len(classes)
        ]
        nps = [self.noun_phrase(sc, c) for c in classes[:3]] + [("", False)] * 2
        first = [next(o for o in sc.objects if o.cls == c) for c in classes[:2]]
        return self.pick(fits).format(
            a=nps[0][0],
            b=nps[1][0],
            c=nps[2][0],
            be="are" if nps[0][1] else "is",
            rel=self.relation(*first) if len(first) == 2 else "",
            stuff=T.STUFF[sc.stuff[0]],
        )

    # -- cc_like: one alt-text, other words, loosely aligned
    def alt_phrase(self, c: int, color: int | None, literal_p: float) -> str:
        if self.chance(literal_p):
            noun = self.word(c)
        else:
            noun = self.pick(self.w.class_table[c][3]) if self.chance(0.7) else self.hyper(c)
        words = [noun]
        if color is not None and self.chance(0.3):
            words.insert(0, T.COLORS[color] if self.chance(0.1) else T.ALT_COLORS[color])
        if self.chance(0.5):
            words.insert(0, self.pick(T.ALT_ADJECTIVES))
        return f"{T.article(words[0])} {' '.join(words)}"

    def alt_text(self, sc: ImageScene) -> list[dict]:
        style, lit = self.pick(T.ALT_STYLES), self.cfg.alt_literal
        if self.chance(0.1):
            return [{"kind": "caption", "text": f"{style} {self.pick(T.ALT_SCENES)} ."}]
        objs = sorted(sc.objects, key=lambda o: -area(o))
        if self.chance(self.cfg.alt_misaligned):
            phrase = self.alt_phrase(self.absent_class(sc), None, lit)
        else:
            phrase = self.alt_phrase(objs[0].cls, objs[0].color, lit)
        if len(objs) > 1 and objs[1].cls != objs[0].cls and self.chance(0.2):
            phrase += " and " + self.alt_phrase(objs[1].cls, objs[1].color, lit)
        place = f" {self.pick(T.ALT_PLACES)}" if self.chance(0.6) else ""
        return [{"kind": "caption", "text": f"{style} {phrase}{place} ."}]

    # -- ccg_like: the captioner sees detections (argmax of cls_prob), not the truth
    def generated(self, sc: ImageScene, detected: list[int]) -> list[dict]:
        found = [
            (o, d - 1)
            for o, d in zip(sc.objects, detected, strict=True)
            if 1 <= d <= self.w.num_classes
        ]
        found.sort(key=lambda od: -area(od[0]))
        style = f"{self.pick(T.ALT_STYLES)} " if self.chance(0.5) else ""
        if not found:
            return [
                {"kind": "caption", "text": f"{style or 'view of '}{self.pick(T.ALT_SCENES)} ."}
            ]
        o, c = found[0]
        phrase = self.alt_phrase(c, o.color, 0.6)
        if len(found) > 1 and found[1][1] != c and self.chance(0.4):
            phrase += " and " + self.alt_phrase(found[1][1], found[1][0].color, 0.6)
        place = f" on the {T.STUFF[sc.stuff[0]]}" if self.chance(0.3) else ""
        return [{"kind": "caption", "text": f"{style}{phrase}{place} ."}]
