"""Offline shard tools: the sample schema, writer + manifest, reader/verify/inspect, the
public-dataset builders (`build`, `sources/`, `features/`) and the synthetic world."""
