"""Learning-rate schedule, optimizer parameter groups, and the optimizer every run and
benchmark trains with: small helpers."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)


def warmup_linear(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak lr: linear warmup to 1 over `warmup` updates, then linear decay
    to 0 at `total` (BERT's and MMF's schedule)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases and LayerNorm weights (as BERT trains)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias" or isinstance(module, nn.LayerNorm):
                no_decay.append(p)
            else:
                decay.append(p)
    # a tied weight (MLM decoder = word embeddings) is one parameter: list it once
    seen, unique = set(), []
    for group in (decay, no_decay):
        kept = [p for p in group if id(p) not in seen and not seen.add(id(p))]
        unique.append(kept)
    return [
        {"params": unique[0], "weight_decay": weight_decay},
        {"params": unique[1], "weight_decay": 0.0},
    ]


def optimizer(model: nn.Module, o, fused: bool = False) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over `param_groups` and its warmup-linear schedule, from an `OptimConfig`.
    `fused` (CUDA): DeepSpeed's FusedAdam, one multi-tensor kernel per step."""
    groups = param_groups(model, o.weight_decay)
    opt = _fused_adamw(groups, o) if fused else None
    if opt is None:
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    return opt, LambdaLR(opt, lambda s: warmup_linear(s, o.warmup_steps, o.total_steps))


def _fused_adamw(groups: list[dict], o) -> torch.optim.Optimizer:
    """DeepSpeed's FusedAdam in AdamW mode; where its CUDA op cannot be built (it compiles
    on first use, which needs nvcc), PyTorch's fused AdamW: the same update, also one kernel
    for all tensors."""
    try:
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, adam_w_mode=True)
    except Exception as e:  # noqa: BLE001 - any build failure means: use PyTorch's kernel
        log.warning("optim: DeepSpeed's FusedAdam unavailable (%s); PyTorch's fused AdamW",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)  # fmt: skip
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True)
