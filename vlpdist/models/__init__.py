"""Models: VisualBERT and ViLBERT encoders, pretraining and task heads, pure losses,
HF-style export. Single-device nn.Modules: no DeepSpeed, Ray or storage in here.

`build_model` (model.py), `model_inputs` / `pretrain_losses` / `task_loss` (losses.py),
`save_pretrained` / `load_pretrained` (export.py), `FLAVORS` (flavors.py).
"""
