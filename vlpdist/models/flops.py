"""FLOPs per sample, counted rather than derived by hand: `torch.utils.flop_counter`
counts the matmuls (attention included) of one real forward and backward of the model on a
one-sample batch of the given text length and region count. The engine divides achieved
FLOP/s by the device peak for MFU.
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlpdist.models.model import VLModel


def dummy_inputs(model: VLModel, text_len: int = 36, regions: int = 100, mask_frac: float = 0.15,
                 masked: tuple[int, int] | None = None):  # fmt: skip
    """A one-sample batch of model inputs; the masks of pretraining objectives select
    `mask_frac` of rows at random, or exactly `masked` = (text tokens, regions)."""
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
        if masked is None:
            inputs["mlm_mask"] = torch.rand(1, text_len) < mask_frac
            inputs["mrm_mask"] = torch.rand(1, regions) < mask_frac
        else:
            inputs["mlm_mask"] = torch.arange(text_len)[None] < masked[0]
            inputs["mrm_mask"] = torch.arange(regions)[None] < masked[1]
    return inputs


def flops_per_sample(model: VLModel, text_len: int = 36, regions: int = 100,
                     masked: tuple[int, int] | None = None) -> dict[str, int]:  # fmt: skip
    """{"forward": FLOPs of one sample's forward, "train_step": forward + backward}."""
    was_training = model.training
    model.train()
    with torch.random.fork_rng():  # counting draws nothing from the run's own generator
        torch.manual_seed(0)
        return _count(model, dummy_inputs(model, text_len, regions, masked=masked), was_training)


def _count(model: VLModel, inputs: dict, was_training: bool) -> dict[str, int]:
    with FlopCounterMode(display=False) as fwd:
        out = model(**inputs)
    forward = fwd.get_total_flops()
    loss = sum(v.float().sum() for v in out.values())
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"forward": int(forward), "train_step": int(forward + bwd.get_total_flops())}


class TrainFlops:
    """Train-step FLOPs of one sample of text length t and r regions, of which m_t tokens
    and m_r regions are masked (the pretraining heads' share), for batches whose padding is
    trimmed: counted at a grid of shapes and fitted by the polynomial a transformer's count
    is (embeddings, projections and feed-forwards linear in the tokens, attention quadratic,
    the MLM / MRM heads linear in the masked rows)."""

    def __init__(self, model: VLModel, t_max: int, r_max: int, coef: list[float] | None = None):
        """Counted now, or from the `coef` of an earlier count of the same model (`key`)."""
        if coef is not None:
            self.coef = torch.tensor(coef, dtype=torch.float64)
            self.padded = self._padded(model, t_max, r_max)
            return
        ts = sorted({max(1, t_max // 4), max(1, t_max // 2), t_max})
        rs = sorted({max(1, r_max // 4), max(1, r_max // 2), r_max})
        rows, counts = [], []
        for i, t in enumerate(ts):
            for j, r in enumerate(rs):
                # masked rows: 10% or 20% in turn, so that they vary apart from t and r
                frac = (0.1, 0.2)[(i + j) % 2]
                m = (round(frac * t), round(frac * r)) if model.objectives else (0, 0)
                rows.append(self._basis(t, r, *m))
                counts.append(flops_per_sample(model, t, r, masked=m)["train_step"])
        a, y = torch.tensor(rows, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)
        self.coef = torch.linalg.lstsq(a, y.unsqueeze(1)).solution.squeeze(1)
        self.padded = self._padded(model, t_max, r_max)

    def _padded(self, model: VLModel, t_max: int, r_max: int) -> int:
        """An untrimmed sample with 15% of its rows masked."""
        m = (round(0.15 * t_max), round(0.15 * r_max)) if model.objectives else (0, 0)
        return round(self(t_max, r_max, *m))

    @staticmethod
    def key(model: VLModel, t_max: int, r_max: int) -> str:
        """What the count depends on: every module and its shapes, which parameters train,
        the objectives, the maximal shape, torch's counter."""
        trained = "".join("1" if p.requires_grad else "0" for p in model.parameters())
        text = f"{model!r}|{trained}|{sorted(model.objectives)}|{t_max}|{r_max}|{torch.__version__}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @staticmethod
    def _basis(t: int, r: int, mt: float, mr: float) -> list[float]:
        return [1.0, t, r, t * t, r * r, t * r, mt, mr]

    def __call__(self, t: int, r: int, mt: float = 0.0, mr: float = 0.0) -> float:
        return float(torch.tensor(self._basis(t, r, mt, mr), dtype=torch.float64) @ self.coef)
