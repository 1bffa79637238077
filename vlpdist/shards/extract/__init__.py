"""Region features from images: `vlpdist shards extract` (see pipeline.py). The only part
of vlpdist besides `study` that uses Ray (Ray Data)."""
