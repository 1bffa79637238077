"""Shard sources by name: an explicit table (nothing registers itself on import)."""

from vlpdist.shards.sources import cc, ccg, coco, jsonl, mmimdb, snli_ve, vizwiz, vqa2
from vlpdist.shards.sources.common import SourceDef

SOURCES: dict[str, SourceDef] = {
    "coco": coco.SOURCE,
    "vqa2_pretrain": vqa2.PRETRAIN_SOURCE,
    "vqa2": vqa2.SOURCE,
    "cc": cc.SOURCE,
    "ccg": ccg.SOURCE,
    "vizwiz": vizwiz.SOURCE,
    "snli_ve": snli_ve.SOURCE,
    "mmimdb": mmimdb.SOURCE,
    "jsonl": jsonl.SOURCE,
}

__all__ = ["SOURCES", "SourceDef"]
