"""Models on real batches from vlpdist.data: objectives learn, frozen base stays put,
export round trips, padding samples never count."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vlpdist.config import Config, DataConfig, DataSource, load
from vlpdist.data.loader import Loader
from vlpdist.models.export import load_pretrained, same_weights, save_pretrained
from vlpdist.models.flavors import DataDims
from vlpdist.models.flops import TrainFlops, flops_per_sample
from vlpdist.models.losses import model_inputs, pretrain_losses
from vlpdist.models.model import build_model
from vlpdist.models.tasks import task_loss
from vlpdist.shards.synthetic import synthesize

REPO = Path(__file__).resolve().parents[1]
ARCHS = ["visual_bert", "vilbert"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mworld")
    cfg = load(Config, str(REPO / "configs/synth/tiny.yaml"), command="synth")
    synthesize(cfg, str(out), progress=False)
    return out / "shards"


def loader(world, name, task="pretrain", **kw) -> Loader:
    cfg = DataConfig(sources=[DataSource(str(world / name))], task=task, batch_size=8,
                     num_workers=0, max_regions=16, max_text_tokens=24, answer_min_count=1, **kw)  # fmt: skip
    return Loader(cfg)


def dims_for(ld: Loader, num_labels=None) -> DataDims:
    m = ld.manifest
    return DataDims(vocab_size=ld.vocab_size, visual_dim=m["feature_dim"],
                    num_classes=m["cls_prob_dim"], num_labels=num_labels)  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
def test_every_objective_learns_on_a_fixed_batch(world, arch):
    ld = loader(world, "coco_like")
    batch = next(iter(ld))
    torch.manual_seed(0)
    model = build_model(arch, "tiny", dims_for(ld), objectives=("mlm", "mrc", "mfr", "itm"))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(40):
        losses = pretrain_losses(model(**model_inputs(batch)), batch)
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    last = {k: v.item() for k, v in pretrain_losses(model(**model_inputs(batch)), batch).items()}
    assert set(last) == {"mlm", "mrc", "mfr", "itm"}
    for k in last:
        assert last[k] < 0.7 * first[k], (k, first[k], last[k])


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_base_keeps_encoder_weights_bit_identical(world, arch):
    ld = loader(world, "vqa_train", task="vqa")
    dims = dims_for(ld, num_labels=len(ld.labels))
    model = build_model(arch, "tiny", dims, task="vqa", freeze_base=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.requires_grad for p in model.heads.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for batch in list(ld)[:3]:
        loss = task_loss("vqa", model(**model_inputs(batch))["logits"], batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same if k.startswith("encoder.") else True, k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("heads."))
    assert not model.encoder.training  # frozen features: no dropout


@pytest.mark.parametrize("arch", ARCHS)
def test_export_round_trip_is_exact_and_seeds_finetuning(world, arch, tmp_path):
    ld = loader(world, "coco_like")
    model = build_model(arch, "tiny", dims_for(ld), objectives=("mlm", "mrc", "itm"))
    save_pretrained(model, str(tmp_path / "export"), arch=arch, flavor="tiny")
    again = load_pretrained(str(tmp_path / "export"))
    assert same_weights(model, again)
    batch = next(iter(ld))
    model.eval(), again.eval()
    a, b = model(**model_inputs(batch)), again(**model_inputs(batch))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tuned = load_pretrained(str(tmp_path / "export"), task="snli_ve")
    assert list(tuned.heads) == ["task"]
    enc_a, enc_b = model.encoder.state_dict(), tuned.encoder.state_dict()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)
    assert tuned.heads["task"].net[-1].out_features == 3


def test_padding_samples_never_count(world):
    ld = loader(world, "vqa_train", task="vqa")
    batch = next(iter(ld))
    model = build_model("visual_bert", "tiny", dims_for(ld, len(ld.labels)), task="vqa")
    model.eval()
    logits = model(**model_inputs(batch))["logits"]
    padded = dataclasses.replace(batch, is_pad=batch.is_pad.clone(), targets=batch.targets.clone())
    padded.is_pad[0] = True
    padded.targets[0] = 1.0 - padded.targets[0]
    real_only = dataclasses.replace(padded, targets=batch.targets)
    assert torch.allclose(task_loss("vqa", logits, padded), task_loss("vqa", logits, real_only))
    assert not torch.allclose(task_loss("vqa", logits, padded), task_loss("vqa", logits, batch))


@pytest.mark.parametrize("arch", ARCHS)
def test_flops_per_sample(world, arch):
    ld = loader(world, "coco_like")
    model = build_model(arch, "tiny", dims_for(ld), objectives=("mlm",))
    f = flops_per_sample(model, text_len=24, regions=16)
    assert f["forward"] > 0 and 2.5 * f["forward"] < f["train_step"] < 3.5 * f["forward"]
    bigger = flops_per_sample(model, text_len=24, regions=32)
    assert bigger["forward"] > f["forward"]


@pytest.mark.parametrize("arch", ARCHS)
def test_train_flops_fit_matches_counts_at_shapes_off_its_grid(world, arch):
    """What the telemetry charges a trimmed batch: the fitted count at its own shape."""
    ld = loader(world, "coco_like")
    model = build_model(arch, "tiny", dims_for(ld), objectives=("mlm", "mrc"))
    fit = TrainFlops(model, 36, 100)
    for t, r, mt, mr in ((16, 40, 2, 6), (36, 8, 5, 1), (9, 100, 1, 15), (36, 100, 5, 15)):
        counted = flops_per_sample(model, t, r, masked=(mt, mr))["train_step"]
        assert abs(fit(t, r, mt, mr) - counted) < 0.01 * counted, (t, r, fit(t, r), counted)
    assert fit(16, 40, 2, 6) < 0.6 * fit.padded


MINILM_SIZES = {"hidden_size": 384, "num_layers": 6, "num_heads": 12, "intermediate_size": 1536,
                "max_position": 512}  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
def test_text_init_with_real_minilm_weights_and_tied_decoder(arch, minilm_dir, tmp_path):
    from safetensors.torch import load_file

    sizes = dict(MINILM_SIZES)
    if arch == "vilbert":
        sizes.update(t_biattention_id=[4, 5])  # two co-attention blocks in a 6-layer stream
    dims = DataDims(vocab_size=30522, visual_dim=32, num_classes=5)
    model = build_model(
        arch, "tiny", dims, sizes=sizes, objectives=("mlm", "itm"), text_init=minilm_dir
    )
    ckpt = load_file(str(Path(minilm_dir) / "model.safetensors"))
    emb = model.encoder.word_embeddings.weight
    assert torch.equal(emb, ckpt["embeddings.word_embeddings.weight"])
    assert model.heads["mlm"].decoder.weight is emb  # tied, not copied
    save_pretrained(model, str(tmp_path / "e"), arch=arch, flavor="tiny", tokenizer_dir=minilm_dir)
    assert (tmp_path / "e" / "vocab.txt").exists() and (tmp_path / "e" / "config.json").exists()
    again = load_pretrained(str(tmp_path / "e"))
    assert (
        same_weights(model, again)
        and again.heads["mlm"].decoder.weight is again.encoder.word_embeddings.weight
    )


def test_bench_model_cli(run_cli):
    out = run_cli("bench", "model", "--flavors", "tiny", "--batch", "4", "--steps", "1", "--json")
    assert out.returncode == 0, out.stderr
    rows = [__import__("json").loads(line) for line in out.stdout.splitlines()]
    vb = next(r for r in rows if r["arch"] == "visual_bert")
    assert vb["params"] > 0 and vb["flops_per_sample"] > 0 and vb["ours_step_s"] > 0
    assert vb["hf_step_s"] > 0 and vb["speedup_vs_hf"] > 0
    assert {r["arch"] for r in rows} == {"visual_bert", "vilbert"}


def test_counted_flops_are_kept_per_model_and_draw_nothing_from_the_run(world, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    from vlpdist.engine.telemetry import train_flops

    monkeypatch.setenv("VLPDIST_CACHE_DIR", str(tmp_path))
    ld = loader(world, "coco_like")
    model = build_model("vilbert", "tiny", dims_for(ld), objectives=("mlm", "mrc"))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = train_flops(model, 36, 100)
    assert torch.equal(torch.get_rng_state(), state)  # the run's dropout stream untouched
    (kept,) = (tmp_path / "flops").iterdir()
    again = train_flops(model, 36, 100)  # read back, not counted again
    assert torch.equal(again.coef, first.coef) and again.padded == first.padded
    kept.write_text(json.dumps({"coef": [0.0] * 8}))
    assert train_flops(model, 36, 100)(36, 100) == 0.0  # proof it is read, not recounted
    frozen = build_model("vilbert", "tiny", dims_for(ld), objectives=("mlm", "mrc"),
                         freeze_base=True)  # fmt: skip
    assert TrainFlops.key(frozen, 36, 100) != TrainFlops.key(model, 36, 100)
