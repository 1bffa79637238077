"""The cluster files agree with `vlpdist.study.defaults`: docker/docker-compose.yml and the
Dockerfile parsed, the launch scripts syntax-checked and run against stand-in commands.
Fast: no Docker, no Ray, nothing started."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlpdist.study import defaults

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
LAUNCH = REPO / "launch"
SCRIPTS = ["local_cluster.sh", "ray_submit.sh", "deepspeed_node.sh", "bench_gpu.sh"]
SECRET = "not-to-be-printed-7f3a"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def command_text(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_has_the_topology(services):
    assert set(services) == {"minio", "minio-init", "ray-head", "ray-worker", "submit"}


@pytest.mark.parametrize("name,repo", [("minio", "minio/minio"), ("minio-init", "minio/mc")])
def test_minio_images_are_pinned(services, name, repo):
    assert re.fullmatch(
        rf"{repo}:RELEASE\.\d{{4}}-\d\d-\d\dT\d\d-\d\d-\d\dZ", services[name]["image"]
    )


def test_minio_serves_the_defaults(services):
    minio = services["minio"]
    assert minio["healthcheck"]["test"]
    assert minio["environment"]["MINIO_ROOT_USER"] == defaults.S3_ACCESS_KEY
    assert minio["environment"]["MINIO_ROOT_PASSWORD"] == defaults.S3_SECRET_KEY
    assert f"{defaults.S3_PORT}:{defaults.S3_PORT}" in minio["ports"]


def test_minio_init_creates_the_bucket_once_minio_is_healthy(services):
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    text = command_text(init)
    assert "mc alias set" in text
    assert re.search(rf"mc mb --ignore-existing \S+/{defaults.BUCKET}\b", text)


def test_ray_head_exposes_and_uses_the_default_ports(services):
    head = services["ray-head"]
    assert f"{defaults.DASHBOARD_PORT}:{defaults.DASHBOARD_PORT}" in head["ports"]
    assert f"{defaults.RAY_PORT}:{defaults.RAY_PORT}" in head["ports"]
    cmd = command_text(head).split()
    assert cmd[:3] == ["ray", "start", "--head"] and "--block" in cmd
    assert cmd[cmd.index("--port") + 1] == str(defaults.RAY_PORT)
    assert cmd[cmd.index("--dashboard-port") + 1] == str(defaults.DASHBOARD_PORT)
    assert cmd[cmd.index("--dashboard-host") + 1] == "0.0.0.0"
    assert str(defaults.DASHBOARD_PORT) in " ".join(head["healthcheck"]["test"])


def test_ray_worker_joins_the_head(services):
    cmd = command_text(services["ray-worker"]).split()
    assert cmd[:2] == ["ray", "start"] and "--block" in cmd
    assert cmd[cmd.index("--address") + 1] == f"ray-head:{defaults.RAY_PORT}"


def test_every_s3_setting_points_at_minio(services):
    expected = {
        "AWS_ENDPOINT_URL": f"http://minio:{defaults.S3_PORT}",
        "AWS_ACCESS_KEY_ID": defaults.S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": defaults.S3_SECRET_KEY,
    }
    for name, service in services.items():
        env = service.get("environment", {})
        for key, value in env.items():
            if key in expected:
                assert value == expected[key], (name, key)
        if name in ("ray-head", "ray-worker", "submit", "minio-init"):
            assert set(defaults.S3_ENV) <= set(env), name
        if name.startswith("ray-") or name == "submit":
            assert env["RAY_AUTH_MODE"] == "disabled", name


def load_config_sets() -> list[str]:
    from vlpdist.config import Config, load

    study = load(Config, str(REPO / defaults.STUDY_CONFIG), command="study").study
    return [src.url for sources in study.pretrain_sets.values() for src in sources]


def test_submit_runs_the_demo_study_on_the_head(services):
    submit = services["submit"]
    assert submit["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert submit["depends_on"]["ray-head"]["condition"] == "service_healthy"
    text = command_text(submit)
    assert f"ray job submit --address http://ray-head:{defaults.DASHBOARD_PORT}" in text
    assert f"-- vlpdist study {defaults.STUDY_CONFIG} " in text
    assert f"run.output=s3://{defaults.BUCKET}/" in text
    assert f"study.shards=s3://{defaults.BUCKET}/" in text
    assert "vlpdist shards synth configs/synth/demo.yaml" in text
    # the demo study pretrains on generated captions too: the CCG set is made before it runs
    ccg = next(s for s in load_config_sets() if s.endswith("ccg_vqa"))
    assert f"caption.out=s3://{defaults.BUCKET}/demo/shards/{ccg}" in text
    assert (REPO / "configs" / "synth" / "demo.yaml").exists()


def test_ray_nodes_build_the_repository_image(services):
    for name in ("ray-head", "ray-worker", "submit"):
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_installs_torch_then_deepspeed_then_the_project():
    instr = dockerfile_instructions()
    base = [arg for op, arg in instr if op == "FROM"]
    assert len(base) == 1 and re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-\S*devel\S*", base[0])
    args = dict(arg.split("=", 1) for op, arg in instr if op == "ARG")
    makefile_torch = re.search(r"^TORCH\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert args["TORCH"] == makefile_torch.group(1)  # the image runs the torch the tests run
    assert re.fullmatch(r"deepspeed==[\d.]+", args["DEEPSPEED"])
    runs = [arg for op, arg in instr if op == "RUN"]

    def first(pattern: str) -> int:
        return next(i for i, r in enumerate(runs) if re.search(pattern, r))

    torch, deepspeed = first(r"pip install \"\$TORCH\""), first(r"pip install .*\$DEEPSPEED")
    project = first(r"pip install -c constraints\.txt \.$")
    assert torch < deepspeed < project
    # the installed package is checked from outside the source tree, after the install
    check = first(r"cd / && python -c \"import vlpdist\.study\.runner")
    assert project < check
    assert ("WORKDIR", "/app") in instr
    assert not any(op == "ENV" and "SECRET" in arg for op, arg in instr)


def test_dockerignore_keeps_state_and_environments_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".cluster", "out", "demo_out"} <= set(ignored)


# --- launch scripts --------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)
    assert os.access(LAUNCH / script, os.X_OK)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_print_no_secret(script):
    value = re.compile(r"\$\{?!?(AWS_SECRET_ACCESS_KEY|S3_SECRET_KEY)\b|\$\{!")
    for line in (LAUNCH / script).read_text().splitlines():
        if re.search(r"\b(echo|printf|log|die)\b", line):
            assert not value.search(line), line


def test_local_cluster_defaults_are_the_defaults_table():
    text = (LAUNCH / "local_cluster.sh").read_text()
    found = dict(re.findall(r"^(\w+)=\$\{\1:-([^}]*)\}$", text, re.M))
    assert found["S3_PORT"] == str(defaults.S3_PORT)
    assert found["RAY_PORT"] == str(defaults.RAY_PORT)
    assert found["DASHBOARD_PORT"] == str(defaults.DASHBOARD_PORT)
    assert found["RAY_HEAD_IP"] == defaults.HEAD_IP
    assert found["RAY_WORKER_IP"] == defaults.WORKER_IP
    assert found["BUCKET"] == defaults.BUCKET
    assert found["S3_ACCESS_KEY"] == defaults.S3_ACCESS_KEY
    assert found["S3_SECRET_KEY"] == defaults.S3_SECRET_KEY


def run_local_cluster(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "VLPDIST_CLUSTER_DIR": str(tmp_path / "state"), **env}
    return subprocess.run(
        [str(LAUNCH / "local_cluster.sh"), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_local_cluster_down_and_env_when_nothing_runs(tmp_path):
    assert run_local_cluster(tmp_path, "down").returncode == 0
    (tmp_path / "state").mkdir()
    assert run_local_cluster(tmp_path, "down").returncode == 0
    r = run_local_cluster(tmp_path, "env")
    assert r.returncode == 1 and "not up" in r.stderr
    assert run_local_cluster(tmp_path, "status").returncode == 1
    assert run_local_cluster(tmp_path).returncode == 2


def test_local_cluster_env_names_the_file_not_the_secret(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "cluster.env").write_text(f"export AWS_SECRET_ACCESS_KEY={SECRET}\n")
    r = run_local_cluster(tmp_path, "env")
    assert r.returncode == 0
    assert f"source {state / 'cluster.env'}" in r.stdout.splitlines()
    assert SECRET not in r.stdout + r.stderr


def test_local_cluster_up_refuses_a_busy_port_before_starting_anything(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_local_cluster(tmp_path, "up", S3_PORT=str(port))
    assert r.returncode == 1
    assert f"S3_PORT (127.0.0.1:{port})" in r.stderr
    assert not list((tmp_path / "state").glob("*.pid"))


def standin(bin_dir: Path, name: str, body: str) -> None:
    """An executable Python script `name` that records its argv under $OUT."""
    path = bin_dir / name
    path.write_text(
        f"#!{sys.executable}\nimport json, os, stat, sys\nout = os.environ['OUT']\n"
        "json.dump(sys.argv[1:], open(os.path.join(out, 'argv.json'), 'w'))\n" + body
    )
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
    """A copy of launch/ outside the repository (so no .venv/bin shadows the stand-ins), a bin
    dir for stand-ins first on PATH, and $OUT for what they record."""
    repo, bin_dir, out = tmp_path / "repo", tmp_path / "bin", tmp_path / "out"
    for d in (repo / "launch", bin_dir, out):
        d.mkdir(parents=True)
    for script in SCRIPTS:
        shutil.copy2(LAUNCH / script, repo / "launch" / script)
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "NUM_GPUS"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", OUT=str(out))
    return repo, bin_dir, out, env


def test_ray_submit_carries_the_s3_settings_in_a_private_file(sandbox):
    repo, bin_dir, out, env = sandbox
    standin(
        bin_dir,
        "ray",
        "f = sys.argv[sys.argv.index('--runtime-env') + 1]\n"
        "json.dump({'path': f, 'mode': stat.S_IMODE(os.stat(f).st_mode),"
        " 'content': open(f).read()}, open(os.path.join(out, 'runtime_env.json'), 'w'))\n",
    )
    env.update(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="key")
    env.update(AWS_SECRET_ACCESS_KEY=SECRET, RAY_AUTH_MODE="disabled")
    r = subprocess.run(
        [str(repo / "launch" / "ray_submit.sh"), "configs/study/demo.yaml", "study.seeds=[0]"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    argv = json.loads((out / "argv.json").read_text())
    renv = json.loads((out / "runtime_env.json").read_text())
    assert argv == [
        "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", str(repo),
        "--runtime-env", renv["path"], "--", "vlpdist", "study", "configs/study/demo.yaml",
        "study.seeds=[0]",
    ]  # fmt: skip
    assert renv["mode"] == 0o600
    assert not Path(renv["path"]).exists()  # removed on exit
    content = yaml.safe_load(renv["content"])
    assert content["env_vars"] == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "RAY_AUTH_MODE": "disabled",
    }
    assert "/.cluster/" in content["excludes"]


@pytest.mark.parametrize(
    "env_vars,address",
    [
        ({"RAY_ADDRESS": "127.0.0.2:6379"}, "127.0.0.2:6379"),
        ({"RAY_ADDRESS": "10.0.0.1:6379", "RAY_API_SERVER_ADDRESS": "http://h:1"}, "http://h:1"),
    ],
)
def test_ray_submit_address_follows_rays_precedence(sandbox, env_vars, address):
    repo, bin_dir, out, env = sandbox
    standin(bin_dir, "ray", "")
    r = subprocess.run(
        [str(repo / "launch" / "ray_submit.sh"), "status", "c.yaml"],
        env={**env, **env_vars}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    argv = json.loads((out / "argv.json").read_text())
    assert argv[argv.index("--address") + 1] == address
    assert argv[-4:] == ["vlpdist", "study", "status", "c.yaml"]


@pytest.mark.parametrize(
    "smi,num_gpus,expected",
    [
        ("print('GPU 0: A\\nGPU 1: B')", None, "2"),
        ("sys.exit(9)", None, "1"),
        ("print('GPU 0: A')", "4", "4"),
    ],
)
def test_deepspeed_node_starts_one_rank_per_gpu(sandbox, smi, num_gpus, expected):
    repo, bin_dir, out, env = sandbox
    standin(bin_dir, "deepspeed", "")
    (bin_dir / "nvidia-smi").write_text(f"#!{sys.executable}\nimport sys\n{smi}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    if num_gpus:
        env["NUM_GPUS"] = num_gpus
    script = str(repo / "launch" / "deepspeed_node.sh")
    r = subprocess.run(
        [script, "pretrain", "c.yaml", "a=1"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "argv.json").read_text()) == [
        "--num_gpus", expected, "--master_port", "29500", "--module", "vlpdist",
        "pretrain", "c.yaml", "a=1",
    ]  # fmt: skip
    bad = subprocess.run([script, "serve", "c.yaml"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
