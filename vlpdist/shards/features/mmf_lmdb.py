"""MMF / ViLBERT LMDB feature databases: key = image id, value = a pickled dict.

A pickle can run arbitrary code when read, so these databases are read only when the user
says they trust the file (`--trust-pickle`), and even then through the restricted
unpickler, which rebuilds numpy arrays and plain values and nothing else. MMF stores the
list of keys as a pickle under b"keys"; without it we walk the keys with a cursor.
"""

from __future__ import annotations

import os

from vlpdist.errors import SourceError
from vlpdist.shards.features import BadFeatures, FeatureStore, Regions, regions_from_record
from vlpdist.shards.features.unpickle import CorruptPickle, loads
from vlpdist.storage import Storage, is_local, split_protocol

KEYS = b"keys"


class LmdbFeatures(FeatureStore):
    fmt = "lmdb"

    def __init__(self, storage: Storage, urls: list[str], trust_pickle: bool):
        url = urls[0]
        if not trust_pickle:
            raise SourceError(
                f"{url}: LMDB feature values are Python pickles, which can run code when "
                "read; if you trust where this file came from, build with --trust-pickle "
                "(even then only numpy arrays and plain values are unpickled)"
            )
        if len(urls) != 1 or not is_local(url):
            raise SourceError(f"{url}: LMDB features must be one local path (copy it here first)")
        try:
            import lmdb
        except ImportError:
            raise SourceError(
                "reading LMDB features needs the lmdb package: pip install 'vlpdist[lmdb]'"
            ) from None
        path = split_protocol(url)[1]
        self.name = os.path.basename(path.rstrip("/"))
        try:
            self.env = lmdb.open(
                path,
                subdir=os.path.isdir(path),
                readonly=True,
                lock=False,  # read-only use: no lock file written next to someone's data
                readahead=False,  # random access over a file larger than memory
                meminit=False,
            )
        except lmdb.Error as e:
            raise SourceError(f"{url}: cannot open LMDB: {e}") from None
        with self.env.begin(write=False) as txn:
            raw = txn.get(KEYS)
            if raw is not None:
                names = loads(raw, f"{self.name}[keys]")
                if not isinstance(names, list | tuple):
                    raise SourceError(f"{url}: b'keys' holds {type(names).__name__}, not a list")
            else:
                names = [k for k in txn.cursor().iternext(keys=True, values=False) if k != KEYS]
        self.keys = {}
        for k in names:
            kb = k if isinstance(k, bytes) else str(k).encode()
            self.keys[kb.decode("utf-8", "replace")] = kb
        super().__init__(self.keys)

    def load(self, key: str) -> Regions:
        where = f"{self.name}[{key}]"
        with self.env.begin(write=False) as txn:
            raw = txn.get(self.keys[key])
        if raw is None:
            raise BadFeatures("listed under b'keys' but not stored", where)
        try:
            rec = loads(raw, where)
        except CorruptPickle:
            raise BadFeatures("unreadable pickle", where) from None
        if not isinstance(rec, dict):
            raise BadFeatures(f"value is {type(rec).__name__}, not a dict", where)
        try:
            return regions_from_record(rec)
        except BadFeatures as e:
            e.where = where
            raise

    def close(self) -> None:
        self.env.close()
