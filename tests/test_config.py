"""Config system: precedence, includes, strictness, error messages, redaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from vlpdist.config import Config, Recipe, RetryConfig, dump_yaml, from_dict, load, to_dict
from vlpdist.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
RECIPES = sorted((REPO / "shards").glob("*.yaml"))


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path):
    cfg = load(Config, str(path))
    assert isinstance(cfg, Config)
    # the resolved config round-trips through plain data
    assert from_dict(Config, to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_loads(path):
    recipe = load(Recipe, str(path))
    assert recipe.source and recipe.inputs


def test_there_are_shipped_configs_and_recipes():
    assert len(CONFIGS) >= 8 and len(RECIPES) >= 9


def test_precedence_defaults_file_includes_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "optim:\n  lr: 0.1\n  warmup_steps: 5\nrun:\n  name: base\n")
    write(tmp_path, "mid.yaml", "defaults: [base.yaml]\noptim:\n  lr: 0.2\n")
    top = write(tmp_path, "sub/top.yaml", "defaults: [../mid.yaml]\nrun:\n  name: top\n")
    cfg = load(Config, top, ["optim.lr=1e-4", "data.seed=7"])
    assert cfg.optim.lr == pytest.approx(1e-4)  # override beats file beats include
    assert cfg.optim.warmup_steps == 5  # from the include of the include
    assert cfg.run.name == "top"
    assert cfg.data.seed == 7
    assert cfg.optim.total_steps == 11000  # dataclass default
    no_override = load(Config, top)
    assert no_override.optim.lr == pytest.approx(0.2)


def test_later_include_wins(tmp_path):
    write(tmp_path, "a.yaml", "data:\n  batch_size: 4\n")
    write(tmp_path, "b.yaml", "data:\n  batch_size: 8\n")
    top = write(
        tmp_path, "top.yaml", "defaults: [a.yaml, b.yaml]\ndeepspeed:\n  global_batch_size: 16\n"
    )
    assert load(Config, top).data.batch_size == 8


@pytest.mark.parametrize(
    "text, overrides, where, key",
    [
        ("optim:\n  lrr: 1\n", [], "f.yaml", "optim.lrr: unknown key"),
        ("optim:\n  lr: fast\n", [], "f.yaml", "optim.lr: expected float, got 'fast'"),
        ("data:\n  batch_size: 2.5\n", [], "f.yaml", "data.batch_size: expected int"),
        ("model:\n  arch: resnet\n", [], "f.yaml", "model.arch: expected one of"),
        ("optim:\n  warmup_steps: 50\n  total_steps: 10\n", [], "f.yaml", "optim.warmup_steps"),
        (
            "",
            ["deepspeed.zero_stage=4"],
            "command line override 'deepspeed.zero_stage'",
            "zero_stage",
        ),
        ("", ["deepspeed.offload_optimizer=true"], "command line", "needs deepspeed.zero_stage"),
        ("", ["nosuchsection.x=1"], "command line", "nosuchsection: unknown key"),
        ("data:\n  sources: [{url: x, weight: -1}]\n", [], "f.yaml", "data.sources.0.weight"),
    ],
)
def test_errors_name_key_and_file(tmp_path, text, overrides, where, key):
    path = write(tmp_path, "f.yaml", text)
    with pytest.raises(ConfigError) as e:
        load(Config, path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    assert where in msg and key in msg, msg


def test_error_names_the_included_file_that_set_the_key(tmp_path):
    inc = write(tmp_path, "inc.yaml", "optim:\n  betas: [0.9]\n")
    top = write(tmp_path, "top.yaml", "defaults: [inc.yaml]\nrun:\n  name: x\n")
    with pytest.raises(ConfigError, match=f"{inc}: optim.betas"):
        load(Config, top)


def test_bad_yaml_and_missing_files_and_cycles(tmp_path):
    bad = write(tmp_path, "bad.yaml", "optim: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line"):
        load(Config, bad)
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load(Config, write(tmp_path, "m.yaml", "defaults: [missing.yaml]\n"))
    write(tmp_path, "c1.yaml", "defaults: [c2.yaml]\n")
    c2 = write(tmp_path, "c2.yaml", "defaults: [c1.yaml]\n")
    with pytest.raises(ConfigError, match="circular"):
        load(Config, c2)
    with pytest.raises(ConfigError, match="expected key=value"):
        load(Config, None, ["optim.lr"])


def test_secrets_are_redacted_everywhere(tmp_path):
    path = write(tmp_path, "s.yaml", "storage:\n  secret_access_key: hunter2-secret\n")
    cfg = load(Config, path, ["storage.access_key_id=AKIAEXAMPLEKEY"])
    dumped = dump_yaml(cfg)
    assert "hunter2-secret" not in dumped and "AKIAEXAMPLEKEY" not in dumped
    assert yaml.safe_load(dumped)["storage"]["secret_access_key"] == "***"
    # a mistyped secret is not echoed in the error either
    with pytest.raises(ConfigError) as e:
        load(Config, None, ["storage.secret_access_key=[hunter3, x]"])
    assert "hunter3" not in str(e.value) and "value hidden" in str(e.value)


def test_config_show_cli(run_cli, tmp_path):
    path = write(
        tmp_path, "s.yaml", "defaults: [" + str(REPO / "configs/pretrain/tiny.yaml") + "]\n"
    )
    out = run_cli("config", "show", path, "storage.secret_access_key=topsecret", "optim.lr=2e-3")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["optim"]["lr"] == pytest.approx(2e-3)
    assert shown["storage"]["secret_access_key"] == "***"
    assert "topsecret" not in out.stdout + out.stderr
    bad = run_cli("config", "show", path, "optim.lr=oops")
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith(
        "vlpdist: error: command line override 'optim.lr': optim.lr"
    )
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@dataclass
class _Root:
    retry: RetryConfig = field(default_factory=lambda: RetryConfig(max_attempts=3))
    table: dict[str, int] = field(default_factory=lambda: {"a": 1, "b": 2})


def test_partial_section_keeps_the_fields_own_default_factory():
    cfg = load(_Root, None, ["retry.base_delay_s=0.5", "table.b=5"])
    assert cfg.retry.max_attempts == 3 and cfg.retry.base_delay_s == 0.5
    assert cfg.table == {"a": 1, "b": 5}
