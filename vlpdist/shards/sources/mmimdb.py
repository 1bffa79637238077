"""MM-IMDb (Arevalo et al. 2017, mmimdb.tar.gz): `split.json` {"train", "dev", "test": [ids]}
and one `dataset/<id>.json` per movie with "plot" (a list of plot summaries) and "genres";
the poster `dataset/<id>.jpeg` is the image, keyed by the movie id.

`options.plot`: 'first' keeps the first summary as MMF does, 'join' joins them all into one
text, 'all' keeps each as its own text record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from vlpdist.errors import SourceError, StorageError
from vlpdist.shards.sources.common import Context, Option, SourceDef, grouped, read_json
from vlpdist.storage import join


def _movie(ctx: Context, movie_id: str) -> tuple[list[dict] | None, str | None]:
    """(text records, None) or (None, skip reason)."""
    try:
        rec = json.loads(ctx.storage.read_bytes(join(ctx.inputs["movies"], f"{movie_id}.json")))
    except StorageError as e:
        if not str(e).endswith(": not found"):
            raise  # access denied and the like concern the whole build, not one movie
        return None, "no movie json"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "malformed movie json"
    plots = rec.get("plot") if isinstance(rec, dict) else None
    genres = rec.get("genres") if isinstance(rec, dict) else None
    if isinstance(plots, str):
        plots = [plots]
    if not isinstance(plots, list) or not plots or not all(isinstance(p, str) for p in plots):
        return None, "no plot"
    if not isinstance(genres, list) or not genres or not all(isinstance(g, str) for g in genres):
        return None, "bad label (genres must be a non-empty list of names)"
    mode = ctx.options["plot"]
    texts = plots[:1] if mode == "first" else [" ".join(plots)] if mode == "join" else plots
    return [ctx.text("plot", t.strip(), genres=genres) for t in texts if t.strip()], None


def samples(ctx: Context) -> Iterator:
    splits = read_json(ctx.storage, ctx.inputs["split"])
    url = ctx.inputs["split"]
    if not isinstance(splits, dict) or not isinstance(splits.get(ctx.recipe.split), list):
        known = ", ".join(splits) if isinstance(splits, dict) else "none"
        raise SourceError(f"{url}: no list for split '{ctx.recipe.split}' (splits: {known})")
    by_image: dict = {}
    first_where: dict = {}
    for movie_id in splits[ctx.recipe.split]:
        movie_id = str(movie_id)
        where = f"{movie_id}.json"
        ctx.report.read += 1
        texts, why = _movie(ctx, movie_id)
        if texts is None:
            ctx.skip(movie_id, why, where)
            continue
        by_image[movie_id] = texts
        first_where[movie_id] = where
    yield from grouped(ctx, by_image, first_where)


SOURCE = SourceDef(
    samples,
    inputs={"split": "mmimdb split.json", "movies": "the dataset/ directory of <id>.json files"},
    options={"plot": Option("first", "which plot summaries", choices=("first", "join", "all"))},
)
