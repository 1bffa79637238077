"""Evaluation and reporting: metric accumulators over model outputs (pure numpy/torch)."""
