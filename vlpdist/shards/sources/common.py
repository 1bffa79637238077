"""What every source shares: its declared inputs and options, checked against the recipe;
reading the public files through `Storage`; seeded subsets; joining texts with features.

A source is a plain function `samples(ctx) -> Iterator[(Sample, where)]` plus a `SourceDef`
naming its inputs and options. Every record a source reads counts in `report.read`; a
record or image that cannot be used is `ctx.skip(...)`ed with a reason and a `file:line`
(or `file:path[i]` for JSON documents): nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from vlpdist.config import Recipe
from vlpdist.errors import SourceError
from vlpdist.shards.features import FORMATS as FEATURE_FORMATS
from vlpdist.shards.features import BadFeatures, FeatureStore
from vlpdist.shards.schema import Sample, make_key
from vlpdist.shards.tokenize import TextEncoder
from vlpdist.shards.writer import BuildReport
from vlpdist.storage import Storage

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Option:
    default: object
    help: str
    types: tuple[type, ...] = ()  # accepted types besides None; () = type of the default
    choices: tuple = ()


@dataclass(frozen=True)
class SourceDef:
    samples: Callable[[Context], Iterator[tuple[Sample, str]]]
    inputs: dict[str, str]  # role -> what file it is; roles in `optional` may be left out
    options: dict[str, Option] = field(default_factory=dict)
    optional: tuple[str, ...] = ()


# Inputs and options every source has: the region features and the subset selection.
COMMON_INPUTS = {
    "features": "region features: TSV file(s), npy/npz directory, LMDB or a vlpdist shard set",
    "images": "the images themselves, to extract region features from (options.extractor) "
    "instead of reading inputs.features",
}
COMMON_OPTIONS = {
    "features_format": Option("auto", "feature layout", choices=FEATURE_FORMATS),
    "tsv_fields": Option(None, "TSV field names when not BUTD (6) or LXMERT (10)", (list,)),
    "fraction": Option(1.0, "seeded fraction of images kept (by image)", (float, int)),
    "size": Option(None, "seeded number of images kept (by image)", (int,)),
    "seed": Option(0, "seed of the subset selection", (int,)),
    "extractor": Option(None, "extraction config (configs/extract/) for inputs.images", (str,)),
    "regions": Option(
        None,
        "where inputs.images' regions go (default: beside the new set, <images' name>_regions)",
        (str,),
    ),  # fmt: skip
}


@dataclass
class Context:
    """Everything a source function needs; built by `vlpdist.shards.build`."""

    recipe: Recipe
    storage: Storage
    inputs: dict[str, str]
    options: dict[str, object]
    encode: TextEncoder
    report: BuildReport
    features: FeatureStore
    extra: dict = field(default_factory=dict)

    def skip(self, item: object, reason: str, where: str | None = None) -> None:
        self.report.skip(item, reason, where)

    def text(self, kind: str, text: str, **fields) -> dict:
        """A text record: kind, the text itself, its token ids, then the task fields."""
        return {"kind": kind, "text": text, "ids": self.encode(text), **fields}


# ---------------------------------------------------------------- recipe validation


def resolve(recipe: Recipe, sdef: SourceDef) -> tuple[dict[str, str], dict[str, object]]:
    """The recipe's inputs with '{root}'/'{split}' expanded (inputs set to null are left
    out), and its options merged over the defaults. Unknown roles/keys, missing inputs and
    wrong types are one-line errors."""
    src = recipe.source
    roles = {**sdef.inputs, **COMMON_INPUTS}
    specs = {**COMMON_OPTIONS, **sdef.options}
    for role in recipe.inputs:
        if role not in roles:
            raise SourceError(
                f"inputs.{role}: unknown input of source '{src}' (known: {', '.join(roles)})"
            )
    for key in recipe.options:
        if key not in specs:
            raise SourceError(
                f"options.{key}: unknown option of source '{src}' (known: {', '.join(specs)})"
            )
    from_pixels = recipe.inputs.get("images") is not None
    if from_pixels and recipe.inputs.get("features") is not None:
        raise SourceError("inputs.images and inputs.features: give one of them, not both")
    if from_pixels and not recipe.options.get("extractor"):
        raise SourceError("options.extractor: name the extraction config for inputs.images")
    optional = {*sdef.optional, "images", *(("features",) if from_pixels else ())}
    inputs = {}
    for role, what in roles.items():
        if recipe.inputs.get(role) is None:
            if role not in optional:
                left_out = ", it cannot be null" if role in recipe.inputs else ""
                raise SourceError(
                    f"inputs.{role}: source '{src}' needs this input ({what}){left_out}"
                )
            continue
        inputs[role] = _expand(recipe, role, recipe.inputs[role])
    options = {}
    for key, spec in specs.items():
        value = recipe.options.get(key, spec.default)
        types = spec.types or (type(spec.default),)
        ok = (value is None and spec.default is None) or isinstance(value, types)
        if not ok or (isinstance(value, bool) and bool not in types):
            raise SourceError(f"options.{key}: expected {spec.help}, got {value!r}")
        if spec.choices and value not in spec.choices:
            raise SourceError(f"options.{key}: {value!r} is not one of {', '.join(spec.choices)}")
        options[key] = value
    if not 0 < options["fraction"] <= 1:
        raise SourceError(f"options.fraction: must be in (0, 1], got {options['fraction']}")
    if options["size"] is not None and (options["size"] < 1 or options["fraction"] != 1):
        raise SourceError("options.size: must be >= 1, and cannot be combined with fraction")
    return inputs, options


def _expand(recipe: Recipe, role: str, value: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group(1) == "root":
            return recipe.root.rstrip("/")
        if m.group(1) == "split":
            return recipe.split
        raise SourceError(f"inputs.{role}: unknown placeholder '{{{m.group(1)}}}' in {value!r}")

    return _PLACEHOLDER.sub(sub, value)


def check_exists(storage: Storage, inputs: dict[str, str]) -> None:
    for role, url in inputs.items():
        # features and images may be globs; their readers name what is missing
        if role not in ("features", "images") and not storage.exists(url):
            raise SourceError(f"{url}: file not found (inputs.{role})")


# ---------------------------------------------------------------- reading public files


def name(ctx: Context, role: str) -> str:
    """The file name used in skip locations."""
    return os.path.basename(ctx.inputs[role].rstrip("/"))


def read_json(storage: Storage, url: str):
    try:
        return json.loads(storage.read_bytes(url))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" (line {e.lineno}, column {e.colno})" if hasattr(e, "lineno") else ""
        raise SourceError(f"{url}: invalid JSON{where}: {getattr(e, 'msg', e)}") from None


def json_list(ctx: Context, role: str, key: str | None = None) -> list:
    """A JSON document that is a list, or holds one under `key`."""
    url = ctx.inputs[role]
    data = read_json(ctx.storage, url)
    if key is not None and isinstance(data, dict):
        data = data.get(key)
    if not isinstance(data, list):
        want = f"a mapping with a '{key}' list" if key else "a list"
        raise SourceError(f"{url}: expected {want} (inputs.{role})")
    return data


def lines(ctx: Context, role: str, rows: set[int] | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline), streamed; blank lines, and lines whose
    0-based row is not in `rows` (when given), are left out.
    Only b"\\n" ends a line (a stray carriage return inside a caption does not), and a line
    that is not UTF-8 is a counted skip rather than the end of the build."""
    url, file = ctx.inputs[role], name(ctx, role)
    with ctx.storage.open_read(url) as f:
        for no, raw in enumerate(f, 1):
            if rows is not None and no - 1 not in rows:
                continue
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                ctx.report.read += 1
                ctx.skip(f"line {no}", "not UTF-8 text", f"{file}:{no}")
                continue
            if line.strip():
                yield no, line


