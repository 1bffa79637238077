"""Token ids stored with every text, and the tokenizer that made them.

The tokenizer's files are copied into `<dataset>/tokenizer/` and their hash recorded in the
manifest, so a shard set is self-contained: models and loaders load exactly the vocabulary
the ids refer to, on a machine without a model hub.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from vlpdist.errors import SourceError
from vlpdist.storage import Storage, join

TOKENIZER_DIR = "tokenizer"


def files_digest(named: list[tuple[str, bytes]]) -> str:
    """The manifest's tokenizer hash: sha256 over (name, NUL, content) in name order."""
    digest = hashlib.sha256()
    for name, data in sorted(named):
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


class TextEncoder:
    """Wraps a transformers tokenizer; ids carry no special tokens ([CLS]/[SEP] are the
    loader's business, it also packs question + answer pairs)."""

    def __init__(self, tokenizer, name: str, max_tokens: int):
        self.tok = tokenizer
        self.name = name
        self.max_tokens = max_tokens
        self.truncated = 0

    @classmethod
    def load(cls, name_or_path: str, max_tokens: int) -> TextEncoder:
        if not name_or_path:
            raise SourceError("shards.tokenizer: no tokenizer given (an HF tokenizer directory)")
        from transformers import AutoTokenizer  # heavy import, only when building

        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SourceError(f"shards.tokenizer: cannot load '{name_or_path}': {first}") from None
        return cls(tok, os.path.basename(os.path.normpath(name_or_path)), max_tokens)

    def __call__(self, text: str) -> list[int]:
        # Asking for one id more than we keep tells whether the text was longer (counted
        # below), and an explicit max_length keeps transformers from warning that ids past
        # the model's maximum "will result in indexing errors": we never store those.
        # Truncation happens after the whole text is tokenized, so the ids are a prefix of
        # the untruncated ones.
        ids = self.tok(
            text, add_special_tokens=False, truncation=True, max_length=self.max_tokens + 1
        )["input_ids"]
        if len(ids) > self.max_tokens:
            self.truncated += 1
            ids = ids[: self.max_tokens]
        return ids

    def save(self, storage: Storage, dataset_url: str) -> dict:
        """Copy the tokenizer files next to the shards; the manifest's `tokenizer` entry."""
        named = []
        with tempfile.TemporaryDirectory() as tmp:
            self.tok.save_pretrained(tmp)
            for name in sorted(os.listdir(tmp)):
                path = os.path.join(tmp, name)
                with open(path, "rb") as f:
                    named.append((name, f.read()))
                storage.put_file(path, join(dataset_url, TOKENIZER_DIR, name))
        return {
            "name": self.name,
            "path": TOKENIZER_DIR,
            "files": [n for n, _ in named],
            "sha256": files_digest(named),
            "vocab_size": len(self.tok),
            "lowercase": bool(getattr(self.tok, "do_lower_case", False)),
            "max_tokens": self.max_tokens,
        }
