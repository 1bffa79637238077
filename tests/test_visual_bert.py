"""VisualBERT: parity with transformers' VisualBertModel, padding invariance, SDPA dispatch,
and loading a real pretrained BERT (MiniLM) into the text part."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertModel, BertTokenizerFast, VisualBertModel

from vlpdist.errors import VlpdistError
from vlpdist.models.flavors import DataDims, resolve
from vlpdist.models.hf_visual_bert import from_hf, hf_config, to_hf
from vlpdist.models.text_init import load_text_weights
from vlpdist.models.visual_bert import VisualBertEncoder

DIMS = DataDims(vocab_size=100, visual_dim=24)
SIZE = resolve("visual_bert", "tiny")


def tiny(seed=0) -> VisualBertEncoder:
    torch.manual_seed(seed)
    return VisualBertEncoder(SIZE, DIMS).eval()


def inputs(lengths=(7, 4, 2), regions=(5, 3, 1), t=7, r=5, seed=1) -> dict[str, torch.Tensor]:
    """A batch with padded tokens and padded regions (garbage in the padding, mask 0)."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    keep_t = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    keep_r = torch.arange(r)[None] < torch.tensor(regions)[:, None]
    return dict(
        input_ids=torch.randint(1, DIMS.vocab_size, (b, t), generator=g),
        token_type_ids=(torch.rand(b, t, generator=g) < 0.3).long(),
        attention_mask=keep_t.long(),
        feats=torch.randn(b, r, DIMS.visual_dim, generator=g).half(),
        boxes=torch.rand(b, r, 4, generator=g),
        region_mask=keep_r.long(),
    )


