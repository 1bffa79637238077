"""Studies: the grid of pretraining x fine-tuning runs (grid.py), their records (results.py)
and the Ray driver that schedules them (runner.py). The only package that imports ray."""
