"""The hand-off between runs: consolidated HF-style weights on storage.

`export` writes the model at `<run>/export/` (the end of pretraining) or `<run>/best/` (the
best fine-tuned model by the val metric): ZeRO-3 parameters gathered first, the shard set's
tokenizer included, `COMMITTED` written last. `init_model` starts fine-tuning from such an
export, after checking that it is complete and fits the data.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch.distributed as tdist

from vlpdist.engine.checkpoint import COMMIT, node_staging
from vlpdist.engine.dist import Dist
from vlpdist.errors import VlpdistError
from vlpdist.models.export import load_pretrained, read_config, save_pretrained
from vlpdist.models.flavors import DataDims
from vlpdist.storage import Storage, is_local, join


def export(engine, dist: Dist, storage: Storage, url: str, cfg, tokenizer_dir: str,
           labels: list[str] | None, extra: dict) -> str:  # fmt: skip
    """Every rank calls this (ZeRO-3 gathers collectively); rank 0 writes."""
    import deepspeed

    params = list(engine.module.parameters())
    gather = cfg.deepspeed.zero_stage == 3  # ZeRO-3 partitions parameters: gather them first
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=gather):
        if dist.is_main:
            if storage.exists(join(url, COMMIT)):  # a best/ being replaced: incomplete until done
                storage.rm(join(url, COMMIT))
            with tempfile.TemporaryDirectory() as tmp:
                save_pretrained(engine.module, tmp, arch=cfg.model.arch, flavor=cfg.model.flavor,
                                labels=labels, tokenizer_dir=tokenizer_dir, extra=extra)  # fmt: skip
                for name in sorted(os.listdir(tmp)):
                    storage.put_file(os.path.join(tmp, name), join(url, name))
            storage.write_text(join(url, COMMIT), json.dumps(extra))
    tdist.barrier()
    return url


def fetch(storage: Storage, dist: Dist, url: str) -> str:
    """A local directory holding the export at `url` (checked complete by the preflight),
    downloaded once per node."""
    if is_local(url):
        return url
    local = node_staging(url, "init")
    if dist.local_rank == 0:
        storage.get_dir(url, local)
    tdist.barrier()
    return local


def init_model(storage: Storage, dist: Dist, cfg, dims: DataDims, labels: list[str] | None):
    """The export's encoder under a fresh head for `cfg.data.task`; one clear line when the
    export is missing, incomplete, of another architecture or pretrained on other data."""
    url = cfg.run.init_from
    local = fetch(storage, dist, url)
    c = read_config(local)
    m = cfg.model
    if (c["arch"], c["flavor"]) != (m.arch, m.flavor):
        raise VlpdistError(
            f"run.init_from {url} is a {c['arch']}/{c['flavor']} export, but the config says "
            f"model.arch={m.arch} model.flavor={m.flavor}; make them agree"
        )
    got = c["dims"]
    for key in ("vocab_size", "visual_dim"):
        if got[key] != getattr(dims, key):
            raise VlpdistError(
                f"run.init_from {url} was pretrained with {key} {got[key]}, the data "
                f"{cfg.data.sources[0].url} has {getattr(dims, key)}: another tokenizer or "
                "feature extractor"
            )
    model = load_pretrained(local, task=cfg.data.task, num_labels=dims.num_labels,
                            freeze_base=m.freeze_base)  # fmt: skip
    return model, c
