"""Training engine: the only package that imports deepspeed. `loop.pretrain(cfg)`."""
