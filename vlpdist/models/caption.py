"""Decoding captions from a captioner (a VLModel of task "caption"): greedy and beam search.

The decoder is re-run over the whole prefix at every step (no key/value cache): captions
are ~20 tokens, and this keeps the decoder torch's stock module.
"""

from __future__ import annotations

import torch

from vlpdist.models.model import VLModel


@torch.no_grad()
def generate(model: VLModel, feats: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor,
             *, bos: int, eos: int, max_len: int = 20, beam: int = 1,
             length_penalty: float = 0.7) -> list[list[int]]:  # fmt: skip
    """Token ids (without [CLS]/[SEP]) of one caption per image. beam=1 is greedy; beam>1
    keeps the `beam` best prefixes by log-probability and returns the finished one with
    the best score / length**length_penalty."""
    if "caption" not in model.heads:
        raise ValueError(f"a {model.task} model cannot write captions")
    was_training = model.training
    model.eval()
    b = feats.shape[0]
    one = torch.ones(b, 1, dtype=torch.long, device=feats.device)
    enc = model.encoder(input_ids=one * bos, token_type_ids=one * 0, attention_mask=one,
                        feats=feats, boxes=boxes, region_mask=region_mask)  # fmt: skip
    head = model.heads["caption"]
    out = (_greedy if beam == 1 else _beam)(head, enc.image, region_mask, bos, eos, max_len, beam,
                                            length_penalty)  # fmt: skip
    model.train(was_training)
    return out


def _greedy(head, memory, mask, bos, eos, max_len, _beam, _lp) -> list[list[int]]:
    b = memory.shape[0]
    ids = torch.full((b, 1), bos, dtype=torch.long, device=memory.device)
    done = torch.zeros(b, dtype=torch.bool, device=memory.device)
    for _ in range(max_len):
        nxt = head(ids, memory, mask)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == eos
        if done.all():
            break
    return [_strip(row, eos) for row in ids[:, 1:].tolist()]


def _beam(head, memory, mask, bos, eos, max_len, beam, length_penalty) -> list[list[int]]:
    b, dev = memory.shape[0], memory.device
    memory = memory.repeat_interleave(beam, 0)
    mask = mask.repeat_interleave(beam, 0)
    ids = torch.full((b * beam, 1), bos, dtype=torch.long, device=dev)
    # only the first beam of each image is live at the start, so the beams differ
    scores = torch.full((b, beam), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    for step in range(max_len):
        logp = head(ids, memory, mask)[:, -1].float().log_softmax(-1)  # [b*beam, V]
        vocab = logp.shape[-1]
        total = (scores.reshape(-1, 1) + logp).reshape(b, beam * vocab)
        top, idx = total.topk(2 * beam, dim=-1)  # room for beams that end here
        origin, token = idx // vocab, idx % vocab
        new_ids, new_scores = [], []
        for i in range(b):
            kept = []
            for s, o, t in zip(top[i].tolist(), origin[i].tolist(), token[i].tolist(), strict=True):
                if s == float("-inf"):
                    continue
                prefix = ids[i * beam + o, 1:].tolist()
                if t == eos or step == max_len - 1:
                    words = prefix if t == eos else [*prefix, t]
                    finished[i].append((s / max(len(words), 1) ** length_penalty, words))
                elif len(kept) < beam:
                    kept.append((s, [bos, *prefix, t]))
            while len(kept) < beam:  # everything ended: pad with dead beams
                kept.append((float("-inf"), [bos, *([eos] * (step + 1))]))
            new_scores.append([s for s, _ in kept])
            new_ids.extend(seq for _, seq in kept)
        ids = torch.tensor(new_ids, dtype=torch.long, device=dev)
        scores = torch.tensor(new_scores, device=dev)
        if all(len(f) >= beam for f in finished):  # enough endings to choose from
            break
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


def _strip(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos)] if eos in row else row
