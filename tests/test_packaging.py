"""What users install is what we test: every directory under vlpdist/ holding Python files
is a package setuptools finds, the wheel holds every module, and a non-editable install in a
clean virtual environment runs `vlpdist study` (whose runner lives in a subpackage) from a
directory where no source tree can shadow the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]


def _source_modules() -> set[str]:
    return {
        str(p.relative_to(REPO))
        for p in (REPO / "vlpdist").rglob("*.py")
        if "__pycache__" not in p.parts
    }


def test_every_directory_with_python_files_is_a_found_package():
    dirs = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vlpdist").rglob("*.py")}
    found = set(find_packages(str(REPO), include=["vlpdist", "vlpdist.*"]))
    assert dirs - found == set(), "directories without __init__.py are left out of the wheel"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("vlpdist-*.whl")
    return path


def test_the_wheel_holds_every_module(wheel):
    with zipfile.ZipFile(wheel) as z:
        held = {n for n in z.namelist() if n.startswith("vlpdist/") and n.endswith(".py")}
    assert _source_modules() - held == set()


def test_a_non_editable_install_runs_the_study_command(wheel, tmp_path):
    """A clean venv with the wheel installed (its dependencies are this environment's,
    reached through a path entry, so nothing is downloaded); run from an empty directory."""
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # the dependencies, appended after the venv's own site-packages (a plain path line, so
    # the editable install's finder hook in that directory is not run)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as z:  # a wheel is installed by unpacking it
        z.extractall(site)
    script = venv / "bin" / "vlpdist"
    script.write_text(f"#!{py}\nimport sys\nfrom vlpdist.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    where = subprocess.run(
        [str(py), "-c", "import vlpdist.study.runner as r; print(r.__file__)"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.strip().startswith(site)  # the installed copy, not the source tree
    assert run("study", "--help").returncode == 0
    status = run("study", "status", str(REPO / "configs/study/tiny.yaml"),
                 f"run.output={tmp_path / 'out'}",
                 f"study.pretrain_config={REPO / 'configs/pretrain/tiny.yaml'}",
                 f"study.finetune_config={REPO / 'configs/finetune/tiny.yaml'}")  # fmt: skip
    assert status.returncode == 0, status.stderr[-2000:]
    assert "pre-visual_bert-coco" in status.stdout and "pending" in status.stdout
