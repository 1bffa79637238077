"""Online data: stream shards → decode → mask → collate into `Batch` (see loader.py).

Kept import-light: `from vlpdist.data.loader import Loader` pulls in torch, this does not.
"""
