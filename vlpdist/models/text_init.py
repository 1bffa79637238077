"""Start an encoder's text part from a pretrained HF BERT checkpoint (the paper starts both
VisualBERT and ViLBERT from bert-base-uncased).

Weights are read from `model.safetensors` (never unpickled; a `pytorch_model.bin` is read
with `weights_only=True`). Everything is checked before anything is copied, so a wrong
checkpoint leaves the model untouched and names the first tensor that does not fit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlpdist.errors import VlpdistError
from vlpdist.models.base import Encoder

# every BERT checkpoint has this tensor; what precedes it is the checkpoint's prefix:
# "" (BertModel, sentence-transformers), "bert." (BertForPreTraining), "visual_bert." ...
ANCHOR = "embeddings.word_embeddings.weight"
# MLM-only checkpoints (BertForMaskedLM) have no pooler; the pooler then stays as initialised
OPTIONAL = ("pooler.",)


def load_text_weights(encoder: Encoder, name_or_path: str) -> list[str]:
    """Copy every tensor of `encoder.text_weight_map()` from the checkpoint; returns the
    encoder parameter names that were loaded."""
    tensors = _read(name_or_path)
    prefix = _prefix(tensors, name_or_path)
    params = dict(encoder.named_parameters())
    plan: list[tuple[str, torch.Tensor]] = []
    for hf_name, ours in encoder.text_weight_map().items():
        src = tensors.get(prefix + hf_name)
        if src is None:
            if hf_name.startswith(OPTIONAL):
                continue
            raise VlpdistError(
                f"text_init {name_or_path}: {prefix + hf_name} is not in the checkpoint; "
                "build the model with the checkpoint's sizes"
            )
        dst = params[ours]
        if src.shape != dst.shape:
            raise VlpdistError(
                f"text_init {name_or_path}: {prefix + hf_name} has shape {list(src.shape)}, "
                f"the model's is {list(dst.shape)}; build the model with the checkpoint's sizes"
            )
        plan.append((ours, src))
    with torch.no_grad():
        for ours, src in plan:
            params[ours].copy_(src)  # copy_ casts to the model's dtype and device
    return [ours for ours, _ in plan]


def _read(name_or_path: str) -> dict[str, torch.Tensor]:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        file = _weights_file(path, name_or_path)
    elif path.is_file():
        file = path
    elif path.is_absolute() or name_or_path.startswith((".", "~")):
        raise VlpdistError(f"text_init {name_or_path}: no such file or directory")
    else:
        file = _from_hub(name_or_path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(file))
        else:
            tensors = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or non-checkpoint file: the user's to fix
        raise VlpdistError(f"text_init {name_or_path}: cannot read {file.name}: {e}") from e
    # TF-converted BERT checkpoints name LayerNorm parameters gamma/beta
    return {_modern(k): v for k, v in tensors.items()}


def _weights_file(directory: Path, name: str) -> Path:
    for candidate in ("model.safetensors", "pytorch_model.bin"):
        if (directory / candidate).is_file():
            return directory / candidate
    raise VlpdistError(
        f"text_init {name}: no model.safetensors or pytorch_model.bin in the directory"
    )


def _from_hub(name: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name, "model.safetensors"))
    except Exception as e:  # offline, unknown repo, no safetensors: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VlpdistError(
            f"text_init {name}: not a local directory and model.safetensors could not be "
            f"fetched from the hub ({first})"
        ) from e


def _prefix(tensors: dict[str, torch.Tensor], name: str) -> str:
    found = sorted(k[: -len(ANCHOR)] for k in tensors if k.endswith(ANCHOR))
    if not found:
        raise VlpdistError(f"text_init {name}: no {ANCHOR}, not a BERT checkpoint")
    return min(found, key=len)  # a model nested deeper is not the text encoder


def _modern(key: str) -> str:
    if "LayerNorm" in key:
        if key.endswith(".gamma"):
            return key[: -len("gamma")] + "weight"
        if key.endswith(".beta"):
            return key[: -len("beta")] + "bias"
    return key
