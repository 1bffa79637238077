"""Models: VisualBERT and ViLBERT encoders, pretraining and task heads, pure losses,
HF-style export. Single-device nn.Modules: no DeepSpeed, Ray or storage in here.

`build_model` (model.py), `model_inputs` / `pretrain_losses` (losses.py), each task's heads
and losses (`TASKS`, `task_loss`: tasks.py),
`save_pretrained` / `load_pretrained` (export.py), `FLAVORS` (flavors.py).
"""
