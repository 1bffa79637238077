"""Storage layer against local paths and a real S3 server on loopback (with injected faults)."""

from __future__ import annotations

import logging
import os

import pytest
from faultproxy import FaultProxy

from vlpdist.config import RetryConfig, StorageConfig
from vlpdist.errors import StorageError
from vlpdist.storage import Storage, classify

SECRET = "testing-secret-value"
FAST = RetryConfig(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)


def roundtrip(st: Storage, base: str) -> None:
    st.write_bytes(f"{base}/d/a.bin", bytes(range(256)) * 100)
    st.write_text(f"{base}/d/b.txt", "hello")
    assert st.exists(f"{base}/d/a.bin") and not st.exists(f"{base}/d/nope")
    assert st.size(f"{base}/d/a.bin") == 25600
    assert st.read_bytes(f"{base}/d/a.bin", 10, 20) == bytes(range(10, 20))
    assert st.read_text(f"{base}/d/b.txt") == "hello"
    with st.open_read(f"{base}/d/a.bin", chunk_size=1000) as f:
        assert f.read() == bytes(range(256)) * 100
    assert [u.rsplit("/", 1)[1] for u in st.ls(f"{base}/d")] == ["a.bin", "b.txt"]
    assert st.ls(f"{base}/nothing-here") == []
    st.rm(f"{base}/d/b.txt")
    assert not st.exists(f"{base}/d/b.txt")


def test_roundtrip_local_plain_and_file_url(tmp_path):
    roundtrip(Storage(), str(tmp_path / "plain"))
    roundtrip(Storage(), f"file://{tmp_path}/url")
    assert (tmp_path / "url" / "d" / "a.bin").exists()


def test_roundtrip_s3(s3):
    roundtrip(Storage(), s3.url("root"))
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket)["Contents"]]
    assert keys == ["root/d/a.bin"]


def test_roundtrip_other_fsspec_protocol():
    roundtrip(Storage(), "memory://vlpdist-test")


def test_endpoint_and_credentials_from_config(s3, monkeypatch):
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    cfg = StorageConfig(
        endpoint_url=s3.endpoint, access_key_id="cfg-key", secret_access_key="cfg-secret"
    )
    st = Storage(cfg)
    st.write_bytes(s3.url("cfg.bin"), b"x")
    assert st.read_bytes(s3.url("cfg.bin")) == b"x"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_failed_write_leaves_nothing_visible(where, s3, tmp_path):
    st = Storage()
    url = s3.url("atomic.bin") if where == "s3" else str(tmp_path / "atomic.bin")
    with pytest.raises(RuntimeError), st.open_write(url) as f:
        f.write(b"partial data")
        raise RuntimeError("writer died")
    assert not st.exists(url)
    if where == "local":
        assert os.listdir(tmp_path) == []  # no temporary left behind either
    st.write_bytes(url, b"old")
    with pytest.raises(RuntimeError), st.open_write(url) as f:
        f.write(b"new but unfinished")
        raise RuntimeError("writer died")
    assert st.read_bytes(url) == b"old"  # readers never see a half-written object


def test_transient_errors_are_retried_and_logged(s3, caplog):
    with FaultProxy(s3.endpoint) as proxy:
        st = Storage(StorageConfig(endpoint_url=proxy.url, retry=FAST))
        st.write_bytes(s3.url("t.bin"), b"payload" * 1000)
        proxy.plan(["503", "503", None])
        with caplog.at_level(logging.WARNING, logger="vlpdist.storage"):
            assert st.read_bytes(s3.url("t.bin")) == b"payload" * 1000
        assert proxy.faults("503") == 2
        retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
        assert len(retries) == 2, retries
        assert "503" in retries[0] and "retry 1/3" in retries[0] and "retry 2/3" in retries[1]
        # aiohttp itself re-sends once when a kept-alive connection is reset before the
        # reply; a second reset in a row reaches our retry loop
        caplog.clear()
        proxy.plan(["reset", "reset", "reset", None])
        with caplog.at_level(logging.WARNING, logger="vlpdist.storage"):
            assert st.read_bytes(s3.url("t.bin")) == b"payload" * 1000
        assert proxy.faults("reset") == 3
        assert any("retry" in r.getMessage() for r in caplog.records), caplog.text
        # every request sent again is counted, aiohttp's own re-send included
        assert st.retries == proxy.faults() == 5 and st.resends == 2
    assert SECRET not in caplog.text


def test_retries_are_bounded(s3):
    with FaultProxy(s3.endpoint) as proxy:
        st = Storage(StorageConfig(endpoint_url=proxy.url, retry=FAST))
        proxy.plan(["503"] * 50)
        with pytest.raises(StorageError, match=r"t.bin: read failed after 4 attempts .*503"):
            st.read_bytes(s3.url("t.bin"))
    # exactly max_attempts requests: botocore's and s3fs's own retry loops are off
    assert len(proxy.log) == 4


