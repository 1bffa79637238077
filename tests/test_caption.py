"""CCG: the captioner (decoder, greedy and beam search) and `vlpdist shards caption`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlpdist.config import Config, load
from vlpdist.models.caption import generate
from vlpdist.models.flavors import DataDims
from vlpdist.models.losses import caption_loss
from vlpdist.models.model import build_model
from vlpdist.shards.synthetic import synthesize

pytestmark = pytest.mark.slow  # processes and clusters: scheduled first (conftest)

REPO = Path(__file__).resolve().parents[1]


class _Batch:
    def __init__(self, ids):
        self.input_ids, self.attention_mask = ids, torch.ones_like(ids)
        self.is_pad = torch.zeros(len(ids), dtype=torch.bool)


@pytest.mark.parametrize("arch", ["visual_bert", "vilbert"])
def test_captioner_learns_captions_and_both_decoders_read_them_back(arch):
    torch.manual_seed(0)
    model = build_model(arch, "tiny", DataDims(vocab_size=40, visual_dim=16, num_classes=3),
                        task="caption")  # fmt: skip
    b, r = 3, 5
    feats, boxes = torch.randn(b, r, 16), torch.rand(b, r, 4)
    rmask = torch.ones(b, r, dtype=torch.long)
    rmask[2, 3:] = 0  # padding regions are ignored by the decoder's cross-attention
    ids = torch.randint(3, 40, (b, 7))
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] caption [SEP]
    inputs = dict(input_ids=ids, token_type_ids=ids * 0, attention_mask=torch.ones_like(ids),
                  feats=feats, boxes=boxes, region_mask=rmask)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(200):
        loss = caption_loss(model(**inputs)["caption"], _Batch(ids))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    want = ids[:, 1:-1].tolist()
    for beam in (1, 3):
        assert generate(model, feats, boxes, rmask, bos=1, eos=2, max_len=10, beam=beam) == want


def test_beam_search_finds_what_greedy_misses():
    """A hand-built decoder whose greedy first choice leads to a poor caption: the beam keeps
    the runner-up prefix and ends with the better whole sequence."""
    from vlpdist.models.caption import _beam, _greedy

    # token 3 is likelier first (0.6 vs 0.4), but after it everything is uncertain (uniform over
    # 4 tokens), while after 4 the caption [4, 5] then eos is almost sure
    def head(ids, memory, mask):
        v, out = 6, []
        for row in ids.tolist():
            last = row[-1]
            p = torch.full((v,), 1e-6)
            if last == 1:
                p[3], p[4] = 0.6, 0.4
            elif last == 3:
                p[[2, 3, 4, 5]] = 0.25
            elif last == 4:
                p[5] = 0.99
            else:
                p[2] = 0.99
            out.append(torch.log(p / p.sum()))
        logits = torch.stack(out)[:, None, :].expand(-1, len(ids[0]), -1)
        return logits

    memory, mask = torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.long)
    assert _greedy(head, memory, mask, 1, 2, 5, 1, 0.7)[0][0] == 3
    assert _beam(head, memory, mask, 1, 2, 5, 3, 0.0) == [[4, 5]]


def test_shards_caption_writes_a_ccg_set_with_its_provenance(tmp_path, run_cli):
    cfg = load(Config, str(REPO / "configs/synth/tiny.yaml"), command="synth")
    synthesize(cfg, str(tmp_path), progress=False)
    w = tmp_path / "shards"
    out = run_cli("shards", "caption", str(REPO / "configs/caption/tiny.yaml"),
                  f"data.sources=[{{url: {w / 'coco_like'}}}]", f"caption.images={w / 'vqa_val'}",
                  f"caption.out={tmp_path / 'ccg'}", f"run.output={tmp_path / 'runs'}",
                  "optim.total_steps=30", "optim.warmup_steps=5", "caption.beam_size=2")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["samples"] == 24 and r["export"] == str(tmp_path / "runs/captioner/export")
    m = json.loads((tmp_path / "ccg/index.json").read_text())
    assert m["source"] == "ccg" and m["synthetic"] is True
    assert m["extra"]["captioner"]["export"] == r["export"]
    assert m["extra"]["decoding"]["beam_size"] == 2
    assert m["extra"]["captioner"]["trained_on"] == [str(w / "coco_like")]
    verify = run_cli("shards", "verify", str(tmp_path / "ccg"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    again = run_cli("shards", "caption", str(REPO / "configs/caption/tiny.yaml"),
                    f"data.sources=[{{url: {w / 'coco_like'}}}]", f"caption.images={w / 'vqa_val'}",
                    f"caption.out={tmp_path / 'ccg'}", f"run.output={tmp_path / 'runs'}")  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr  # refused before training