def run_hf(model: VisualBertModel, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(
        input_ids=x["input_ids"],
        token_type_ids=x["token_type_ids"],
        attention_mask=x["attention_mask"],
        visual_embeds=x["feats"].float(),
        visual_attention_mask=x["region_mask"],
        visual_token_type_ids=torch.ones_like(x["region_mask"]),
    )
    return out.last_hidden_state, out.pooler_output


def assert_matches_hf(ours: VisualBertEncoder, hf: VisualBertModel, x: dict) -> float:
    with torch.no_grad():
        mine = ours(**x)
        states, pooled = run_hf(hf, x)
    t = x["input_ids"].shape[1]
    torch.testing.assert_close(mine.text, states[:, :t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.image, states[:, t:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.pooled, pooled, atol=1e-5, rtol=1e-5)
    joint = torch.cat((mine.text, mine.image), dim=1)
    return max((joint - states).abs().max().item(), (mine.pooled - pooled).abs().max().item())


def test_ours_to_hf_parity():
    ours = tiny()
    diff = assert_matches_hf(ours, to_hf(ours).eval(), inputs())
    print(f"ours->hf max abs diff {diff:.2e}")


def test_hf_to_ours_parity():
    torch.manual_seed(2)
    hf = VisualBertModel(hf_config(SIZE, DIMS)).eval()
    with torch.no_grad():  # beyond HF's small init, and visual tables unlike the text ones
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    diff = assert_matches_hf(from_hf(hf, DIMS), hf, inputs())
    print(f"hf->ours max abs diff {diff:.2e}")


def test_round_trip_is_bit_exact():
    ours = tiny()
    back = from_hf(to_hf(ours), DIMS)
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_from_hf_refuses_other_dims():
    hf = VisualBertModel(hf_config(SIZE, DIMS))
    with pytest.raises(ValueError, match="visual_embedding_dim"):
        from_hf(hf, DataDims(vocab_size=100, visual_dim=25))


def test_padding_does_not_change_real_states():
    model = tiny()
    alone = inputs(lengths=(5,), regions=(3,), t=5, r=3, seed=3)
    # sample 0 of `padded` has 5 real tokens and 3 real regions, then random padding (mask 0)
    padded = inputs(lengths=(5, 9), regions=(3, 7), t=9, r=7, seed=4)
    for k in ("input_ids", "token_type_ids", "attention_mask"):
        padded[k][0, :5] = alone[k][0]
    for k in ("feats", "boxes", "region_mask"):
        padded[k][0, :3] = alone[k][0]
    with torch.no_grad():
        a, b = model(**alone), model(**padded)
    torch.testing.assert_close(b.text[0, :5], a.text[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.image[0, :3], a.image[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.pooled[0], a.pooled[0], atol=1e-5, rtol=0)


def test_attention_runs_through_sdpa(monkeypatch):
    model = tiny()
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    x = inputs()
    with torch.no_grad():
        model(**x)
    assert len(seen) == SIZE.num_layers
    keep = torch.cat((x["attention_mask"], x["region_mask"]), 1).bool()
    for mask in seen:  # our boolean key mask, not an additive float one
        assert mask.dtype == torch.bool and torch.equal(mask[:, 0, 0], keep)


def test_features_are_cast_to_the_model_dtype():
    model = tiny().to(torch.bfloat16)
    with torch.no_grad():
        out = model(**inputs())
    assert out.text.dtype == out.image.dtype == out.pooled.dtype == torch.bfloat16


# -- pretrained text weights


def minilm_model() -> VisualBertEncoder:
    sizes = dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
    size = resolve("visual_bert", "tiny", {**sizes, "max_position": 512})
    torch.manual_seed(0)
    return VisualBertEncoder(size, DataDims(vocab_size=30522, visual_dim=32)).eval()


def test_minilm_loads_and_keeps_bert_text_semantics(minilm_dir):
    model = minilm_model()
    loaded = load_text_weights(model, minilm_dir)
    ckpt = load_file(str(Path(minilm_dir) / "model.safetensors"))
    params = dict(model.named_parameters())
    assert sorted(loaded) == sorted(model.text_weight_map().values())
    assert len(loaded) == 103  # 5 embedding + 6 x 16 layer + 2 pooler tensors
    for name in loaded:
        assert torch.equal(params[name], ckpt[name]), name

    tok = BertTokenizerFast.from_pretrained(minilm_dir)
    text = tok(["a man rides a horse on the beach", "two dogs"], padding=True, return_tensors="pt")
    b, r = text["input_ids"].shape[0], 4
    x = dict(
        input_ids=text["input_ids"],
        token_type_ids=text["token_type_ids"],
        attention_mask=text["attention_mask"],
        feats=torch.randn(b, r, 32).half(),
        boxes=torch.rand(b, r, 4),
        region_mask=torch.zeros(b, r, dtype=torch.long),  # regions present but masked out
    )
    bert = BertModel.from_pretrained(minilm_dir, attn_implementation="sdpa").eval()
    with torch.no_grad():
        ours = model(**x)
        ref = bert(**text)
    torch.testing.assert_close(ours.text, ref.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.pooled, ref.pooler_output, atol=1e-4, rtol=1e-4)


def test_bert_prefixed_checkpoint_loads(tmp_path):
    """BertForPreTraining layout: `bert.` prefix, TF-era LayerNorm gamma/beta, extra heads."""
    source, target = tiny(seed=5), tiny(seed=6)
    params = dict(source.named_parameters())
    tensors = {}
    for hf_name, ours in source.text_weight_map().items():
        name = hf_name.replace("LayerNorm.weight", "LayerNorm.gamma")
        tensors["bert." + name.replace("LayerNorm.bias", "LayerNorm.beta")] = params[ours]
    tensors["cls.predictions.bias"] = torch.zeros(DIMS.vocab_size)
    save_file(
        {k: v.detach().contiguous() for k, v in tensors.items()}, tmp_path / "model.safetensors"
    )
    loaded = load_text_weights(target, str(tmp_path))
    got = dict(target.named_parameters())
    assert loaded and all(torch.equal(got[n], params[n]) for n in loaded)
    # the visual tables are not BERT's: they keep the target's own
    assert not torch.equal(
        got["embeddings.visual_projection.weight"], params["embeddings.visual_projection.weight"]
    )


def test_wrong_checkpoint_is_one_clear_line(minilm_dir, tmp_path):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(VlpdistError) as err:
        load_text_weights(model, minilm_dir)
    assert str(err.value) == (
        f"text_init {minilm_dir}: embeddings.word_embeddings.weight has shape [30522, 384], "
        "the model's is [100, 64]; build the model with the checkpoint's sizes"
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    with pytest.raises(VlpdistError, match="no model.safetensors"):
        load_text_weights(model, str(tmp_path))
    with pytest.raises(VlpdistError, match="no such file"):
        load_text_weights(model, str(tmp_path / "missing"))