def test_retries_stop_at_the_deadline(s3):
    with FaultProxy(s3.endpoint) as proxy:
        # a deadline some attempts long even when the first one is slow (a busy machine)
        retry = RetryConfig(max_attempts=1000, base_delay_s=0.05, max_delay_s=0.05, deadline_s=2.0)
        st = Storage(StorageConfig(endpoint_url=proxy.url, retry=retry))
        proxy.plan(["503"] * 1000)
        with pytest.raises(StorageError, match=r"t.bin: read failed after \d+ attempts") as e:
            st.read_bytes(s3.url("t.bin"))
    assert e.value.kind == "transient"
    assert 2 <= len(proxy.log) < 1000  # the deadline, not the attempts, ended it


def test_range_reader_resumes_at_the_byte_where_a_read_broke(s3):
    data = os.urandom(300_000)
    with FaultProxy(s3.endpoint) as proxy:
        st = Storage(StorageConfig(endpoint_url=proxy.url, retry=FAST))
        st.write_bytes(s3.url("big.bin"), data)
        proxy.log.clear()
        proxy.plan([None, None, "cut", "reset", None])  # HEAD, 1st range ok, 2nd cut, ...
        with st.open_read(s3.url("big.bin"), chunk_size=100_000) as f:
            got = f.read()
    assert got == data
    ranges = [tuple(map(int, e["range"][6:].split("-"))) for e in proxy.log if e["method"] == "GET"]
    assert ranges[0] == (0, 99_999)  # chunk-sized requests
    # the 2nd chunk was cut half-way: the retry asks only for the 50,000 bytes still missing;
    # that request is reset before any byte arrives, so the next asks for the same again
    assert ranges[1] == (100_000, 199_999)
    assert ranges[2] == ranges[3] == (150_000, 199_999)
    assert ranges[4] == (200_000, 299_999) and len(ranges) == 5
    assert proxy.faults("cut") == 1 and proxy.faults("reset") == 1


def test_range_read_resumes_at_the_exact_byte(s3):
    data = os.urandom(1_000_000)
    with FaultProxy(s3.endpoint) as proxy:
        st = Storage(StorageConfig(endpoint_url=proxy.url, retry=FAST))
        st.write_bytes(s3.url("r.bin"), data)
        proxy.log.clear()
        proxy.plan(["cut", "cut", None])
        assert st.read_bytes(s3.url("r.bin"), 1000, 901_000) == data[1000:901_000]
    starts = [int(e["range"][6:].split("-")[0]) for e in proxy.log if e["method"] == "GET"]
    assert starts[0] == 1000 and starts[0] < starts[1] < starts[2], starts


def test_permanent_errors_fail_at_once(s3, tmp_path):
    with FaultProxy(s3.endpoint) as proxy:
        st = Storage(StorageConfig(endpoint_url=proxy.url, retry=FAST))
        with pytest.raises(StorageError) as e:
            st.read_bytes("s3://no-such-bucket-xyz/k")
        assert str(e.value) == "s3://no-such-bucket-xyz/k: no such bucket 'no-such-bucket-xyz'"
        paths = [(e["method"], e["path"]) for e in proxy.log]
        assert len(paths) == len(set(paths)) and paths, paths  # nothing retried
        with pytest.raises(StorageError, match=r"missing.bin: not found$"):
            st.read_bytes(s3.url("missing.bin"))
    with pytest.raises(StorageError, match="nope.bin: not found"):
        Storage().read_bytes(str(tmp_path / "nope.bin"))
    with pytest.raises(StorageError, match="unsupported storage protocol 'nosuchproto'"):
        Storage().read_bytes("nosuchproto://x/y")


def test_wrong_credentials_are_one_clear_line_without_secrets(s3, monkeypatch):
    import moto.settings

    Storage().write_bytes(s3.url("k.bin"), b"x")
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys now
    with pytest.raises(StorageError) as e:
        Storage().read_bytes(s3.url("k.bin"))
    msg = str(e.value)
    assert msg.startswith(f"{s3.url('k.bin')}: access denied") and "AWS_ACCESS_KEY_ID" in msg
    assert SECRET not in msg and "testing-key-id" not in msg


def test_redaction_of_known_secrets(s3):
    st = Storage()
    assert st.redact(f"oops {SECRET} and testing-key-id") == "oops *** and ***"


def test_classification_of_plain_errors():
    assert classify(ConnectionResetError()) == "transient"
    assert classify(TimeoutError()) == "transient"
    assert classify(FileNotFoundError()) == "not_found"
    assert classify(PermissionError()) == "denied"
    assert classify(ValueError("x")) == "permanent"


def test_cli_wrong_credentials_one_line(s3, run_cli, monkeypatch):
    import moto.settings

    Storage().write_bytes(s3.url("set", "index.json"), b"{}")
    monkeypatch.setattr(
        moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0
    )  # the server is in-process
    out = run_cli("shards", "inspect", s3.url("set"))
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "access denied" in lines[0] and "Traceback" not in out.stderr
    assert SECRET not in out.stderr + out.stdout
