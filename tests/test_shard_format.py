"""The shard format: writer, manifest, offsets, plain tar/webdataset readability, verify."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile

import numpy as np
import pytest

from vlpdist.errors import ShardError
from vlpdist.shards import schema
from vlpdist.shards.reader import inspect, iter_samples, load_manifest, verify
from vlpdist.shards.writer import BuildReport, ShardWriter
from vlpdist.storage import Storage

D = 64


def make_sample(i: int, regions: int = 10, dim: int = D, **meta) -> schema.Sample:
    rng = np.random.default_rng(i)
    xy = rng.uniform(0, 0.5, (regions, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.1, 0.5, (regions, 2))], 1).astype(np.float32)
    probs = rng.dirichlet(np.ones(5), regions).astype(np.float16)
    texts = [{"kind": "caption", "text": f"caption {i}", "ids": [i, i + 1]}]
    return schema.Sample(
        key=schema.make_key(f"img.{i}"),
        feats=rng.standard_normal((regions, dim)).astype(np.float16),
        boxes=boxes,
        cls_prob=probs,
        meta={"image_id": f"img.{i}", "width": 640, "height": 480, "source": "test",
              "split": "train", "texts": meta.get("texts", texts)},
    )  # fmt: skip


def write_set(url: str, n: int = 25, target: int = 20_000, extra_bad: bool = False) -> dict:
    report = BuildReport()
    writer = ShardWriter(Storage(), url, "unit", report, target_shard_bytes=target, progress=False)
    for i in range(n):
        writer.add(make_sample(i), where=f"list.json:{i + 1}")
    if extra_bad:
        writer.add(make_sample(100, dim=D + 1), where="list.json:101")  # wrong dim
        writer.add(make_sample(3), where="list.json:102")  # duplicate key
        writer.add(make_sample(101, texts=[]), where="list.json:103")  # no texts
    return writer.commit("test", {"source": "test"}, None)


def test_manifest_and_offsets(tmp_path):
    url = str(tmp_path / "set")
    m = write_set(url)
    assert m["num_samples"] == 25 and len(m["shards"]) > 2  # rolled over at the target size
    assert m["feature_dim"] == D and m["cls_prob_dim"] == 5
    assert sum(s["num_samples"] for s in m["shards"]) == 25
    assert m == load_manifest(Storage(), url)
    for shard in m["shards"]:
        raw = (tmp_path / "set" / shard["name"]).read_bytes()
        assert len(raw) == shard["bytes"]
        offsets = shard["offsets"]
        assert len(offsets) == shard["num_samples"] + 1
        for i in range(shard["num_samples"]):
            # a sample's byte range alone is a valid tar holding exactly that sample
            piece = raw[offsets[i] : offsets[i + 1]] + b"\0" * 1024
            with tarfile.open(fileobj=io.BytesIO(piece)) as t:
                names = t.getnames()
            key = names[0].split(".")[0]
            assert sorted(n.split(".", 1)[1] for n in names) == [
                "boxes.npy",
                "cls_prob.npy",
                "feats.npy",
                "json",
            ]
            assert all(n.startswith(key + ".") for n in names)


def test_samples_round_trip_exactly(tmp_path):
    url = str(tmp_path / "set")
    write_set(url)
    got = list(iter_samples(Storage(), url))
    assert [s.key for s in got] == [make_sample(i).key for i in range(25)]
    for i, s in enumerate(got):
        ref = make_sample(i)
        assert s.feats.dtype == np.float16 and s.boxes.dtype == np.float32
        np.testing.assert_array_equal(s.feats, ref.feats)
        np.testing.assert_array_equal(s.boxes, ref.boxes)
        np.testing.assert_array_equal(s.cls_prob, ref.cls_prob)
        assert s.meta == ref.meta


def test_plain_tar_and_plain_webdataset_read_the_shards(tmp_path):
    import webdataset as wds

    url = str(tmp_path / "set")
    m = write_set(url)
    first = str(tmp_path / "set" / m["shards"][0]["name"])
    listing = subprocess.run(["tar", "-tf", first], capture_output=True, text=True, check=True)
    assert "img_0.feats.npy" in listing.stdout.split()
    urls = [str(tmp_path / "set" / s["name"]) for s in m["shards"]]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False).decode():
        ref = make_sample(len(seen))
        np.testing.assert_array_equal(sample["feats.npy"], ref.feats)
        assert sample["json"]["texts"] == ref.meta["texts"]
        seen.append(sample["__key__"])
    assert len(seen) == 25


def test_same_input_gives_identical_bytes(tmp_path):
    a = write_set(str(tmp_path / "a"))
    b = write_set(str(tmp_path / "b"))
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_bad_samples_are_skipped_counted_and_listed(tmp_path):
    m = write_set(str(tmp_path / "set"), extra_bad=True)
    rep = m["build_report"]
    assert m["num_samples"] == 25 and rep["written"] == 25 and rep["skipped_count"] == 3
    reasons = {s["where"]: s["reason"] for s in rep["skipped"]}
    assert reasons["list.json:101"] == f"feature dim {D + 1} != {D} of this dataset"
    assert reasons["list.json:102"] == "duplicate sample key 'img_3'"
    assert reasons["list.json:103"] == "no texts"


def test_existing_set_needs_overwrite_and_empty_set_fails(tmp_path):
    url = str(tmp_path / "set")
    write_set(url, n=3)
    with pytest.raises(ShardError, match="already exists here; use --overwrite"):
        ShardWriter(Storage(), url, "unit", BuildReport(), progress=False)
    w = ShardWriter(Storage(), url, "unit", BuildReport(), progress=False, overwrite=True)
    with pytest.raises(ShardError, match="no sample could be written"):
        w.commit("test", {}, None)
    assert load_manifest(Storage(), url)["num_samples"] == 3  # a failed rebuild keeps the old set
    big = write_set(str(tmp_path / "big"), n=25)
    assert len(big["shards"]) > 1
    replaced = ShardWriter(Storage(), str(tmp_path / "big"), "unit", BuildReport(), overwrite=True)
    replaced.add(make_sample(0))
    replaced.commit("test", {}, None)
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["000000.tar", "index.json"]
    assert verify(Storage(), str(tmp_path / "big")).samples == 1
    with pytest.raises(ShardError, match="never committed"):
        load_manifest(Storage(), str(tmp_path / "nothing"))


def corrupt(path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flip-data":
        raw[2000] ^= 0xFF  # inside the first sample's member data
    elif how == "flip-header":
        raw[10] ^= 0xFF  # inside the first tar header's name field
    elif how == "truncate":
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["flip-data", "flip-header", "truncate", "delete"])
def test_verify_names_the_bad_shard(tmp_path, run_cli, how):
    url = str(tmp_path / "set")
    m = write_set(url)
    assert verify(Storage(), url).ok
    ok = run_cli("shards", "verify", url)
    assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stderr
    bad = tmp_path / "set" / m["shards"][1]["name"]
    if how == "delete":
        bad.unlink()
    else:
        corrupt(bad, how)
    report = verify(Storage(), url)
    assert not report.ok
    assert all(p.startswith(str(bad)) for p in report.problems), report.problems
    out = run_cli("shards", "verify", url)
    assert out.returncode == 1
    assert f"FAIL {bad}" in out.stderr and "Traceback" not in out.stderr
    expected = {"flip-data": "sha256 mismatch", "flip-header": "corrupt or truncated tar",
                "truncate": "sha256 mismatch", "delete": "not found"}[how]  # fmt: skip
    assert expected in out.stderr


def test_verify_and_inspect_on_s3(s3, run_cli):
    url = s3.url("shards", "unit")
    m = write_set(url)
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket)["Contents"])
    assert keys == sorted(
        [f"shards/unit/{s['name']}" for s in m["shards"]] + ["shards/unit/index.json"]
    )
    assert run_cli("shards", "verify", url).returncode == 0
    info = inspect(Storage(), url, n_samples=2)
    assert info["num_samples"] == 25 and info["feature_dim"] == D and len(info["samples"]) == 2
    shown = run_cli("shards", "inspect", url, "--json")
    assert json.loads(shown.stdout)["num_samples"] == 25
    # a flipped byte in the object store is caught and named too
    name = m["shards"][0]["name"]
    key = f"shards/unit/{name}"
    body = bytearray(s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    body[3000] ^= 1
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=bytes(body))
    out = run_cli("shards", "verify", url)
    assert out.returncode == 1 and f"FAIL {url}/{name}: sha256 mismatch" in out.stderr


def test_cli_errors_are_one_line(s3, run_cli, tmp_path):
    for args in (
        ("shards", "verify", "s3://no-such-bucket-vlp/x"),
        ("shards", "inspect", str(tmp_path / "empty")),
    ):
        out = run_cli(*args)
        assert out.returncode == 2, out
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    out = run_cli("shards", "verify", "s3://no-such-bucket-vlp/x")
    assert "no such bucket 'no-such-bucket-vlp'" in out.stderr


def test_overwrite_keeps_the_new_tokenizer_and_drops_leftovers(tmp_path, minilm_dir):
    from vlpdist.shards.tokenize import TextEncoder

    url = str(tmp_path / "set")
    enc = TextEncoder.load(minilm_dir, 16)
    for round_ in range(2):  # the second round replaces a one-shard set
        w = ShardWriter(Storage(), url, "unit", BuildReport(), progress=False, overwrite=True)
        w.add(make_sample(round_))
        m = w.commit("test", {}, enc)
        if round_ == 0:
            (tmp_path / "set" / "tokenizer" / "stale-vocab.txt").write_text("old")
            (tmp_path / "set" / "000007.tar").write_bytes(b"old shard")
    files = sorted(p.name for p in (tmp_path / "set" / "tokenizer").iterdir())
    assert files == sorted(m["tokenizer"]["files"]) and "stale-vocab.txt" not in files
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        "000000.tar",
        "index.json",
        "tokenizer",
    ]
    assert verify(Storage(), url).ok

    (tmp_path / "set" / "tokenizer" / m["tokenizer"]["files"][0]).write_text("{}")
    problems = verify(Storage(), url).problems
    assert problems == [f"{url}/tokenizer: tokenizer files do not match the manifest's sha256"]
    (tmp_path / "set" / "tokenizer" / m["tokenizer"]["files"][0]).unlink()
    assert verify(Storage(), url).problems[0].endswith(": not found")
