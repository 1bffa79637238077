"""What a linear probe can read from one region of the world: the world card's measure of
how hard its features are, reported so that no model result is read against a guess.

Per visual domain, a few hundred images of a probe pool of their own (their own random
streams: no dataset changes) are rendered; the region of each object is labelled with its
class, colour and size word, a ridge classifier is fitted on half the images and scored on
the other half. The detector's own class (the argmax of cls_prob) is scored beside it.
"""

from __future__ import annotations

import numpy as np

from vlpdist.shards.synthetic.world import CHUNK, World

PROBE_IMAGES = 256  # per domain; half to fit, half to score
RIDGE = 1.0


def linear_probe(world: World, domains=("coco", "web", "blind")) -> dict:
    out = {}
    for domain in domains:
        sc = world.scenes(f"probe_{domain}", domain, PROBE_IMAGES)
        feats, labels, image, detected = [], {"class": [], "color": [], "size": []}, [], []
        for lo in range(0, sc.n, CHUNK):
            for i, img in enumerate(world.render(sc, lo, min(sc.n, lo + CHUNK)), start=lo):
                a = sc.obj_start[i]
                for k, r in enumerate(img["main"]):
                    feats.append(img["feats"][r].astype(np.float64))
                    labels["class"].append(sc.obj_cls[a + k])
                    labels["color"].append(sc.obj_color[a + k])
                    labels["size"].append(sc.obj_size[a + k])
                    image.append(i)
                    detected.append(int(np.argmax(img["cls_prob"][r])) - 1)
        x, fit = np.stack(feats), np.array(image) < sc.n // 2
        x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
        row = {"objects": int(len(x))}
        for key, y in labels.items():
            row[key] = round(_ridge_accuracy(x, np.array(y), fit), 3)
        truth = np.array(labels["class"])[~fit]
        row["detector_class"] = round(float(np.mean(np.array(detected)[~fit] == truth)), 3)
        row["chance"] = {
            k: round(float(np.bincount(np.array(v)[~fit]).max() / (~fit).sum()), 3)
            for k, v in labels.items()
        }
        out[domain] = row
    return out


def _ridge_accuracy(x: np.ndarray, y: np.ndarray, fit: np.ndarray) -> float:
    """One-vs-all ridge regression in its dual form (objects < dims), argmax to classify."""
    classes = np.unique(y[fit])
    targets = (y[fit][:, None] == classes[None, :]).astype(np.float64)
    a = x[fit]
    alpha = np.linalg.solve(a @ a.T + RIDGE * len(a) * np.eye(len(a)), targets - targets.mean(0))
    scores = x[~fit] @ (a.T @ alpha) + targets.mean(0)
    return float(np.mean(classes[scores.argmax(1)] == y[~fit]))
