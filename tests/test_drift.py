"""Representation drift between real tiny exports, on perturbations worked out by hand."""

from __future__ import annotations

import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlpdist.analysis.drift import distances, drift, main, summary, table
from vlpdist.errors import VlpdistError
from vlpdist.models.export import WEIGHTS, load_pretrained, save_pretrained
from vlpdist.models.flavors import FLAVORS, DataDims
from vlpdist.models.model import build_model
from vlpdist.storage import Storage

DIMS = DataDims(vocab_size=100, visual_dim=32, num_classes=5)
VB = "encoder.encoder.layer.{}.attention."


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{arch: (pretrained dir, fine-tuned dir)}: the fine-tuned export is the pretrained
    encoder under a fresh VQA head, so the encoders start out identical and the heads differ."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for arch in ("visual_bert", "vilbert"):
        torch.manual_seed(0)
        pre = str(root / arch / "pretrain")
        save_pretrained(
            build_model(arch, "tiny", DIMS, objectives=["mlm"]), pre, arch=arch, flavor="tiny"
        )
        fine = str(root / arch / "finetune")
        save_pretrained(
            load_pretrained(pre, task="vqa", num_labels=3), fine, arch=arch, flavor="tiny"
        )
        out[arch] = (pre, fine)
    return out


def perturbed(src: str, dst, changes: dict) -> str:
    """A copy of export `src` at `dst` with `changes[name](tensor)` applied."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, WEIGHTS)
    state = load_file(path)
    for name, fn in changes.items():
        state[name] = fn(state[name]).contiguous()
    save_file(state, path, metadata={"format": "pt"})
    return str(dst)


def row(rows, stream, layer, weight):
    (r,) = [r for r in rows if (r["stream"], r["layer"], r["weight"]) == (stream, layer, weight)]
    return r


def orthogonal_to(w: torch.Tensor) -> torch.Tensor:
    """A matrix of w's shape and norm whose flattened form is orthogonal to w's."""
    a = w.double().flatten()
    r = torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r -= (r @ a) / (a @ a) * a
    r *= a.norm() / r.norm()
    return r.reshape(w.shape).to(w.dtype)


@pytest.mark.parametrize("arch", ["visual_bert", "vilbert"])
def test_untouched_encoder_has_no_drift(exports, arch):
    rows = drift(*exports[arch])
    assert rows and all(r["l1"] == 0.0 and r["angle_deg"] == 0.0 for r in rows)
    assert {r["arch"] for r in rows} == {arch}


def test_visual_bert_rows_and_hand_checked_perturbations(exports, tmp_path):
    pre, fine = exports["visual_bert"]
    w = load_file(os.path.join(fine, WEIGHTS))
    c = 0.125  # exact in float32, so |(w + c) - w| is c up to the rounding of w + c
    fine = perturbed(
        fine,
        tmp_path / "ft",
        {
            VB.format(0) + "self.query.weight": lambda t: t + c,
            VB.format(0) + "self.key.weight": lambda t: -t,
            VB.format(1) + "self.value.weight": orthogonal_to,
            VB.format(1) + "output.dense.weight": lambda t: 2 * t,
        },
    )
    rows = drift(pre, fine)
    n = FLAVORS["visual_bert"]["tiny"].num_layers
    assert [(r["stream"], r["layer"], r["weight"]) for r in rows] == [
        ("single", i, k) for i in range(n) for k in ("query", "key", "value", "output")
    ]
    q = row(rows, "single", 0, "query")
    assert q["l1"] == pytest.approx(c, rel=1e-6) and 0 < q["angle_deg"] < 90
    assert q["param"] == "encoder.encoder.layer.0.attention.self.query.weight"
    k = row(rows, "single", 0, "key")
    assert k["angle_deg"] == pytest.approx(180.0, abs=1e-9)
    assert k["l1"] == pytest.approx(2 * w[VB.format(0) + "self.key.weight"].abs().mean().item())
    assert row(rows, "single", 1, "value")["angle_deg"] == pytest.approx(90.0, abs=1e-6)
    o = row(rows, "single", 1, "output")
    assert o["angle_deg"] == pytest.approx(0.0, abs=1e-6)
    assert o["l1"] == pytest.approx(w[VB.format(1) + "output.dense.weight"].abs().mean().item())
    untouched = [
        r
        for r in rows
        if (r["layer"], r["weight"]) in {(0, "value"), (0, "output"), (1, "query"), (1, "key")}
    ]
    assert len(untouched) == 4 and all(r["l1"] == 0 == r["angle_deg"] for r in untouched)


def test_angle_matches_arccos_of_cosine():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    cos = torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0)
    l1, angle = distances(a, b)
    assert angle == pytest.approx(math.degrees(math.acos(float(cos))), abs=1e-9)
    assert l1 == pytest.approx(float((a - b).abs().mean()))
    assert math.isnan(distances(torch.zeros(3), torch.ones(3))[1])


def test_vilbert_covers_every_stream(exports, tmp_path):
    pre, fine = exports["vilbert"]
    size = FLAVORS["vilbert"]["tiny"]
    fine = perturbed(
        fine,
        tmp_path / "ft",
        {
            "encoder.encoder.v_layer.1.attention.self.value.weight": lambda t: -t,
            "encoder.encoder.c_layer.0.biattention.query2.weight": lambda t: t + 0.5,
            "encoder.encoder.c_layer.1.biOutput.dense1.weight": lambda t: -t,
        },
    )
    rows = drift(pre, fine)
    layers = {
        s: sorted({r["layer"] for r in rows if r["stream"] == s}) for s in ("text", "visual", "co")
    }
    assert layers == {
        "text": list(range(size.num_layers)),
        "visual": list(range(size.v_num_layers)),
        "co": list(range(len(size.t_biattention_id))),
    }
    co_weights = [r["weight"] for r in rows if r["stream"] == "co" and r["layer"] == 0]
    assert sorted(co_weights) == sorted(
        f"{k}_{s}" for k in ("query", "key", "value", "output") for s in "vt"
    )
    assert len(rows) == 4 * (size.num_layers + size.v_num_layers) + 8 * len(size.t_biattention_id)
    assert row(rows, "visual", 1, "value")["angle_deg"] == pytest.approx(180.0, abs=1e-9)
    assert row(rows, "co", 0, "query_t")["l1"] == pytest.approx(0.5, rel=1e-6)
    assert row(rows, "co", 0, "query_t")["param"].endswith("c_layer.0.biattention.query2.weight")
    out_v = row(rows, "co", 1, "output_v")
    assert out_v["angle_deg"] == pytest.approx(180.0, abs=1e-9)
    assert out_v["param"] == "encoder.encoder.c_layer.1.biOutput.dense1.weight"
    moved = {(r["stream"], r["layer"], r["weight"]) for r in rows if r["l1"] > 0}
    assert moved == {("visual", 1, "value"), ("co", 0, "query_t"), ("co", 1, "output_v")}


def test_refuses_mismatched_or_missing_exports(exports, tmp_path):
    vb, vil = exports["visual_bert"][0], exports["vilbert"][1]
    with pytest.raises(VlpdistError) as e:
        drift(vb, vil)
    assert vb in str(e.value) and vil in str(e.value) and "\n" not in str(e.value)
    missing = str(tmp_path / "nowhere")
    with pytest.raises(VlpdistError, match="nowhere"):
        drift(vb, missing)
    other = tmp_path / "small"
    save_pretrained(
        build_model("visual_bert", "tiny", DIMS, sizes={"num_layers": 3}),
        str(other),
        arch="visual_bert",
        flavor="tiny",
    )
    with pytest.raises(VlpdistError, match="num_layers: 2 vs 3"):
        drift(vb, str(other))


def test_summary_is_json_and_matches_rows(exports, tmp_path):
    pre, fine = exports["vilbert"]
    fine = perturbed(
        fine,
        tmp_path / "ft",
        {
            "encoder.encoder.layer.2.attention.self.key.weight": lambda t: t * 0.5 + 0.01,
        },
    )
    rows = drift(pre, fine)
    s = json.loads(json.dumps(summary(rows), allow_nan=False))
    assert s["arch"] == "vilbert" and set(s["streams"]) == {"text", "visual", "co"}
    assert s["mean_l1"] == pytest.approx(sum(r["l1"] for r in rows) / len(rows))
    assert s["mean_angle_deg"] == pytest.approx(sum(r["angle_deg"] for r in rows) / len(rows))
    text = s["streams"]["text"]
    assert text["layers"] == [0, 1, 2, 3]
    assert text["weights"]["key"]["l1"] == [row(rows, "text", i, "key")["l1"] for i in range(4)]
    assert text["weights"]["key"]["angle_deg"][2] > 0
    co = [r for r in rows if r["stream"] == "co"]
    assert s["streams"]["co"]["mean_l1"] == pytest.approx(sum(r["l1"] for r in co) / len(co))


def test_main_writes_table_csv_json_and_png(exports, tmp_path, capsys):
    pre, fine = exports["vilbert"]
    fine = perturbed(
        fine,
        tmp_path / "ft",
        {
            "encoder.encoder.layer.0.attention.output.dense.weight": lambda t: t + 0.1,
        },
    )
    out = tmp_path / "drift"
    assert main(SimpleNamespace(pretrained=pre, finetuned=fine, out=str(out), json=False)) == 0
    printed = capsys.readouterr().out
    assert "angle_deg" in printed and "query_v" in printed and "1.0000e-01" in printed
    png = (out / "drift.png").read_bytes()
    assert len(png) > 1000 and png.startswith(b"\x89PNG\r\n\x1a\n")
    lines = (out / "drift.csv").read_text().splitlines()
    assert lines[0] == "arch,stream,layer,weight,param,l1,angle_deg"
    assert len(lines) == 1 + len(drift(pre, fine))
    record = json.loads((out / "drift.json").read_text())
    assert record["pretrained"] == pre and record["summary"]["arch"] == "vilbert"

    assert main(SimpleNamespace(pretrained=pre, finetuned=fine, out=None, json=True)) == 0
    parsed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(parsed) == len(lines) - 1 and parsed[0]["stream"] == "text"
    assert table(drift(pre, pre)).count("\n") == len(parsed) + 3  # header, rule, 2 gaps


def test_exports_at_storage_urls(exports, s3, tmp_path):
    pre, fine = exports["visual_bert"]
    storage = Storage()
    for name in sorted(os.listdir(pre)):
        storage.put_file(os.path.join(pre, name), s3.url("runs/pre/export", name))
    fine = perturbed(fine, tmp_path / "ft", {VB.format(1) + "self.query.weight": lambda t: -t})
    rows = drift(s3.url("runs/pre/export"), fine)
    assert row(rows, "single", 1, "query")["angle_deg"] == pytest.approx(180.0, abs=1e-9)
    with pytest.raises(VlpdistError, match="runs/none/config.json: not found"):
        drift(s3.url("runs/none"), fine)
    main(SimpleNamespace(pretrained=pre, finetuned=fine, out=s3.url("report"), json=True))
    assert storage.read_bytes(s3.url("report", "drift.png")).startswith(b"\x89PNG")
