"""Joining Ray, for the two parts of vlpdist that use it (studies, extraction): one way."""

from __future__ import annotations

import os

LOCAL_IP = "127.0.0.2"  # a local Ray's node address: loopback, and one Ray keeps as given


def connect() -> str:
    """Join RAY_ADDRESS (set by `ray job submit` too), or start a local Ray on loopback;
    nothing when this process is already connected. Where it runs: the address or "local"."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return address or "local"
    kw = {"log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **kw)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(_node_ip_address=LOCAL_IP, include_dashboard=False, **kw)
    return address or "local"
