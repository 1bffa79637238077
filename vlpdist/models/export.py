"""HF-style export: `config.json` + `model.safetensors` (+ the tokenizer's files), no pickle.

`save_pretrained` writes a local directory (the engine uploads it); `load_pretrained`
rebuilds the same model exactly, or, for fine-tuning, takes an export's encoder under new
heads (`task=...`): the pretraining heads are dropped, the task head starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from vlpdist import __version__
from vlpdist.errors import VlpdistError
from vlpdist.models.flavors import DataDims
from vlpdist.models.model import VLModel, build_model

CONFIG, WEIGHTS = "config.json", "model.safetensors"
TIED = "heads.mlm.decoder.weight"
NOT_TOKENIZER = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".onnx",
)  # an alias of the word embeddings, re-tied on load


def save_pretrained(
    model: VLModel,
    directory: str,
    *,
    arch: str,
    flavor: str,
    labels: list[str] | None = None,
    tokenizer_dir: str | None = None,
    extra: dict | None = None,
) -> None:
    os.makedirs(directory, exist_ok=True)
    size = model.encoder.size
    config = {
        "format": "vlpdist-model",
        "version": 1,
        "created_by": f"vlpdist {__version__}",
        "arch": arch,
        "flavor": flavor,
        "sizes": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(size).items()
        },
        "dims": dataclasses.asdict(model.dims),
        "task": model.task,
        "objectives": list(model.objectives),
        "labels": labels,
        "extra": extra or {},
    }
    if tokenizer_dir:  # its regular files only: never another model's weights or config
        for name in os.listdir(tokenizer_dir):
            src = os.path.join(tokenizer_dir, name)
            if os.path.isfile(src) and name != CONFIG and not name.endswith(NOT_TOKENIZER):
                shutil.copy(src, os.path.join(directory, name))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != TIED}
    save_file(state, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG), "w") as f:  # last: a complete export has it
        json.dump(config, f, indent=1)


def read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG)
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise VlpdistError(f"{path}: not found (not a vlpdist export, or incomplete)") from None
    except json.JSONDecodeError as e:
        raise VlpdistError(f"{path}: not valid JSON ({e.msg})") from None
    if config.get("format") != "vlpdist-model":
        raise VlpdistError(f"{path}: not a vlpdist model export")
    if not os.path.exists(os.path.join(directory, WEIGHTS)):
        raise VlpdistError(f"{os.path.join(directory, WEIGHTS)}: missing (incomplete export)")
    return config


def load_pretrained(
    directory: str,
    *,
    task: str | None = None,
    num_labels: int | None = None,
    freeze_base: bool = False,
) -> VLModel:
    """The exported model; with `task` other than the export's, its encoder under that task's
    head (fresh) and `num_labels` outputs."""
    c = read_config(directory)
    same = task is None or task == c["task"]
    # exports written while DataDims had an (always empty) `extra` field still carry it
    dims = DataDims(**{k: v for k, v in c["dims"].items() if k != "extra"})
    if not same:
        dims = dataclasses.replace(dims, num_labels=num_labels)
    model = build_model(
        c["arch"], c["flavor"], dims, sizes=c["sizes"], objectives=c["objectives"],
        task=c["task"] if same else task,
    )  # fmt: skip
    state = load_file(os.path.join(directory, WEIGHTS))
    target = model if same else model.encoder
    if not same:
        state = {
            k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")
        }
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != TIED]
    if missing or result.unexpected_keys:
        raise VlpdistError(
            f"{directory}: weights do not fit the {c['arch']}/{c['flavor']} model "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    if freeze_base:
        model.freeze_base()
    return model


@torch.no_grad()
def same_weights(a: VLModel, b: VLModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
