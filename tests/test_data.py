"""Streaming: determinism, exact resume across world sizes, balance, mixing, faults, tasks."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import upload
from corrupt import copy_with_corrupt_sample
from faultproxy import FaultProxy

from vlpdist.config import (
    CacheConfig,
    DataConfig,
    DataSource,
    RetryConfig,
    StorageConfig,
)
from vlpdist.data.answers import soft_scores
from vlpdist.data.collate import shuffle_regions
from vlpdist.data.loader import Loader
from vlpdist.errors import ShardError, StorageError, VlpdistError
from vlpdist.shards.reader import iter_samples
from vlpdist.storage import Storage

REPO = Path(__file__).resolve().parents[1]
NO_CACHE = CacheConfig(enabled=False)  # these tests watch range reads (test_cache.py: the cache)


@pytest.fixture(scope="session")
def world(small_world) -> Path:
    return small_world


def cfg_for(url, **kw) -> DataConfig:
    base = dict(batch_size=4, num_workers=0, max_regions=16, max_text_tokens=24, shuffle_window=2)
    base.update(kw)
    srcs = url if isinstance(url, list) else [DataSource(str(url))]
    return DataConfig(sources=srcs, **base)


def units(batch) -> list[tuple]:
    """(image key, text id) of every non-padding sample of a batch."""
    keep = ~batch.is_pad.numpy()
    return [(k, t) for k, t, m in zip(batch.keys, batch.text_ids, keep, strict=True) if m]


def epoch_units(loaders) -> list[tuple]:
    out = []
    for ld in loaders:
        for b in ld:
            out += units(b)
    return out


def test_every_sample_once_per_epoch_and_counts(world):
    m = json.loads((world / "coco_like/index.json").read_text())
    assert len(m["shards"]) > 2
    got = epoch_units([Loader(cfg_for(world / "coco_like"))])
    keys = [k for k, _ in got]
    assert len(keys) == len(set(keys)) == m["num_samples"]
    vqa = epoch_units([Loader(cfg_for(world / "vqa_train", task="vqa", answer_min_count=1))])
    assert (
        len(vqa)
        == len(set(vqa))
        == m["num_samples"] * 0
        + json.loads((world / "vqa_train/index.json").read_text())["num_texts"]
    )


def signature(batches) -> list:
    return [
        (b.keys, b.text_ids, b.input_ids.tolist(), b.mlm_labels.tolist(), b.mrm_mask.tolist(),
         b.itm_labels.tolist())
        for b in batches
    ]  # fmt: skip


def test_same_seed_same_batches_whatever_the_worker_count(world):
    runs = {
        w: signature(list(Loader(cfg_for(world / "coco_like", num_workers=w)))) for w in (0, 1, 3)
    }
    assert runs[0] == runs[1] == runs[3]
    other = signature(list(Loader(cfg_for(world / "coco_like", seed=1))))
    assert other != runs[0]
    ld = Loader(cfg_for(world / "coco_like"))
    first, second = signature(list(ld)), signature(list(ld))  # epoch 0, then epoch 1
    assert first == runs[0] and second != first


@pytest.mark.parametrize("span", [1, 8])
@pytest.mark.parametrize("sizes", [(2, 1, 4), (3, 2), (1, 3)])
def test_resume_exact_across_world_sizes(world, sizes, span):
    """Consume part of an epoch on W ranks, save, continue on W' ranks: nothing lost or
    repeated. Ranks are simulated in one process, each with its own loader."""
    url = world / "coco_like"
    total = json.loads((url / "index.json").read_text())["num_samples"]
    seen, state = [], None
    for phase, world_size in enumerate(sizes):
        cfg = cfg_for(url, read_span=span)
        loaders = [Loader(cfg, rank=r, world_size=world_size) for r in range(world_size)]
        if state:
            for ld in loaders:
                ld.load_state_dict(state)
        counts = {len(ld) for ld in loaders}
        assert len(counts) == 1, counts  # balanced: same number of batches on every rank
        steps = counts.pop()
        take = steps if phase == len(sizes) - 1 else max(1, steps // 3)
        for ld in loaders:
            it = iter(ld)
            for _ in range(take):
                seen += units(next(it))
        state = loaders[0].state_dict()
        assert all(ld.state_dict() == state for ld in loaders)
    keys = [k for k, _ in seen]
    assert len(keys) == total and len(set(keys)) == total


def test_uneven_shards_give_every_rank_the_same_batch_count(world):
    m = json.loads((world / "cc_like/index.json").read_text())
    assert len({s["num_samples"] for s in m["shards"]}) > 1  # the shards are uneven
    for world_size in (2, 3, 5):
        loaders = [
            Loader(cfg_for(world / "cc_like", batch_size=3), rank=r, world_size=world_size)
            for r in range(world_size)
        ]
        batches = [list(ld) for ld in loaders]
        assert len({len(b) for b in batches}) == 1
        got = [u for bs in batches for b in bs for u in units(b)]
        assert len(got) == len(set(got)) == m["num_samples"]
        pads = sum(int(b.is_pad.sum()) for bs in batches for b in bs)
        assert pads == len(batches[0]) * 3 * world_size - m["num_samples"]


def test_mixing_by_weight_with_per_source_counts(world):
    srcs = [DataSource(str(world / "coco_like"), 3.0), DataSource(str(world / "vqa_p"), 1.0)]
    ld = Loader(cfg_for(srcs, samples_per_epoch=400))
    got = epoch_units([ld])
    per = ld.telemetry()["per_source"]
    assert sum(per.values()) == len(got) == 400
    assert 0.68 < per["coco_like"] / 400 < 0.82, per
    again = Loader(cfg_for(srcs, samples_per_epoch=400))
    assert epoch_units([again]) == got


def test_masking_statistics_in_the_pipeline(world):
    tok = mrm = sel_tok = sel_reg = itm_neg = n = zeroed = 0
    for b in Loader(cfg_for(world / "coco_like", batch_size=8)):
        matched = b.itm_labels == 1
        real = (b.attention_mask == 1) & (b.input_ids != 0)
        tok += int((real[matched].sum(-1) - 2).sum())  # minus [CLS], [SEP]
        sel_tok += int((b.mlm_labels[matched] != -100).sum())
        mrm += int(b.region_mask[matched].sum())
        sel_reg += int(b.mrm_mask[matched].sum())
        itm_neg += int((b.itm_labels == 0).sum())
        n += len(b)
        assert not b.mrm_mask[~matched].any() and (b.mlm_labels[~matched] == -100).all()
        # packed targets: one row per selected region, in mask order
        rows = b.feats[b.mrm_mask]
        assert rows.shape == b.mrm_feats.shape and len(b.mrm_cls) == len(rows)
        zero = rows.float().abs().sum(-1) == 0
        assert torch.equal(rows[~zero], b.mrm_feats[~zero])  # kept as is: equal to the target
        assert (b.mrm_feats[zero].float().abs().sum(-1) > 0).all()  # zeroed: target remembers
        zeroed += int(zero.sum())
    assert 0.13 < sel_tok / tok < 0.25  # 15% plus the at-least-one rule on short captions
    assert 0.13 < sel_reg / mrm < 0.22
    assert 0.35 < itm_neg / n < 0.65
    assert 0.8 < zeroed / sel_reg < 0.97


def test_vqa_soft_scores_match_the_official_formula(world):
    ld = Loader(cfg_for(world / "vqa_train", task="vqa", answer_min_count=1))
    vocab = ld.labels
    index = {a: i for i, a in enumerate(vocab)}
    texts = {}
    for s in iter_samples(Storage(), str(world / "vqa_train")):
        for t in s.texts:
            texts[t["question_id"]] = t["answers"]
    checked = 0
    for b in ld:
        for row, qid in zip(b.targets, b.text_ids, strict=True):
            idx, val = soft_scores(texts[qid], index)
            expect = np.zeros(len(vocab), dtype=np.float32)
            expect[idx] = val
            assert np.allclose(row.numpy(), expect)
            counts = Counter(texts[qid])
            top, c = counts.most_common(1)[0]
            if top in index:  # hand rule: 1, 2, 3, >= 4 annotators → 0.3, 0.6, 0.9, 1.0
                assert row[index[top]].item() == pytest.approx(min(1.0, 0.3 * c), abs=1e-6)
            checked += 1
        assert b.answers == [texts[q] for q in b.text_ids]  # what the official metric scores
    assert checked > 100


def test_shuffled_regions_always_come_from_another_image(world):
    # the eval order keeps an image's questions together: the next sample is mostly the
    # same image, which is no control at all
    cfg = cfg_for(world / "vqa_val", task="vqa", answer_min_count=1, batch_size=16)
    seen = 0
    for b in Loader(cfg):
        shuffled = shuffle_regions(b)
        real = (~b.is_pad).nonzero().flatten().tolist()
        owner = {}  # whose regions each sample now has, found by content
        for i in real:
            hits = [j for j in real if torch.equal(shuffled.feats[i], b.feats[j])]
            assert hits, "regions that are no sample's"
            owner[i] = hits
            assert all(b.keys[j] != b.keys[i] for j in hits), (b.keys[i], [b.keys[j] for j in hits])
        # a permutation: every sample's regions are used once
        assert sorted(min(h) for h in owner.values()) == sorted(min(owner[i]) for i in real)
        assert torch.equal(shuffled.input_ids, b.input_ids) and shuffled.keys == b.keys
        seen += len(real)
    assert seen > 30 and max(Counter(b.keys).values()) > 1  # images did repeat in a batch


def test_train_fraction_is_a_seeded_nested_subset_fixed_across_epochs(world):
    full = set(epoch_units([Loader(cfg_for(world / "vqa_train", task="vqa"))]))
    picked = {}
    for frac in (0.1, 0.25, 0.5):
        ld = Loader(cfg_for(world / "vqa_train", task="vqa", fraction=frac, seed=int(frac * 10)))
        first, second = set(epoch_units([ld])), set(epoch_units([ld]))
        assert first == second  # the subset does not change with the epoch
        assert len(first) == int(np.ceil(frac * len(full))) and first <= full
        picked[frac] = first
    assert picked[0.1] <= picked[0.25] <= picked[0.5]  # nested, whatever data.seed is
    other = Loader(cfg_for(world / "vqa_train", task="vqa", fraction=0.25, subset_seed=1))
    assert set(epoch_units([other])) != picked[0.25]
    state = other.state_dict()
    with pytest.raises(VlpdistError, match="data.fraction/subset_seed"):
        Loader(cfg_for(world / "vqa_train", task="vqa", fraction=0.5)).load_state_dict(state)


@pytest.mark.parametrize("read_span", [1, 8])
def test_a_shard_deleted_mid_run_is_named_counted_and_padded(world, tmp_path, caplog, read_span):
    url = tmp_path / "coco"
    shutil.copytree(world / "coco_like", url)
    m = json.loads((url / "index.json").read_text())
    lds = [Loader(cfg_for(url, read_span=read_span), rank=r, world_size=2) for r in (0, 1)]
    from vlpdist.data import plan as P

    last = int(lds[0].stream.sequence(0)[-1, P.SHARD])  # read at the end of the epoch
    gone = url / m["shards"][last]["name"]
    its = [iter(ld) for ld in lds]
    got = units(next(its[0])) + units(next(its[1]))  # the run is under way
    gone.unlink()
    counts = [1, 1]
    for r, it in enumerate(its):
        for b in it:
            got += units(b)
            counts[r] += 1
    assert counts[0] == counts[1]  # every rank keeps its number of batches
    keys = [k for k, _ in got]
    assert len(keys) == len(set(keys))
    assert m["num_samples"] - m["shards"][last]["num_samples"] <= len(keys) < m["num_samples"]
    tel = [ld.telemetry() for ld in lds]
    assert {u for ld in lds for u in ld.skipped_shards()} == {str(gone)}
    assert sum(t["missing_samples"] for t in tel) == m["num_samples"] - len(keys)
    assert sum(t["corrupt_samples"] for t in tel) == 0
    warnings = [r.getMessage() for r in caplog.records if str(gone) in r.getMessage()]
    # the plan is the manifest's: a resume after the deletion is accepted and exact
    fresh = Loader(cfg_for(url, read_span=read_span), rank=0, world_size=2)
    fresh.load_state_dict(lds[0].state_dict())
    assert lds[0].state_dict()["sources"] == [[str(url), m["num_samples"]]]
    # once per rank (two loaders here), naming the object; not once per sample
    assert len(warnings) == 2 and all("gone" in w for w in warnings)


def test_a_truncated_shard_loses_only_its_cut_samples_or_fails(world, tmp_path, caplog):
    url = tmp_path / "coco"
    shutil.copytree(world / "coco_like", url)
    m = json.loads((url / "index.json").read_text())
    bad = url / m["shards"][1]["name"]
    offsets = m["shards"][1]["offsets"]
    bad.write_bytes(bad.read_bytes()[: offsets[3] + 100])  # samples 0-2 intact
    ld = Loader(cfg_for(url))
    keys = [k for k, _ in epoch_units([ld])]
    lost = m["shards"][1]["num_samples"] - 3
    assert len(keys) == len(set(keys)) == m["num_samples"] - lost
    assert ld.telemetry()["corrupt_samples"] == lost and ld.skipped_shards() == {}
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1
    assert "truncated" in caplog.text
    with pytest.raises(ShardError, match=rf"^{bad}: sample \d+: .*truncated.*on_corrupt=fail"):
        list(Loader(cfg_for(url, on_corrupt="fail")))


def test_corrupt_samples_become_flagged_padding_or_fail(world, tmp_path):
    url, shard, m = copy_with_corrupt_sample(world / "coco_like", tmp_path / "coco")
    ld = Loader(cfg_for(url))
    got = epoch_units([ld])
    assert ld.telemetry()["corrupt_samples"] == 1
    assert len(got) == m["num_samples"] - 1
    with pytest.raises(ShardError, match=f"{shard}: sample 1: tar header checksum"):
        list(Loader(cfg_for(url, on_corrupt="fail")))
    # a flipped data byte keeps the size: only a sha256 check finds it, when asked
    raw = bytearray(shard.read_bytes())
    raw[m["shards"][0]["offsets"][3] + 700] ^= 0x01
    shard.write_bytes(bytes(raw))
    assert Loader(cfg_for(url, verify_sha256=True)).telemetry()["skipped_shards"] == 1


def test_an_error_in_a_loader_worker_is_the_same_one_line(world, tmp_path):
    url, shard, _ = copy_with_corrupt_sample(world / "coco_like", tmp_path / "coco")
    for workers in (0, 2):
        with pytest.raises(ShardError) as info:
            list(Loader(cfg_for(url, on_corrupt="fail", num_workers=workers)))
        assert str(info.value).startswith(f"{shard}: sample 1: tar header checksum")
        assert "\n" not in str(info.value) and "DataLoader worker" not in str(info.value)


@pytest.fixture
def world_on_s3(world, s3):
    return upload(world / "coco_like", s3.url("w", "coco_like"))


def test_s3_with_faults_yields_every_sample_exactly_once(world, world_on_s3, s3):
    local = epoch_units([Loader(cfg_for(world / "coco_like", read_span=2))])
    with FaultProxy(s3.endpoint) as proxy:
        storage = StorageConfig(endpoint_url=proxy.url, retry=RetryConfig(8, 0.01, 0.05))
        proxy.rate(0.3, kinds=("503", "reset", "cut"), seed=1)
        ld = Loader(cfg_for(world_on_s3, num_workers=2, read_span=2, cache=NO_CACHE), storage)
        got = epoch_units([ld])
    assert got == local  # same order as from local files, nothing lost or repeated
    tel = ld.telemetry()
    assert proxy.faults() > 5 and tel["retries"] > 0, (proxy.faults(), tel)
    assert tel["bytes_read"] > 0 and tel["requests"] > 0


def test_transient_faults_never_cost_a_sample_they_stop_the_run(world, world_on_s3, s3):
    """70% of requests fail: within the retry budget nothing is lost; past it the run stops
    with one line naming the object, never with padding in place of samples."""
    local = epoch_units([Loader(cfg_for(world / "coco_like", read_span=2))])
    with FaultProxy(s3.endpoint) as proxy:
        patient = StorageConfig(endpoint_url=proxy.url, retry=RetryConfig(60, 0.001, 0.005))
        proxy.rate(0.7, kinds=("503", "reset"), seed=3)
        ld = Loader(cfg_for(world_on_s3, read_span=2, cache=NO_CACHE), patient)
        assert epoch_units([ld]) == local
        tel = ld.telemetry()
        assert tel["corrupt_samples"] == tel["missing_samples"] == tel["pad_samples"] == 0
        assert tel["retries"] > 10
        # shard health comes from the manifest and content: no HEAD of a shard to throttle
        assert not [e for e in proxy.log if e["method"] == "HEAD" and ".tar" in e["path"]]
        proxy.rate(0.0)
        impatient = StorageConfig(endpoint_url=proxy.url, retry=RetryConfig(2, 0.001, 0.005))
        ld = Loader(cfg_for(world_on_s3, read_span=2, cache=NO_CACHE), impatient)
        proxy.rate(0.7, kinds=("503",), seed=4)
        with pytest.raises(StorageError, match=r"/coco_like/\d+\.tar: read failed after 2"):
            epoch_units([ld])
        assert ld.telemetry()["corrupt_samples"] == 0


def test_read_span_keeps_runs_contiguous_and_cuts_requests(world):
    from vlpdist.data import plan as P

    single = Loader(cfg_for(world / "cc_like", read_span=1, batch_size=8))
    runs = Loader(cfg_for(world / "cc_like", read_span=4, batch_size=8))

    def segments(seq) -> int:  # maximal stretches of consecutive samples of one shard
        same = (np.diff(seq[:, P.SAMPLE]) == 1) & (np.diff(seq[:, P.SHARD]) == 0)
        return int((~same).sum()) + 1

    shards = len(json.loads((world / "cc_like/index.json").read_text())["shards"])
    seq_runs, seq_single = runs.stream.sequence(0), single.stream.sequence(0)
    assert segments(seq_runs) <= len(seq_runs) // 4 + shards  # runs cut only at shard ends
    assert segments(seq_single) > 2 * segments(seq_runs)
    a, b = epoch_units([single]), epoch_units([runs])
    assert sorted(a) == sorted(b) and a != b  # same epoch content, another order
    assert runs.telemetry()["requests"] * 1.8 < single.telemetry()["requests"]


def test_bench_data_cli_emits_the_figures(run_cli):
    out = run_cli("bench", "data", "--samples", "48", "--repeats", "1", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("samples_per_s", "raw_samples_per_s", "ratio_to_raw",
                "wds_baseline_samples_per_s", "speedup_vs_wds"):  # fmt: skip
        assert d[key] > 0, key
    assert d["samples"] == 48 and d["telemetry"]["samples"] == 48


def test_any_fsspec_protocol_and_stage_telemetry(world):
    st = Storage()
    src = world / "coco_like"
    for path in src.rglob("*"):
        if path.is_file():
            st.write_bytes(f"memory://vlp/coco/{path.relative_to(src)}", path.read_bytes())
    ld = Loader(cfg_for("memory://vlp/coco"))
    got = epoch_units([ld])
    assert got == epoch_units([Loader(cfg_for(src))])
    tel = ld.telemetry()
    assert tel["bytes_read"] > 0 and tel["requests"] > 0
    assert all(tel["seconds"][k] > 0 for k in ("fetch_s", "decode_s", "regions_s", "mask_s"))


def test_content_word_masking_on_the_world(world):
    """data.mlm_words=content: only words outside the stop-word list are ever targets."""
    from transformers import AutoTokenizer

    from vlpdist.data.masking import STOP_WORDS

    tok = AutoTokenizer.from_pretrained(str(world / "coco_like/tokenizer"))
    targets = Counter()
    for words in ("any", "content"):
        ld = Loader(cfg_for(world / "coco_like", mlm_words=words, mlm_prob=0.4, itm_prob=0.0))
        for b in ld:
            labels = b.mlm_labels[b.mlm_labels != -100].tolist()
            targets.update((words, w) for w in tok.convert_ids_to_tokens(labels))
    content = {w for (kind, w) in targets if kind == "content"}
    assert content and not content & STOP_WORDS and "." not in content
    assert {"a", "."} <= {w for (kind, w) in targets if kind == "any"}  # BERT's masks them
    assert {"red", "dog"} & content or len(content) > 20  # colours and objects are targets


def test_padding_is_trimmed_per_batch_and_changes_nothing_the_model_computes(world):
    """Batches are cut to their longest text and region count (a multiple of 8): the model's
    outputs at real positions are those of the same batch padded to the maxima."""
    from vlpdist.engine.loop import data_dims
    from vlpdist.models.losses import model_inputs
    from vlpdist.models.model import build_model

    cfg = cfg_for(world / "coco_like", max_text_tokens=36, max_regions=100, batch_size=8)
    ld = Loader(cfg)
    batch = next(iter(ld))
    t, r = batch.input_ids.shape[1], batch.feats.shape[1]
    longest = int(batch.attention_mask.sum(1).max())
    assert t == min(36, -(-longest // 8) * 8) < 36 and r % 8 == 0 and r <= 100
    assert int(batch.region_mask.sum(1).max()) > r - 8

    def padded(b):
        def widen(x, n, value=0):
            shape = (x.shape[0], n - x.shape[1], *x.shape[2:])
            return torch.cat([x, torch.full(shape, value, dtype=x.dtype)], 1)

        return dataclasses.replace(
            b, input_ids=widen(b.input_ids, 36), token_type_ids=widen(b.token_type_ids, 36),
            attention_mask=widen(b.attention_mask, 36), mlm_labels=widen(b.mlm_labels, 36, -100),
            feats=widen(b.feats, 100), boxes=widen(b.boxes, 100),
            region_mask=widen(b.region_mask, 100), mrm_mask=widen(b.mrm_mask, 100),
        )  # fmt: skip

    model = build_model("visual_bert", "tiny", data_dims(ld), objectives=("mlm", "mrc")).eval()
    with torch.no_grad():
        a, b = model(**model_inputs(batch)), model(**model_inputs(padded(batch)))
    for k in ("mlm", "mrc"):
        assert torch.allclose(a[k], b[k], atol=1e-5), k
