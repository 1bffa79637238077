"""ViLBERT encoder: shapes and sizes, padding invariance, co-attention coupling and its
schedule, SDPA everywhere, gradients everywhere, and the text stream being exactly BERT."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel

from vlpdist.models.flavors import DataDims, ViLBertSize, resolve
from vlpdist.models.vilbert import ViLBertEncoder, image_inputs
from vlpdist.models.vilbert_layers import stream_config

TINY = resolve("vilbert", "tiny")
DIMS = DataDims(vocab_size=50, visual_dim=12)
NO_COATTENTION = dataclasses.replace(TINY, t_biattention_id=(), v_biattention_id=())


def encoder(size: ViLBertSize = TINY, seed: int = 0) -> ViLBertEncoder:
    torch.manual_seed(seed)
    return ViLBertEncoder(size, DIMS).eval()


def inputs(b=2, t=6, r=5, seed=1, text_lens=(6, 4), region_lens=(5, 3), d=DIMS.visual_dim):
    """A Batch's model inputs; sample i has text_lens[i] real tokens, region_lens[i] regions."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, r, 2, generator=g) * 0.5
    return {
        "input_ids": torch.randint(1, DIMS.vocab_size, (b, t), generator=g),
        "token_type_ids": torch.zeros(b, t, dtype=torch.long),
        "attention_mask": (torch.arange(t) < torch.tensor(text_lens)[:, None]).long(),
        "feats": torch.randn(b, r, d, generator=g).half(),
        "boxes": torch.cat((xy, xy + 0.5 * torch.rand(b, r, 2, generator=g)), dim=-1),
        "region_mask": (torch.arange(r) < torch.tensor(region_lens)[:, None]).long(),
    }


def expected_params(s: ViLBertSize, vocab: int, visual: int) -> int:
    """Parameters of our ViLBERT, by hand from the sizes."""

    def lin(i, o):
        return i * o + o

    def layer(h, inter):  # BertLayer: q, k, v, out + LN; FFN + LN
        return 4 * lin(h, h) + lin(h, inter) + lin(inter, h) + 4 * h

    h, vh, bi = s.hidden_size, s.v_hidden_size, s.bi_hidden_size
    text = (vocab + s.max_position + s.type_vocab_size) * h + 2 * h
    text += s.num_layers * layer(h, s.intermediate_size)
    vis = lin(visual, vh) + lin(5, vh) + 2 * vh + s.v_num_layers * layer(vh, s.v_intermediate_size)
    block = 3 * lin(vh, bi) + 3 * lin(h, bi) + lin(bi, vh) + lin(bi, h) + 2 * (vh + h)
    block += lin(vh, s.bi_intermediate_size) + lin(s.bi_intermediate_size, vh) + 2 * vh
    block += lin(h, s.intermediate_size) + lin(s.intermediate_size, h) + 2 * h
    return text + vis + len(s.t_biattention_id) * block + lin(h, bi) + lin(vh, bi)


def test_tiny_shapes_dtypes_and_an_image_without_regions():
    enc = encoder()
    x = inputs(region_lens=(5, 0))  # sample 1 has no region: only the global token
    out = enc(**x)
    assert out.text.shape == (2, 6, TINY.hidden_size)
    assert out.image.shape == (2, 5, TINY.v_hidden_size)
    assert out.pooled.shape == (2, TINY.bi_hidden_size)
    assert (enc.text_dim, enc.image_dim, enc.pooled_dim) == (64, 48, 48)
    assert all(torch.isfinite(o).all() for o in (out.text, out.image, out.pooled))
    assert enc.word_embeddings is enc.embeddings.word_embeddings
    half = enc.to(torch.bfloat16)(**x)  # half-precision feats are cast to the model's dtype
    assert half.text.dtype == half.image.dtype == half.pooled.dtype == torch.bfloat16


def test_global_image_token():
    x = inputs(region_lens=(5, 3))
    feats, loc, keep = image_inputs(x["feats"].float(), x["boxes"], x["region_mask"])
    torch.testing.assert_close(feats[1, 0], x["feats"][1, :3].float().mean(0))
    assert loc[:, 0].tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]] * 2
    b = x["boxes"][0, 2]
    assert loc[0, 3, 4].item() == pytest.approx(((b[2] - b[0]) * (b[3] - b[1])).item())
    assert keep[:, 0].tolist() == [1, 1] and keep[1].sum() == 4


@pytest.mark.parametrize("flavor", ["tiny", "small", "base"])
def test_parameter_counts(flavor):
    size = resolve("vilbert", flavor)
    with torch.device("meta"):  # base's 236M parameters without allocating or initialising them
        enc = ViLBertEncoder(size, DataDims(vocab_size=30522, visual_dim=2048))
        x = {k: v.to("meta") for k, v in inputs(d=2048).items()}
        out = enc(**x)  # shapes flow through every block at this flavor's sizes
    assert out.pooled.shape == (2, size.bi_hidden_size)
    n = sum(p.numel() for p in enc.parameters())
    assert n == expected_params(size, 30522, 2048)
    if flavor == "base":  # ViLBERT base: BERT-base (110M) + visual stream + 6 co-attention blocks
        assert n == 235_705_856 and 220e6 < n < 260e6


