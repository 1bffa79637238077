"""`vlpdist shards build RECIPE --out URL`: public dataset files -> a committed shard set.

Read top to bottom: check the recipe against its source's declared inputs and options,
load the tokenizer, index the features, stream the source's samples into the writer, save
the tokenizer next to the shards, commit `index.json`. The build report (what was read,
written and skipped, and why) goes to stderr at the end, also when the build fails.
"""

from __future__ import annotations

import dataclasses
import sys

from vlpdist.config import Recipe, to_dict
from vlpdist.errors import ShardError, SourceError
from vlpdist.shards.features import open_features
from vlpdist.shards.sources import SOURCES
from vlpdist.shards.sources.common import Context, check_exists, resolve
from vlpdist.shards.tokenize import TextEncoder
from vlpdist.shards.writer import BuildReport, ShardWriter
from vlpdist.storage import Storage


def build(
    recipe: Recipe, out_url: str, *, overwrite: bool = False, trust_pickle: bool = False
) -> dict:
    """Build the shard set of `recipe` at `out_url`; returns the manifest (index.json)."""
    sdef = SOURCES.get(recipe.source)
    if sdef is None:
        raise SourceError(f"source: unknown source '{recipe.source}' (known: {', '.join(SOURCES)})")
    storage = Storage(recipe.storage)
    inputs, options = resolve(recipe, sdef)
    check_exists(storage, inputs)
    dataset = recipe.dataset or recipe.source
    report = BuildReport()
    # created first: it refuses an existing set before the (long) feature indexing
    writer = ShardWriter(
        storage,
        out_url,
        dataset,
        report,
        target_shard_bytes=int(recipe.shards.target_shard_mb * 1e6),
        progress=recipe.shards.progress,
        overwrite=overwrite,
    )
    encoder = TextEncoder.load(recipe.shards.tokenizer, recipe.shards.max_text_tokens)
    if "images" in inputs:
        inputs["features"] = _extract_regions(recipe, storage, inputs, options, out_url, report,
                                              overwrite)  # fmt: skip
        options["features_format"] = "shards"
        report.notes.append(
            f"features: extracted from {inputs['images']} into {inputs['features']}"
        )
    features = open_features(
        storage,
        inputs["features"],
        options["features_format"],
        tsv_fields=options["tsv_fields"],
        trust_pickle=trust_pickle,
    )
    report.notes.append(f"features: {len(features)} images indexed ({features.fmt})")
    report.notes.extend(features.notes)
    extra = {"features": {"format": features.fmt, "images": len(features)}}
    ctx = Context(recipe, storage, inputs, options, encoder, report, features, extra)
    summary_in_error = False
    try:
        for sample, where in sdef.samples(ctx):
            writer.add(sample, where)
        report.truncated_texts = encoder.truncated
        return writer.commit(recipe.source, to_dict(recipe, redact=True), encoder, extra=extra)
    except BaseException as e:
        # commit's "nothing could be written" error already carries the summary
        summary_in_error = isinstance(e, ShardError) and report.written == 0
        writer.abort()
        raise
    finally:
        features.close()
        report.truncated_texts = encoder.truncated
        if not summary_in_error:
            print(report.summary(dataset), file=sys.stderr)


def _extract_regions(recipe, storage, inputs, options, out_url: str, report, overwrite) -> str:
    """inputs.images: their regions, extracted first into a set beside the new one
    (`<images' name>_regions`, or options.regions), which a later build over the same images
    and extractor reuses (the captions and the questions of one image collection, say)."""
    from vlpdist.config import load
    from vlpdist.config.extract import ExtractConfig
    from vlpdist.shards.extract.extractors import get_extractor
    from vlpdist.shards.extract.images import regions_name
    from vlpdist.shards.extract.pipeline import extract
    from vlpdist.shards.reader import load_manifest
    from vlpdist.shards.schema import INDEX
    from vlpdist.storage import join

    cfg = load(ExtractConfig, options["extractor"], [])
    cfg = dataclasses.replace(cfg, images=inputs["images"], storage=recipe.storage)
    url = options["regions"] or join(
        out_url.rstrip("/").rsplit("/", 1)[0], regions_name(cfg.images)
    )
    if storage.exists(join(url, INDEX)) and not overwrite:
        extra = load_manifest(storage, url).get("extra", {})
        wanted = get_extractor(cfg.extractor, cfg.options, cfg.weights, cfg.seed).describe()
        if extra.get("images") == cfg.images and extra.get("extractor") == wanted:
            report.notes.append(f"regions: reused {url} (the same images and extractor)")
            return url
        raise SourceError(
            f"{url}: holds regions of other images or another extractor; use --overwrite to "
            "extract again"
        )
    extract(cfg, url, overwrite=overwrite)
    return url
