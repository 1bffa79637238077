"""Bottom-up-attention TSV files: one image per line, arrays as base64 float32.

The files are tens of GB, so one pass records where each image's line starts and ends
(reading only the id field) and `load` reads just that byte range later.

Lines are split on tabs rather than parsed with the csv module: the writers
(csv.DictWriter, excel-tab dialect) quote only fields holding a tab, quote or newline, which
ids, integers and base64 never do, and a plain split needs no process-wide
`csv.field_size_limit` raise for the multi-megabyte feature fields.
"""

from __future__ import annotations

import os

from vlpdist.errors import SourceError
from vlpdist.shards.features import BadFeatures, FeatureStore, Regions, regions_from_record
from vlpdist.storage import Storage, is_local, split_protocol

# The original bottom-up-attention generate_tsv.py (peteanderson80) and LXMERT's
# (airsplay/py-bottom-up-attention) field orders; note LXMERT puts height before width.
BUTD_FIELDS = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
LXMERT_FIELDS = [
    "img_id", "img_h", "img_w", "objects_id", "objects_conf",
    "attrs_id", "attrs_conf", "num_boxes", "boxes", "features",
]  # fmt: skip
KNOWN = {len(BUTD_FIELDS): BUTD_FIELDS, len(LXMERT_FIELDS): LXMERT_FIELDS}


class TsvFeatures(FeatureStore):
    fmt = "tsv"

    def __init__(self, storage: Storage, urls: list[str], fields: list[str] | None = None):
        self.storage, self.urls = storage, urls
        self.fields = list(fields) if fields else None
        # key -> (file number, start byte, end byte, line number)
        self.index: dict[str, tuple[int, int, int, int]] = {}
        self.duplicates = 0
        for i, url in enumerate(urls):
            self._scan(i, url)
        super().__init__(self.index)
        if self.duplicates:
            self.notes.append(f"{self.duplicates} repeated TSV lines of an image (first kept)")
        self._files: dict[int, object] = {}

    def _scan(self, file_no: int, url: str) -> None:
        offset = 0
        with self.storage.open_read(url) as f:
            for line_no, line in enumerate(f, start=1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                if self.fields is None:
                    n = line.count(b"\t") + 1
                    if n not in KNOWN:
                        raise SourceError(
                            f"{url}:{line_no}: {n} tab-separated fields; known layouts have "
                            f"{sorted(KNOWN)} (set options.tsv_fields to name the fields)"
                        )
                    self.fields = KNOWN[n]
                key = line.split(b"\t", 1)[0].strip(b'"').decode("utf-8", "replace")
                if key in self.index:
                    self.duplicates += 1  # the first line of an image wins
                    continue
                self.index[key] = (file_no, start, offset, line_no)

    def _read(self, file_no: int, start: int, end: int) -> bytes:
        url = self.urls[file_no]
        if not is_local(url):
            return self.storage.read_bytes(url, start, end)
        f = self._files.get(file_no)
        if f is None:
            f = self._files[file_no] = open(split_protocol(url)[1], "rb")  # noqa: SIM115
        f.seek(start)
        return f.read(end - start)

    def load(self, key: str) -> Regions:
        file_no, start, end, line_no = self.index[key]
        where = f"{os.path.basename(self.urls[file_no])}:{line_no}"
        values = self._read(file_no, start, end).rstrip(b"\r\n").split(b"\t")
        if len(values) != len(self.fields):
            raise BadFeatures(
                f"TSV line has {len(values)} fields, expected {len(self.fields)}", where
            )
        try:
            return regions_from_record(dict(zip(self.fields, values, strict=True)))
        except BadFeatures as e:
            e.where = where
            raise

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