def test_padding_tokens_and_regions_change_nothing():
    enc = encoder()
    x = inputs()
    ref = enc(**x)
    g = torch.Generator().manual_seed(7)
    more = dict(x)  # 3 padded tokens and 4 padded regions of random content, all masked
    more["input_ids"] = torch.cat((x["input_ids"], torch.randint(1, 50, (2, 3), generator=g)), 1)
    more["token_type_ids"] = torch.cat((x["token_type_ids"], torch.ones(2, 3, dtype=torch.long)), 1)
    more["attention_mask"] = torch.cat(
        (x["attention_mask"], torch.zeros(2, 3, dtype=torch.long)), 1
    )
    more["feats"] = torch.cat((x["feats"], torch.randn(2, 4, 12, generator=g).half()), 1)
    more["boxes"] = torch.cat((x["boxes"], torch.rand(2, 4, 4, generator=g)), 1)
    more["region_mask"] = torch.cat((x["region_mask"], torch.zeros(2, 4, dtype=torch.long)), 1)
    # and the already padded positions get other content too
    more["feats"][1, 3:5] = 9.0
    out = enc(**more)
    real_t, real_r = x["attention_mask"].bool(), x["region_mask"].bool()
    torch.testing.assert_close(out.text[:, :6][real_t], ref.text[real_t], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.image[:, :5][real_r], ref.image[real_r], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooled, ref.pooled, atol=1e-5, rtol=0)


def _changed(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("size", [TINY, NO_COATTENTION], ids=["coattention", "none"])
def test_coattention_couples_the_streams(size):
    enc = encoder(size)
    x = inputs()
    ref = enc(**x)
    feats = x["feats"].clone()
    feats[0, 1] += 1.0  # one real region of sample 0
    other_image = enc(**{**x, "feats": feats})
    ids = x["input_ids"].clone()
    ids[0, 2] = (ids[0, 2] % 49) + 1  # one real word of sample 0
    other_text = enc(**{**x, "input_ids": ids})
    coupled = bool(size.t_biattention_id)
    assert (_changed(other_image.text[0], ref.text[0]) > 1e-3) == coupled
    assert (_changed(other_text.image[0], ref.image[0]) > 1e-3) == coupled
    assert _changed(other_image.text[1], ref.text[1]) == 0  # samples stay apart
    assert _changed(other_text.image[1], ref.image[1]) == 0


def _run_order(size: ViLBertSize) -> list[str]:
    enc = encoder(size)
    order: list[str] = []
    for tag, layers in (
        ("t", enc.encoder.layer),
        ("v", enc.encoder.v_layer),
        ("c", enc.encoder.c_layer),
    ):
        for i, m in enumerate(layers):
            m.register_forward_hook(lambda *_, name=f"{tag}{i}": order.append(name))
    enc(**inputs())
    return order


def test_coattention_blocks_run_after_the_configured_layers():
    # tiny: t_biattention_id (2, 3), v_biattention_id (0, 1): vilbert's loop runs text 0-1,
    # block 0 (on the raw image embeddings), text 2 and visual 0, block 1, then the rest
    assert _run_order(TINY) == ["t0", "t1", "c0", "t2", "v0", "c1", "t3", "v1"]
    size = dataclasses.replace(TINY, t_biattention_id=(0, 4), v_biattention_id=(2, 2))
    assert _run_order(size) == ["v0", "v1", "c0", "t0", "t1", "t2", "t3", "c1"]
    for size in (resolve("vilbert", "small"), TINY):
        order = _run_order(size)
        for k, (t_id, v_id) in enumerate(
            zip(size.t_biattention_id, size.v_biattention_id, strict=True)
        ):
            before = order[: order.index(f"c{k}")]
            assert sum(e.startswith("t") for e in before) == t_id
            assert sum(e.startswith("v") for e in before) == v_id


@pytest.mark.parametrize(
    "ids", [((2,), (0, 1)), ((3, 2), (0, 1)), ((2, 5), (0, 1)), ((2, 3), (-1, 1))]
)
def test_bad_connections_are_refused(ids):
    with pytest.raises(ValueError, match="biattention_id"):
        ViLBertEncoder(
            dataclasses.replace(TINY, t_biattention_id=ids[0], v_biattention_id=ids[1]), DIMS
        )


@pytest.mark.parametrize("size", [TINY, NO_COATTENTION], ids=["coattention", "none"])
def test_all_attention_is_sdpa(monkeypatch, size):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    encoder(size)(**inputs())
    blocks = len(size.t_biattention_id)
    assert len(calls) == size.num_layers + size.v_num_layers + 2 * blocks


def test_gradient_reaches_every_parameter():
    enc = encoder().train()
    out = enc(**inputs())
    g = torch.Generator().manual_seed(3)
    # random projections: a plain sum of LayerNorm outputs has no gradient at init
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in out.__dict__.values())
    loss.backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_text_stream_is_bert_without_coattention():
    """Loaded by `text_weight_map` from a transformers BertModel, the text stream of a
    ViLBERT without co-attention blocks gives BertModel's states."""
    torch.manual_seed(5)
    bert = BertModel(stream_config(TINY, "text", DIMS.vocab_size), add_pooling_layer=False).eval()
    enc = encoder(NO_COATTENTION)
    mapping = enc.text_weight_map()
    theirs, ours = bert.state_dict(), dict(enc.named_parameters())
    assert set(mapping) == {n for n, _ in bert.named_parameters()}
    with torch.no_grad():
        for src, dst in mapping.items():
            ours[dst].copy_(theirs[src])
    x = inputs()
    want = bert(
        input_ids=x["input_ids"],
        token_type_ids=x["token_type_ids"],
        attention_mask=x["attention_mask"],
    ).last_hidden_state
    got = enc(**x).text
    real = x["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    assert set(encoder().text_weight_map()) == set(mapping)  # blocks add no text-stream names