def count_lines(ctx: Context, role: str) -> int:
    with ctx.storage.open_read(ctx.inputs[role]) as f:
        return sum(1 for _ in f)


# ---------------------------------------------------------------- subsets and samples


def select_indices(ctx: Context, n: int) -> set[int] | None:
    """Indices in [0, n) kept by options.fraction/size with options.seed, or None for all.
    A seeded permutation's prefix: with one seed the 10% subset lies inside the 50% one."""
    fraction, size, seed = ctx.options["fraction"], ctx.options["size"], ctx.options["seed"]
    if size is None and fraction >= 1:
        return None
    k = min(n, size) if size is not None else max(1, round(fraction * n)) if n else 0
    keep = np.random.default_rng(seed).permutation(n)[:k]
    how = f"size={size}" if size is not None else f"fraction={fraction}"
    ctx.extra["subset"] = {"how": how, "seed": seed, "kept": int(k), "of": n}
    ctx.report.notes.append(f"subset {how} seed={seed}: kept {k} of {n} images")
    return {int(i) for i in keep}


def select(ctx: Context, image_ids: list) -> list:
    """The image ids kept by the subset options, in their original order. The choice
    depends only on the set of ids (sorted first), not on the order of the file."""
    keep = select_indices(ctx, len(image_ids))
    if keep is None:
        return list(image_ids)
    chosen = {iid for i, iid in enumerate(sorted(image_ids, key=str)) if i in keep}
    return [iid for iid in image_ids if iid in chosen]


def sample(ctx: Context, image_id: object, texts: list[dict], where: str):
    """(Sample, where) joining `texts` with the image's features, or None (skip counted)."""
    if not texts:
        return None  # every record of this image was already skipped with its reason
    key = ctx.features.lookup(image_id)
    if key is None:
        ctx.skip(image_id, "no features for this image", where)
        return None
    try:
        r = ctx.features.load(key)
    except BadFeatures as e:
        ctx.skip(image_id, f"bad features: {e.reason}", f"{where}; {e.where}" if e.where else where)
        return None
    meta = {
        "image_id": image_id,
        "width": r.width,
        "height": r.height,
        "source": ctx.recipe.source,
        "split": ctx.recipe.split,
        "texts": texts,
    }
    return Sample(make_key(image_id), r.feats, r.boxes, meta, r.cls_prob), where


def grouped(
    ctx: Context, by_image: dict[object, list[dict]], first_where: dict[object, str]
) -> Iterator[tuple[Sample, str]]:
    """Samples of the selected images, in order of first appearance."""
    for image_id in select(ctx, list(by_image)):
        out = sample(ctx, image_id, by_image[image_id], first_where[image_id])
        if out is not None:
            yield out


def str_field(rec: dict, key: str) -> str | None:
    """A non-empty string field, or None."""
    value = rec.get(key) if isinstance(rec, dict) else None
    return value if isinstance(value, str) and value.strip() else None


def id_field(rec: dict, key: str):
    """An int or non-empty string id, or None."""
    value = rec.get(key) if isinstance(rec, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        return None
    return value
