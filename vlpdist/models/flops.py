"""FLOPs per sample, counted rather than derived by hand: `torch.utils.flop_counter`
counts the matmuls (attention included) of one real forward and backward of the model on a
one-sample batch of the given text length and region count. The engine divides achieved
FLOP/s by the device peak for MFU.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlpdist.models.model import VLModel


def dummy_inputs(model: VLModel, text_len: int = 36, regions: int = 100, mask_frac: float = 0.15):
    """A one-sample batch of model inputs; the masks of pretraining objectives select
    `mask_frac` of rows."""
    d = model.dims
    inputs = {
        "input_ids": torch.randint(0, d.vocab_size, (1, text_len)),
        "token_type_ids": torch.zeros(1, text_len, dtype=torch.long),
        "attention_mask": torch.ones(1, text_len, dtype=torch.long),
        "feats": torch.rand(1, regions, d.visual_dim),
        "boxes": torch.tensor([0.1, 0.1, 0.6, 0.7]).expand(1, regions, 4).clone(),
        "region_mask": torch.ones(1, regions, dtype=torch.long),
    }
    if model.objectives:
        inputs["mlm_mask"] = torch.rand(1, text_len) < mask_frac
        inputs["mrm_mask"] = torch.rand(1, regions) < mask_frac
    return inputs


def flops_per_sample(model: VLModel, text_len: int = 36, regions: int = 100) -> dict[str, int]:
    """{"forward": FLOPs of one sample's forward, "train_step": forward + backward}."""
    was_training = model.training
    model.train()
    torch.manual_seed(0)
    inputs = dummy_inputs(model, text_len, regions)
    with FlopCounterMode(display=False) as fwd:
        out = model(**inputs)
    forward = fwd.get_total_flops()
    loss = sum(v.float().sum() for v in out.values())
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"forward": int(forward), "train_step": int(forward + bwd.get_total_flops())}
