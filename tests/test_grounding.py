"""`vlpdist analyze grounding`: masked words by kind with the image's own regions and with
another image's, on a real tiny export, and its bookkeeping against a model that reads the
words off the regions by construction."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vlpdist.analysis import grounding as G
from vlpdist.config import DataConfig, DataSource
from vlpdist.data.collate import shuffle_regions
from vlpdist.data.loader import Loader
from vlpdist.models.export import save_pretrained
from vlpdist.models.flavors import DataDims
from vlpdist.models.model import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export(world, tmp_path_factory, run_cli) -> Path:
    out = tmp_path_factory.mktemp("pre")
    proc = run_cli("pretrain", str(REPO / "configs/pretrain/tiny.yaml"),
                   f"data.sources=[{{url: {world / 'coco_like'}}}]", f"run.output={out}",
                   "optim.total_steps=6", "optim.warmup_steps=2", "model.objectives=[mlm, itm]")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "tiny/export"


def test_the_probe_of_a_real_export(world, export, run_cli, tmp_path):
    out = run_cli("analyze", "grounding", str(export), "--data", str(world / "coco_val_like"),
                  "--json", "--out", str(tmp_path / "g"))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["samples"] == 24 and set(r["kinds"]) == {"object", "color", "size", "count"}
    for kind in ("object", "color"):  # the held-out captions name objects and colours
        k = r["kinds"][kind]
        assert k["words"] > 10 and 0 <= k["true"] <= 1 and 0 <= k["shuffled"] <= 1
        assert k["gap"] == pytest.approx(k["true"] - k["shuffled"], abs=1e-4)
    assert set(r["itm"]) == {"true", "shuffled"}  # the export has an ITM head
    assert json.loads((tmp_path / "g/grounding.json").read_text()) == r
    table = run_cli("analyze", "grounding", str(export), "--data", str(world / "coco_val_like"))
    assert table.returncode == 0 and "color" in table.stdout and "shuffled" in table.stdout


def test_an_export_without_mlm_is_one_line(world, tmp_path, run_cli):
    dims = DataDims(vocab_size=439, visual_dim=32, num_classes=45)
    save_pretrained(build_model("visual_bert", "tiny", dims, objectives=["mrc"]),
                    str(tmp_path / "e"), arch="visual_bert", flavor="tiny")  # fmt: skip
    out = run_cli("analyze", "grounding", str(tmp_path / "e"), "--data", str(world / "coco_like"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no MLM head" in out.stderr.strip().splitlines()[-1]


class ReadsTheRegions(torch.nn.Module):
    """Predicts every masked word right when it is given the batch's own regions, and
    [MASK] when given any other: a perfectly grounded model, by construction."""

    def __init__(self, original, vocab: int):
        super().__init__()
        self.original, self.vocab = original, vocab

    def forward(self, input_ids, feats, mlm_mask, **_):
        gold = self.original.input_ids[mlm_mask]
        own = torch.equal(feats, self.original.feats)
        guess = gold if own else input_ids[mlm_mask]  # the mask token itself: wrong
        return {"mlm": torch.nn.functional.one_hot(guess, self.vocab).float()}


def test_true_and_shuffled_are_counted_apart(world):
    from transformers import AutoTokenizer

    cfg = DataConfig(sources=[DataSource(str(world / "coco_val_like"))], task="pretrain",
                     batch_size=8, num_workers=0, mlm_prob=0.0, mrm_prob=0.0, itm_prob=0.0)  # fmt: skip
    loader = Loader(cfg)
    batch = next(iter(loader))
    tok = AutoTokenizer.from_pretrained(str(world / "coco_val_like/tokenizer"))
    ids, _ = G._ids_by_kind(tok, G.word_lists(loader.manifest))
    model = ReadsTheRegions(batch, len(tok))
    counts = {f"{k}_{v}": [0, 0] for k in G.KINDS for v in ("true", "shuffled")}
    for view, b in (("true", batch), ("shuffled", shuffle_regions(batch))):
        G._score_words(model, b, batch, ids, tok.mask_token_id, view, counts)
    result = G._summary("e", "d", 8, counts, None, 0)
    colors = result["kinds"]["color"]
    assert colors["words"] > 0 and (colors["true"], colors["shuffled"]) == (1.0, 0.0)
    assert result["kinds"]["object"]["gap"] == 1.0
    # only words of the kind are masked: the colour pass masks no object word
    sel = torch.isin(batch.input_ids, ids["color"])
    assert not torch.isin(batch.input_ids[sel], ids["object"]).any()
    assert dataclasses.is_dataclass(batch)
