"""`vlpdist bench ...`: speed and memory figures as JSON, with side-by-side baselines."""
