"""The synthetic world behind `vlpdist shards synth`: a seeded stand-in for COCO, CC, VQA,
VizWiz, SNLI-VE and MM-IMDB, small enough for a laptop and built so that the paper's
questions (which pretraining data transfers, in-domain or large) have answers on it.

Layout: text.py (the words), world.py (concepts, domains, scenes, features),
captions.py (pretraining texts), tasks.py (downstream texts and labels), build.py (writing).
"""

from vlpdist.shards.synthetic.build import DATASETS, NOTICE, WORLD_CARD, synthesize

__all__ = ["DATASETS", "NOTICE", "WORLD_CARD", "synthesize"]
