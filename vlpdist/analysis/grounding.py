"""`vlpdist analyze grounding EXPORT --data URL`: does a pretrained model look at the image?

Masked content words by kind, with the image's own regions and with another image's
regions (shuffled between the samples of a batch): every word of one kind in a caption is
masked at once and predicted by the export's MLM head. A model that reads colours, objects,
sizes or counts off the regions loses that accuracy when the regions are another image's; a
model that guesses them from the text keeps it. Where the export has an ITM head, also its
accuracy at telling an image's own caption (true) from another image's (shuffled).

Which words are of which kind comes from word lists, never from a sample's annotations:
colours, sizes and number words in English, and for objects the names of the detector's
classes where the shard set's manifest records them (the synthetic world does), else the 80
COCO categories. Words the tokenizer splits into several pieces are left out (and counted).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile

import torch

from vlpdist.config import DataConfig, DataSource
from vlpdist.data.collate import shuffle_regions
from vlpdist.errors import VlpdistError
from vlpdist.models.losses import model_inputs
from vlpdist.storage import Storage, join


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


COLORS = _words("red orange yellow brown green blue purple pink white gray grey black silver "
                "gold beige tan")  # fmt: skip
SIZES = _words("small large big little tiny huge tall short long")
COUNTS = _words("zero one two three four five six seven eight nine ten eleven twelve "
                "0 1 2 3 4 5 6 7 8 9 10 11 12")  # fmt: skip
COCO_OBJECTS = _words(
    "person bicycle car motorcycle airplane bus train truck boat bench bird cat dog horse sheep "
    "cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis "
    "snowboard ball kite bat glove skateboard surfboard racket bottle glass cup fork knife spoon "
    "bowl banana apple sandwich orange broccoli carrot pizza donut cake chair couch plant bed "
    "table toilet tv laptop mouse remote keyboard phone microwave oven toaster sink "
    "refrigerator book clock vase scissors drier toothbrush"
)
KINDS = ("object", "color", "size", "count")
MAX_REGIONS = 100  # BUTD's most; a set with fewer keeps all of its own


def word_lists(manifest: dict) -> dict[str, list[str]]:
    """Words by kind. Objects: the detector's class names recorded with the shard set (a
    colour or size word among them stays its own kind), else COCO's categories."""
    labels = manifest.get("cls_prob_labels") or (
        ((manifest.get("extra") or {}).get("world_card") or {}).get("cls_prob_labels")
    )
    taken = set(COLORS) | set(SIZES) | set(COUNTS)
    objects = [w for w in (labels or COCO_OBJECTS) if w not in taken and w != "background"]
    return {"object": objects, "color": list(COLORS), "size": list(SIZES), "count": list(COUNTS)}


