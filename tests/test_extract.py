"""`vlpdist shards extract`: images drawn with PIL (some broken) → region features through
a real local Ray (Ray Data), checked on disk."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import images as drawn
import numpy as np
import pytest
import torch

from vlpdist.config import load
from vlpdist.config.extract import ExtractConfig
from vlpdist.errors import ConfigError, ShardError, SourceError
from vlpdist.shards.extract.extractors import (
    box_iou,
    class_nms,
    get_extractor,
    roi_align_mean,
    weights_digest,
)
from vlpdist.shards.extract.images import BadImage, decode, list_images
from vlpdist.shards.extract.pipeline import ExtractActor, extract
from vlpdist.shards.reader import iter_samples, verify
from vlpdist.storage import Storage

pytestmark = pytest.mark.slow  # processes and clusters: scheduled first (conftest)

REPO = Path(__file__).resolve().parents[1]
TESTS = str(Path(__file__).parent)
LIMIT = 89_478_485
TINY_RESNET = {"depths": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "stem": 16}
TINY = {
    "grid": {"input_size": 64, "grid": 3, **TINY_RESNET},
    "detector": {
        "input_size": 64,
        **TINY_RESNET,
        "d_model": 32,
        "layers": 1,
        "queries": 12,
        "min_boxes": 3,
        "max_boxes": 8,
    },  # fmt: skip
    "extractor_plugin:TinyBoxes": {},
}


def cfg(extractor: str, images: str, **kw) -> ExtractConfig:
    return ExtractConfig(extractor=extractor, options=dict(TINY[extractor]), images=images,
                         batch_size=4, images_per_shard=8, progress=False, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("images")
    return str(root), drawn.write_folder(str(root), 20)


def samples(url: str) -> dict[str, object]:
    return {s.meta["image_id"]: s for s in iter_samples(Storage(), url)}


# ---------------------------------------------------------------- decoding and listing


def test_images_that_need_care_decode_upright_in_rgb():
    odd = {name: decode(data, LIMIT)[0] for name, data in drawn.odd_images().items()}
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for a in odd.values())
    assert odd["rotated.jpg"].shape[:2] == (96, 72)  # EXIF orientation 6: stored 96 wide
    assert odd["cmyk.jpg"].shape[:2] == (72, 96)
    # 16-bit grey scaled to 8 bits, not clipped to white
    assert abs(odd["grey16.png"].mean() - odd["grey.png"].mean()) < 1.0
    # alpha 128 over white: brighter than the image itself
    assert odd["alpha.png"].mean() > odd["grey.png"].mean() + 30
    # a large JPEG decodes at the size the model needs, and keeps its full size on record
    big = drawn.with_orientation(drawn.draw(3, (1600, 1200))[0], 6)
    rgb, (w, h) = decode(big, LIMIT, at_least=448)
    assert (w, h) == (1200, 1600) and rgb.shape == (800, 600, 3)  # half of each side, upright


def test_broken_images_raise_with_their_reason():
    for name, (data, word) in drawn.broken_images().items():
        with pytest.raises(BadImage) as e:
            decode(data, LIMIT)
        assert word in e.value.reason, (name, e.value.reason)


def test_images_listed_from_folder_glob_and_tar(tmp_path):
    root = tmp_path / "imgs"
    drawn.write_folder(str(root), 4, broken=False, odd=False)
    storage = Storage()
    refs, notes = list_images(storage, str(root))
    assert [r.image_id for r in refs] == ["a/img0000", "a/img0002", "b/img0001", "b/img0003"]
    assert "1 files that are not images" in notes[0]
    refs, _ = list_images(storage, str(root / "a" / "*.jpg"))
    assert [r.image_id for r in refs] == ["img0002"]  # img0000 is a PNG
    tar_path = tmp_path / "imgs.tar"
    with tarfile.open(tar_path, "w") as tar:
        for r in list_images(storage, str(root))[0]:
            tar.add(r.url, arcname=os.path.relpath(r.url, root))
    refs = list_images(storage, str(tar_path))[0]
    assert [r.image_id for r in refs] == ["a/img0000", "a/img0002", "b/img0001", "b/img0003"]
    assert refs[1].read(storage) == (root / "a" / "img0002.jpg").read_bytes()
    (root / "a" / "img0002.png").write_bytes(b"x")
    with pytest.raises(SourceError, match="two images with the id 'a/img0002'"):
        list_images(storage, str(root))
    with pytest.raises(SourceError, match="images not found"):
        list_images(storage, str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- extractors


def test_roi_align_mean_and_class_nms_by_hand():
    # a feature map that is x in channel 0 and y in channel 1: a box's mean is its centre
    ys, xs = torch.meshgrid((torch.arange(8) + 0.5) / 8, (torch.arange(8) + 0.5) / 8, indexing="ij")
    fmap = torch.stack([xs, ys])
    box = torch.tensor([[0.125, 0.25, 0.5, 0.875]])
    assert torch.allclose(roi_align_mean(fmap, box), torch.tensor([[0.3125, 0.5625]]), atol=1e-5)
    # past the last cell centre the edge value counts (as RoIAlign clamps), never zero
    edge = roi_align_mean(fmap, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    assert torch.allclose(edge, torch.tensor([[0.5, 0.5]]), atol=1e-5)
    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 0.9, 1], [0, 0, 0.9, 1], [0.5, 0.5, 1, 1.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 2, 1])
    assert box_iou(boxes[:1], boxes[1:2]).item() == pytest.approx(0.9)
    # box 1 overlaps box 0 (same class); box 2 is another class; box 3 overlaps box 0 by 0.25
    assert class_nms(boxes, scores, labels, 0.3) == [0, 2, 3]


@pytest.mark.parametrize("name", ["grid", "detector"])
def test_features_do_not_depend_on_the_batch(name):
    ext = get_extractor(name, TINY[name], None, 0)
    actor = ExtractActor(ext, batch_size=4, threads=1)
    import pandas as pd

    def batch(seeds):
        rows = []
        for s in seeds:
            square, (h, w) = ext.prepare(np.asarray(drawn.draw(s)[0]))
            rows.append({"pixels": square.tobytes(), "content_h": h, "content_w": w, "error": ""})
        return pd.DataFrame(rows)

    alone = actor(batch([7]))
    mixed = actor(batch([3, 7, 11]))
    for col in ("feats", "boxes", "cls_prob"):
        assert alone[col].iloc[0] == mixed[col].iloc[1], col
    f = np.load(io.BytesIO(alone["feats"].iloc[0]))
    b = np.load(io.BytesIO(alone["boxes"].iloc[0]))
    if name == "grid":
        assert f.shape == (9, 128) and not len(alone["cls_prob"].iloc[0])
        assert b[0].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3])
    else:
        assert 3 <= f.shape[0] <= 8 and f.shape[1] == 128
        c = np.load(io.BytesIO(alone["cls_prob"].iloc[0]))
        assert c.shape == (f.shape[0], 92) and np.allclose(
            c.astype(np.float32).sum(1), 1, atol=1e-2
        )
    assert ((b >= 0) & (b <= 1)).all()


def test_weights_file_loads_and_is_recorded(tmp_path):
    from safetensors.torch import save_file

    trained = get_extractor("grid", TINY["grid"], None, seed=5).module()
    path = str(tmp_path / "resnet.safetensors")
    # a checkpoint of the inner transformers model, as a user would save it
    save_file({k: v.contiguous() for k, v in trained.resnet.state_dict().items()}, path)
    ext = get_extractor("grid", TINY["grid"], path, seed=0)
    loaded = ext.module()
    for k, v in trained.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    info = ext.describe()
    assert info["weights"] == path and len(info["weights_sha256"]) == 64
    assert get_extractor("grid", TINY["grid"], None, 0).describe()["weights"] == "random init"
    with pytest.raises(ConfigError, match="do not fit"):
        get_extractor("grid", {**TINY["grid"], "widths": [8, 16, 32, 64]}, path, 0).module()
    with pytest.raises(ConfigError, match="weights file not found"):
        get_extractor("grid", {}, str(tmp_path / "none.pt"), 0).module()
    with pytest.raises(ConfigError, match="options.gird: not a setting"):
        get_extractor("grid", {"gird": 3}, None, 0)
    with pytest.raises(ConfigError, match="unknown 'resnet'"):
        get_extractor("resnet", {}, None, 0)


def test_hub_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    """weights=hf:REPO[@REVISION]: a transformers image classifier's checkpoint, laid out as
    huggingface_hub caches it (what a node with a filled cache and no network has); its
    classifier is not part of the extractor and is left out."""
    from huggingface_hub import constants
    from safetensors.torch import save_file
    from transformers import ResNetForImageClassification

    from vlpdist.shards.extract import extractors

    torch.manual_seed(3)
    classifier = ResNetForImageClassification(extractors._resnet_config(TINY_RESNET, num_labels=7))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-resnet"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    state = {k: v.contiguous() for k, v in classifier.state_dict().items()}
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never the network, here
    extractors._hub_snapshot.cache_clear()
    for spec in ("hf:someone/tiny-resnet", f"hf:someone/tiny-resnet@{commit}"):
        ext = get_extractor("grid", TINY["grid"], spec, seed=0)
        loaded = ext.module().state_dict()
        for k, v in classifier.resnet.state_dict().items():
            assert torch.equal(loaded[f"resnet.{k}"], v), k
        info = ext.describe()
        assert info["weights"] == spec and info["weights_revision"] == commit
        assert info["weights_sha256"] == weights_digest(str(repo / "snapshots" / commit))
    with pytest.raises(ConfigError, match="hf:someone/absent: not in the local Hugging Face"):
        get_extractor("grid", TINY["grid"], "hf:someone/absent", 0).module()
    with pytest.raises(ConfigError, match="name a model repository"):
        get_extractor("grid", TINY["grid"], "hf:", 0).describe()
    extractors._hub_snapshot.cache_clear()


# ---------------------------------------------------------------- on Ray Data


def test_a_folder_becomes_a_verified_shard_set(ray_local, folder, tmp_path):
    root, written = folder
    out = str(tmp_path / "grid")
    m = extract(cfg("grid", root), out)
    report = m["build_report"]
    assert m["num_samples"] == len(written) == 26 and report["read"] == 30
    reasons = {s["where"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    for name, (_, word) in drawn.broken_images().items():
        assert word in reasons[name], (name, reasons)
    assert m["extra"]["extractor"]["weights"] == "random init"
    assert m["extra"]["extractor"]["options"]["grid"] == 3
    assert m["feature_dim"] == 128 and m["cls_prob_dim"] is None
    # 30 images in chunks of 8, a shard per chunk; the bad images' places stay empty
    assert [s["num_samples"] for s in m["shards"]] == [8, 8, 6, 4]
    assert verify(Storage(), out).ok
    got = samples(out)
    assert set(got) == set(written)
    assert (got["rotated"].meta["width"], got["rotated"].meta["height"]) == (72, 96)
    assert got["a/img0000"].feats.dtype == np.float16 and got["a/img0000"].feats.shape == (9, 128)
    assert not Storage().exists(os.path.join(out, "_parts"))
    with pytest.raises(ShardError, match="already exists"):
        extract(cfg("grid", root), out)


def test_detector_features_from_a_tar_on_s3(ray_local, folder, s3, tmp_path):
    root, written = folder
    tar_path = tmp_path / "imgs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname=".")
    s3.client().upload_file(str(tar_path), s3.bucket, "raw/imgs.tar")
    det = extract(cfg("detector", s3.url("raw/imgs.tar")), s3.url("shards/det"))
    assert det["num_samples"] == 26 and det["cls_prob_dim"] == 92
    assert len(det["build_report"]["skipped"]) == 4
    got = samples(s3.url("shards/det"))
    assert all(3 <= len(s.feats) <= 8 for s in got.values())
    assert got["b/img0001"].cls_prob.shape[1] == 92


def test_a_killed_extraction_resumes_where_it_stopped(ray_local, folder, tmp_path):
    root, _ = folder
    config = tmp_path / "slow.yaml"
    config.write_text(
        "extractor: extractor_plugin:TinyBoxes\noptions: {seconds_per_batch: 0.3}\n"
        "batch_size: 2\nimages_per_shard: 4\nprogress: false\n"
    )
    out = tmp_path / "killed"
    # the driver joins the running Ray, as under `ray job submit`, and is killed alone
    env = {**os.environ, "PYTHONPATH": TESTS, "RAY_ADDRESS": ray_local}
    cmd = [sys.executable, "-m", "vlpdist", "shards", "extract", str(config), "--out", str(out),
           f"images={root}"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    second = out / "_parts" / "chunk-000001.json"
    try:
        while not second.exists():  # the event: two chunks committed
            assert proc.poll() is None, "the extraction ended before it could be killed"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "index.json").exists()
    slow = load(ExtractConfig, str(config), [f"images={root}"])
    resumed = extract(slow, str(out))
    notes = resumed["build_report"]["notes"]
    assert any(n.startswith("resumed: ") and n.endswith(" of 8 chunks were already committed")
               for n in notes), notes  # fmt: skip
    clean = extract(load(ExtractConfig, str(config), [f"images={root}", "options.seconds_per_batch=0"]),
                    str(tmp_path / "clean"))  # fmt: skip
    # an extractor of one's own (tests/extractor_plugin.py), its settings in the manifest
    assert clean["extra"]["extractor"]["extractor"] == "tiny_boxes"
    assert clean["feature_dim"] == 8 and clean["cls_prob_dim"] == 4
    assert len(samples(str(tmp_path / "clean"))["b/img0003"].boxes) == 5
    # the same images and weights give bit-identical shards, whichever process wrote them
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in clean["shards"]]
    want = clean["build_report"]
    assert resumed["build_report"]["skipped_by_reason"] == want["skipped_by_reason"]
    assert resumed["build_report"]["read"] == want["read"] == 30
    assert not (out / "_parts").exists()


def test_user_mistakes_are_one_line_errors(tmp_path, run_cli):
    grid = str(REPO / "configs/extract/grid.yaml")
    r = run_cli("shards", "extract", grid, "--out", str(tmp_path / "o"), "options.gird=3")
    assert r.returncode == 2 and "options.gird" in r.stderr and "Traceback" not in r.stderr
    cases = [
        ([], "images: name the images"),
        ([f"images={tmp_path}/nope"], "images not found"),
        (["images=x", "extractor=resnet"], "unknown 'resnet'"),
    ]
    for overrides, words in cases:
        with pytest.raises((ConfigError, SourceError), match=words):
            extract(load(ExtractConfig, grid, overrides), str(tmp_path / "o"))


def test_config_show_prints_an_extraction_config(capsys):
    from vlpdist.cli import main

    assert main(["config", "show", "--extract", str(REPO / "configs/extract/detector.yaml"),
                 "options.max_boxes=36"]) == 0  # fmt: skip
    shown = capsys.readouterr().out
    assert "extractor: detector" in shown and "max_boxes: 36" in shown


def test_shipped_extract_configs_load():
    for path in sorted((REPO / "configs/extract").glob("*.yaml")):
        c = load(ExtractConfig, str(path))
        ext = get_extractor(c.extractor, c.options, c.weights, c.seed)
        assert ext.describe()["options"]["input_size"] >= 448


def test_bench_extract_reports_its_figures(ray_local):
    from vlpdist.bench.extract import run

    bench = cfg("grid", "")
    result = run(bench, images=12, size=(160, 120))
    rates = ("loop_images_per_s", "pipeline_images_per_s", "forward_images_per_s")
    assert all(result[k] > 0 for k in rates), result
    assert 0 < result["loop_decode_share"] < 1 and result["pipeline_start_s"] > 0
    want = result["pipeline_images_per_s"] / result["loop_images_per_s"]
    assert result["speedup_vs_loop"] == pytest.approx(want, rel=0.02, abs=2e-3)  # both rounded
    assert result["extractor"]["options"]["grid"] == 3 and result["targets"]["ratio_to_forward"]
    with pytest.raises(ConfigError, match="bench extract draws its own photos"):
        run(cfg("grid", "/somewhere"), images=2, size=(64, 48))