def _ids_by_kind(tok, lists: dict[str, list[str]]) -> tuple[dict[str, torch.Tensor], int]:
    """Single-token ids of each kind's words, and how many words took several pieces."""
    out, split = {}, 0
    for kind, words in lists.items():
        ids = set()
        for w in words:
            pieces = tok(w, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1 and pieces[0] != tok.unk_token_id:
                ids.add(pieces[0])
            else:
                split += 1
        out[kind] = torch.tensor(sorted(ids), dtype=torch.long)
    return out, split


def probe(export: str, data: str, storage: Storage | None = None, samples: int = 512,
          batch_size: int = 64) -> dict:  # fmt: skip
    """Accuracy by kind with true and shuffled regions (and ITM's) on up to `samples` images
    of the shard set at `data` (one caption each, the same ones for every export)."""
    from transformers import AutoTokenizer

    from vlpdist.analysis.drift import local_export
    from vlpdist.data.loader import Loader
    from vlpdist.models.export import load_pretrained

    storage = storage or Storage()
    with tempfile.TemporaryDirectory(prefix="vlpdist-grounding-") as tmp:
        with local_export(export, tmp, storage) as local:
            model = load_pretrained(local)
        if "mlm" not in model.heads:
            raise VlpdistError(f"{export}: the export has no MLM head; the probe predicts words")
        # the samples, their regions and texts as pretraining streams them, nothing masked;
        # a fixed seed, so every export is probed on the same captions
        cfg = DataConfig(sources=[DataSource(data)], task="pretrain", batch_size=batch_size,
                         num_workers=0, max_regions=MAX_REGIONS, seed=0, mlm_prob=0.0,
                         mrm_prob=0.0, itm_prob=0.0, samples_per_epoch=None)  # fmt: skip
        loader = Loader(cfg, storage.cfg)
        tok = AutoTokenizer.from_pretrained(loader.tokenizer_dir(tmp))
        if len(tok) != model.dims.vocab_size:
            raise VlpdistError(
                f"{data}: its tokenizer has {len(tok)} words, the export {export} "
                f"{model.dims.vocab_size}: another vocabulary"
            )
        ids, split = _ids_by_kind(tok, word_lists(loader.manifest))
        counts = {f"{k}_{v}": [0, 0] for k in KINDS for v in ("true", "shuffled")}
        itm = {"true": [0, 0], "shuffled": [0, 0]}
        seen = 0
        model.eval()
        with torch.no_grad():
            for batch in loader:
                if seen >= samples:
                    break
                seen += int((~batch.is_pad).sum())
                for view, b in (("true", batch), ("shuffled", shuffle_regions(batch))):
                    _score_words(model, b, batch, ids, tok.mask_token_id, view, counts)
                    if "itm" in model.heads:
                        _score_itm(model, b, view, itm)
    return _summary(export, data, seen, counts, itm if "itm" in model.heads else None, split)


def _score_words(model, b, original, ids, mask_id, view, counts) -> None:
    real = ~original.is_pad
    for kind in KINDS:
        sel = torch.isin(original.input_ids, ids[kind]) & real[:, None]
        if not sel.any():
            continue
        masked = dataclasses.replace(
            b, input_ids=original.input_ids.masked_fill(sel, mask_id),
            mlm_labels=torch.where(sel, original.input_ids, -100),
            mrm_mask=torch.zeros_like(b.region_mask, dtype=torch.bool),
        )  # fmt: skip
        pred = model(**model_inputs(masked))["mlm"].argmax(-1)
        c = counts[f"{kind}_{view}"]
        c[0] += int((pred == original.input_ids[sel]).sum())
        c[1] += int(sel.sum())


def _score_itm(model, b, view, itm) -> None:
    real = ~b.is_pad
    plain = dataclasses.replace(b, mlm_labels=None, mrm_mask=None)
    match = model(**model_inputs(plain))["itm"].argmax(-1)  # 1 = the text is the image's own
    want = 1 if view == "true" else 0
    itm[view][0] += int((match[real] == want).sum())
    itm[view][1] += int(real.sum())


def _summary(export, data, seen, counts, itm, split) -> dict:
    def acc(c):
        return round(c[0] / c[1], 4) if c[1] else None

    kinds = {}
    for k in KINDS:
        t, s = counts[f"{k}_true"], counts[f"{k}_shuffled"]
        a, b = acc(t), acc(s)
        kinds[k] = {"true": a, "shuffled": b, "gap": None if a is None else round(a - b, 4),
                    "words": t[1]}  # fmt: skip
    out = {"export": export, "data": data, "samples": seen, "kinds": kinds,
           "multi_piece_words_left_out": split}  # fmt: skip
    if itm is not None:
        out["itm"] = {v: acc(c) for v, c in itm.items()}
    return out


def table(result: dict) -> str:
    lines = [f"grounding of {result['export']} on {result['data']} ({result['samples']} images)",
             f"{'kind':8} {'true':>7} {'shuffled':>9} {'gap':>7} {'words':>6}"]  # fmt: skip
    for k, v in result["kinds"].items():

        def pct(x):
            return "-" if x is None else f"{100 * x:.1f}"

        lines.append(f"{k:8} {pct(v['true']):>7} {pct(v['shuffled']):>9} {pct(v['gap']):>7} "
                     f"{v['words']:>6}")  # fmt: skip
    if "itm" in result:
        i = result["itm"]
        lines.append(f"itm: own caption recognised {100 * (i['true'] or 0):.1f}%, another "
                     f"image's rejected {100 * (i['shuffled'] or 0):.1f}%")  # fmt: skip
    return "\n".join(lines)


def main(args) -> int:
    """CLI: `vlpdist analyze grounding EXPORT --data URL [--out URL] [--json]`."""
    from vlpdist.config import Config, load

    cfg = load(Config, args.config, args.overrides, command="study") if args.config else None
    storage = Storage(cfg.storage if cfg else None)
    result = probe(args.export, args.data, storage, samples=args.samples)
    print(json.dumps(result) if args.json else table(result))
    if args.out:
        storage.write_text(join(args.out, "grounding.json"), json.dumps(result, indent=1))
    return 0
