"""Config system: precedence, includes, strictness, error messages, redaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from vlpdist.config import (
    COMMANDS,
    Config,
    Recipe,
    RetryConfig,
    command_of,
    dump_yaml,
    from_dict,
    load,
    to_dict,
)
from vlpdist.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
# configs/extract/ holds extraction configs, another schema: tests/test_extract.py loads them
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "extract")
RECIPES = sorted((REPO / "shards").glob("*.yaml"))
TINY = str(REPO / "configs/pretrain/tiny.yaml")
# the command that reads each directory's configs; model/ and deepspeed/ are fragments that
# training configs include
COMMAND_OF_DIR = {
    "pretrain": "pretrain",
    "finetune": "finetune",
    "caption": "caption",
    "study": "study",
    "synth": "synth",
    "model": "pretrain",
    "deepspeed": "pretrain",
}


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path, tmp_path):
    command = COMMAND_OF_DIR[path.parent.name]
    cfg = load(Config, str(path), command=command)
    assert isinstance(cfg, Config)
    # the resolved config round-trips through plain data
    assert from_dict(Config, to_dict(cfg)) == cfg
    # `config show` finds the same command, and what it prints loads again under it
    assert command_of(str(path)) == command
    shown = write(tmp_path, "shown.yaml", dump_yaml(cfg, redact=False, command=command))
    assert load(Config, shown, command=command) == cfg


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
    cfg = load(Config, top, ["optim.lr=1e-4", "data.seed=7"], command="pretrain")
    assert cfg.optim.lr == pytest.approx(1e-4)  # override beats file beats include
    assert cfg.optim.warmup_steps == 5  # from the include of the include
    assert cfg.run.name == "top"
    assert cfg.data.seed == 7
    assert cfg.optim.total_steps == 11000  # dataclass default
    no_override = load(Config, top, command="pretrain")
    assert no_override.optim.lr == pytest.approx(0.2)


def test_later_include_wins(tmp_path):
    write(tmp_path, "a.yaml", "data:\n  batch_size: 4\n")
    write(tmp_path, "b.yaml", "data:\n  batch_size: 8\n")
    top = write(
        tmp_path, "top.yaml", "defaults: [a.yaml, b.yaml]\ndeepspeed:\n  global_batch_size: 16\n"
    )
    assert load(Config, top, command="pretrain").data.batch_size == 8


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
        load(Config, path, overrides, command="pretrain")
    msg = str(e.value)
    assert "\n" not in msg
    assert where in msg and key in msg, msg


def test_error_names_the_included_file_that_set_the_key(tmp_path):
    inc = write(tmp_path, "inc.yaml", "optim:\n  betas: [0.9]\n")
    top = write(tmp_path, "top.yaml", "defaults: [inc.yaml]\nrun:\n  name: x\n")
    with pytest.raises(ConfigError, match=f"{inc}: optim.betas"):
        load(Config, top, command="pretrain")


def test_bad_yaml_and_missing_files_and_cycles(tmp_path):
    bad = write(tmp_path, "bad.yaml", "optim: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line"):
        load(Config, bad, command="pretrain")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load(Config, write(tmp_path, "m.yaml", "defaults: [missing.yaml]\n"), command="pretrain")
    write(tmp_path, "c1.yaml", "defaults: [c2.yaml]\n")
    c2 = write(tmp_path, "c2.yaml", "defaults: [c1.yaml]\n")
    with pytest.raises(ConfigError, match="circular"):
        load(Config, c2, command="pretrain")
    with pytest.raises(ConfigError, match="expected key=value"):
        load(Config, None, ["optim.lr"], command="pretrain")


def test_secrets_are_redacted_everywhere(tmp_path):
    path = write(tmp_path, "s.yaml", "storage:\n  secret_access_key: hunter2-secret\n")
    cfg = load(Config, path, ["storage.access_key_id=AKIAEXAMPLEKEY"], command="pretrain")
    dumped = dump_yaml(cfg)
    assert "hunter2-secret" not in dumped and "AKIAEXAMPLEKEY" not in dumped
    assert yaml.safe_load(dumped)["storage"]["secret_access_key"] == "***"
    # a mistyped secret is not echoed in the error either
    with pytest.raises(ConfigError) as e:
        load(Config, None, ["storage.secret_access_key=[hunter3, x]"], command="pretrain")
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


# ---------------------------------------------------------------- one key, its origin (A)

STUDY = str(REPO / "configs/study/tiny.yaml")
SYNTH = str(REPO / "configs/synth/tiny.yaml")
CAPTION = str(REPO / "configs/caption/tiny.yaml")
FINETUNE = str(REPO / "configs/finetune/tiny.yaml")


@pytest.mark.parametrize(
    "path, command, override, key",
    [
        (TINY, "pretrain", "run.checkpoint_every=-1", None),
        (TINY, "pretrain", "run.keep_last=0", None),
        (TINY, "pretrain", "run.log_every=0", None),
        (TINY, "pretrain", "run.name=a/b", None),
        (TINY, "pretrain", "data.read_threads=0", None),
        (TINY, "pretrain", "data.prefetch=0", None),
        (TINY, "pretrain", "data.num_workers=-1", None),
        (TINY, "pretrain", "data.batch_size=0", None),
        (TINY, "pretrain", "data.max_regions=0", None),
        (TINY, "pretrain", "data.shuffle_window=0", None),
        (TINY, "pretrain", "data.read_span=0", None),
        (TINY, "pretrain", "data.mrm_zero_prob=1.5", None),
        (TINY, "pretrain", "data.fraction=0", None),
        (TINY, "pretrain", "data.samples_per_epoch=0", None),
        (TINY, "pretrain", "data.on_corrupt=maybe", None),
        (TINY, "pretrain", "data.sources=[{url: x, weight: 0}]", "data.sources.0.weight"),
        (TINY, "pretrain", "storage.retry.max_attempts=0", None),
        (TINY, "pretrain", "storage.retry.base_delay_s=-1", None),
        (TINY, "pretrain", "storage.retry.max_delay_s=0.1", None),  # < base_delay_s 0.2
        (TINY, "pretrain", "model.objectives=[]", None),
        (TINY, "pretrain", "model.sizes.num_layerz=2", None),
        (TINY, "pretrain", "model.sizes.num_layers=abc", None),
        (TINY, "pretrain", "model.sizes.num_layers=0", None),
        (TINY, "pretrain", "model.sizes.dropout=[1]", None),
        (TINY, "pretrain", "model.sizes.hidden_size=65", None),  # not a multiple of 2 heads
        (TINY, "pretrain", "model.sizes.max_position=30", None),  # < data.max_text_tokens 36
        (TINY, "pretrain", "model.flavor=huge", None),
        (TINY, "pretrain", "optim.lr=0", None),
        (TINY, "pretrain", "optim.weight_decay=-1", None),
        (TINY, "pretrain", "optim.grad_clip=-1", None),
        (TINY, "pretrain", "optim.eps=0", None),
        (TINY, "pretrain", "optim.betas=[0.9]", None),
        (TINY, "pretrain", "optim.total_steps=0", None),
        (TINY, "pretrain", "optim.total_steps=5", None),  # < the file's warmup_steps 10
        (TINY, "pretrain", "optim.warmup_steps=-1", None),
        (TINY, "pretrain", "optim.warmup_steps=1000", None),  # > the file's total_steps 100
        (TINY, "pretrain", "data.batch_size=3", None),  # the file's global batch is 8
        (TINY, "pretrain", "deepspeed.global_batch_size=12", None),
        (TINY, "pretrain", "deepspeed.global_batch_size=0", None),
        (TINY, "pretrain", "deepspeed.offload_optimizer=true", None),  # the include's stage 0
        (TINY, "pretrain", "deepspeed.precision=fp8", None),
        (TINY, "pretrain", "data.max_text_tokens=200", None),
        (FINETUNE, "finetune", "model.text_init=bert-base-uncased", None),  # with init_from
        (FINETUNE, "finetune", "eval.every=-1", None),
        (FINETUNE, "finetune", "eval.batch_size=0", None),
        (CAPTION, "caption", "caption.beam_size=0", None),
        (CAPTION, "caption", "caption.max_len=0", None),
        (CAPTION, "caption", "caption.max_len=65", None),  # the decoder has 64 positions
        (CAPTION, "caption", "caption.batch_size=0", None),
        (CAPTION, "caption", "data.max_text_tokens=66", None),  # reads 65 tokens
        (STUDY, "study", "study.max_failures=-1", None),
        (STUDY, "study", "study.train_fractions=[0]", None),
        (STUDY, "study", "study.pretrain_resources.workers=0", None),
        (STUDY, "study", "study.finetune_resources.cpus_per_worker=-1", None),
        (STUDY, "study", "study.finetune_resources.gpus_per_worker=-1", None),
        (STUDY, "study", "study.tasks.vqa.val=[]", None),
        (STUDY, "study", "study.tasks={t: {train: [{url: a}]}}", "study.tasks.t.val"),
        (STUDY, "study", "study.pretrain_sets={scratch: [{url: a}]}", "study.pretrain_sets"),
        (SYNTH, "synth", "synth.latent_dim=3", None),
        (SYNTH, "synth", "synth.latent_dim=33", None),  # > the file's feature_dim 32
        (SYNTH, "synth", "synth.feature_dim=12", None),  # < the file's latent_dim 16
        (SYNTH, "synth", "synth.regions=[5, 2]", None),
        (SYNTH, "synth", "synth.domains.web.blur=1", None),
        (SYNTH, "synth", "synth.sizes.imagenet=3", None),
    ],
)
def test_a_bad_override_is_named_with_its_origin(path, command, override, key):
    """The message names exactly the key that is wrong (by default the override's own) and
    where it came from, whichever other keys its check involves."""
    set_key = override.partition("=")[0]
    with pytest.raises(ConfigError) as e:
        load(Config, path, [override], command=command)
    msg = str(e.value)
    assert msg.startswith(f"command line override '{set_key}': {key or set_key}: "), msg
    assert "\n" not in msg


def test_a_cross_field_error_names_where_the_other_key_came_from(tmp_path):
    path = write(tmp_path, "f.yaml", "optim:\n  warmup_steps: 50\n  total_steps: 100\n")
    with pytest.raises(ConfigError) as e:
        load(Config, path, ["optim.total_steps=10"], command="pretrain")
    assert str(e.value) == (
        "command line override 'optim.total_steps': optim.total_steps: optim.warmup_steps 50 > "
        f"total_steps 10 (optim.warmup_steps set by {path})"
    )
    # both in one file, or both overrides: the check's own key is named
    both = write(tmp_path, "g.yaml", "optim:\n  warmup_steps: 50\n  total_steps: 10\n")
    with pytest.raises(ConfigError, match=f"^{both}: optim.warmup_steps: 50 > total_steps 10 "):
        load(Config, both, command="pretrain")
    over = ["optim.total_steps=10", "optim.warmup_steps=50"]
    with pytest.raises(ConfigError, match="^command line override 'optim.warmup_steps': optim.wa"):
        load(Config, None, over, command="pretrain")
    # the file set the key that the check is about, the include the other one
    with pytest.raises(ConfigError) as e:
        load(Config, write(tmp_path, "h.yaml", f"defaults: [{TINY}]\ndata:\n  batch_size: 3\n"),
             command="pretrain")  # fmt: skip
    assert str(e.value).startswith(f"{tmp_path / 'h.yaml'}: data.batch_size: ")
    assert f"(deepspeed.global_batch_size set by {TINY})" in str(e.value)


def test_a_bad_key_in_an_include_of_an_include_names_that_file(tmp_path):
    base = write(tmp_path, "base.yaml", "run:\n  checkpoint_every: -1\n  name: base\n")
    write(tmp_path, "mid.yaml", "defaults: [base.yaml]\nrun:\n  name: mid\n")
    top = write(tmp_path, "top.yaml", "defaults: [mid.yaml]\noptim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load(Config, top, command="pretrain")
    assert str(e.value).startswith(f"{base}: run.checkpoint_every: must be >= 0")


def test_a_bad_key_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path, "f.yaml", f"defaults: [{TINY}]\ndata:\n  read_threads: 0\n")
    with pytest.raises(ConfigError, match=f"^{path}: data.read_threads: must be >= 1$"):
        load(Config, path, command="pretrain")


def test_a_size_of_another_arch_names_the_key_set_last(tmp_path):
    path = write(tmp_path, "f.yaml", f"defaults: [{TINY}]\nmodel:\n  sizes: {{v_num_layers: 1}}\n")
    with pytest.raises(ConfigError, match=f"^{path}: model.sizes.v_num_layers: not a size of"):
        load(Config, path, command="pretrain")
    # the file's sizes are vilbert's; the override that switched the arch is the change named
    vil = write(tmp_path, "v.yaml", "model:\n  arch: vilbert\n  sizes: {v_num_layers: 1}\n")
    with pytest.raises(ConfigError) as e:
        load(Config, vil, ["model.arch=visual_bert"], command="pretrain")
    assert str(e.value).startswith("command line override 'model.arch': model.arch: ")
    assert f"model.sizes.v_num_layers set by {vil}" in str(e.value)


def test_sizes_are_typed_by_the_arch_and_text_fits_the_positions():
    cfg = load(Config, TINY, ["model.sizes={num_layers: 3, dropout: 0}"], command="pretrain")
    assert cfg.model.size().num_layers == 3 and cfg.model.size().dropout == 0
    vil = ["model.arch=vilbert", "model.sizes.v_biattention_id=[0, 1]"]
    assert load(Config, TINY, vil, command="pretrain").model.size().v_biattention_id == (0, 1)
    assert load(Config, TINY, ["data.max_text_tokens=128"], command="pretrain")
    longer = ["data.max_text_tokens=200", "model.sizes.max_position=200"]
    assert load(Config, TINY, longer, command="pretrain").data.max_text_tokens == 200
    # from an export the export's sizes count; the preflight checks them (test_preflight)
    assert load(Config, FINETUNE, ["data.max_text_tokens=200"], command="finetune")
    # a captioner's text goes to its decoder (64 positions), not to the encoder
    assert load(Config, CAPTION, ["data.max_text_tokens=65"], command="caption")


# ---------------------------------------------------------------- what a command reads (B)

NOT_READ = {
    "pretrain": (TINY, ["eval.every=5", "caption.beam_size=2", "study.seeds=[1]", "synth.seed=1"]),
    "finetune": (FINETUNE, ["caption.name=x", "study.name=x", "synth.seed=1"]),
    "caption": (CAPTION, ["eval.every=5", "study.name=x", "synth.seed=1"]),
    "study": (STUDY, ["data.batch_size=4", "model.flavor=base", "optim.lr=1",
                      "deepspeed.zero_stage=1", "run.name=x", "run.checkpoint_every=5",
                      "eval.every=1", "caption.beam_size=2", "synth.seed=1"]),
    "synth": (SYNTH, ["data.batch_size=4", "model.arch=vilbert", "optim.lr=1", "run.output=x",
                      "deepspeed.zero_stage=1", "eval.every=2", "caption.name=x", "study.name=x"]),
}  # fmt: skip


@pytest.mark.parametrize(
    "command, override",
    [(c, o) for c, (_, overrides) in NOT_READ.items() for o in overrides],
)
def test_a_key_the_command_does_not_read_is_rejected(command, override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError) as e:
        load(Config, NOT_READ[command][0], [override], command=command)
    assert str(e.value).startswith(
        f"command line override '{key}': {key}: not read by the {command} command (it reads "
    ), str(e.value)


def test_every_command_has_its_case_and_reads_what_it_needs():
    assert set(NOT_READ) == set(COMMANDS)
    assert load(Config, STUDY, ["run.output=/x", "storage.region=r"], command="study")
    assert load(Config, SYNTH, ["storage.anon=true"], command="synth").storage.anon
    assert load(Config, FINETUNE, ["eval.every=3"], command="finetune").eval.every == 3


def test_the_first_key_not_read_in_the_order_set_is_named(tmp_path):
    over = ["study.seeds=[0,1]", "caption.beam_size=9", "synth.seed=3"]
    with pytest.raises(ConfigError, match="^command line override 'study.seeds': study.seeds: "):
        load(Config, TINY, over, command="pretrain")
    # a section set in a file, or in an include, names that file
    path = write(tmp_path, "f.yaml", f"defaults: [{TINY}]\neval:\n  every: 5\n")
    with pytest.raises(ConfigError, match=f"^{path}: eval.every: not read by the pretrain"):
        load(Config, path, command="pretrain")
    inc = str(REPO / "configs/deepspeed/cpu.yaml")
    study = write(tmp_path, "s.yaml", f"defaults: [{inc}]\nstudy:\n  name: s\n")
    with pytest.raises(ConfigError, match=f"^{inc}: deepspeed.zero_stage: not read by the study"):
        load(Config, study, command="study")
    # a mapping set as a whole is named as it was written
    with pytest.raises(ConfigError, match="^command line override 'study.tasks': study.tasks: "):
        load(Config, TINY, ["study.tasks={a: {train: [{url: x}], val: []}}"], command="pretrain")
    # a key of no section at all stays an unknown key
    with pytest.raises(ConfigError, match="nosuch: unknown key"):
        load(Config, TINY, ["nosuch.x=1"], command="pretrain")


def test_loading_a_config_needs_its_command():
    with pytest.raises(TypeError, match="command must be one of"):
        load(Config, TINY)
    with pytest.raises(TypeError, match="command must be one of"):
        load(Config, TINY, command="train")


def test_config_show_names_the_first_key_its_command_does_not_read(run_cli):
    bad = run_cli("config", "show", "configs/pretrain/tiny.yaml", "study.seeds=[0,1]",
                  "caption.beam_size=9", "synth.seed=3")  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "vlpdist: error: command line override 'study.seeds': study.seeds: not read by the "
        "pretrain command (it reads storage, data, model, optim, deepspeed, run)"
    ]


def test_config_show_infers_the_command_or_takes_it(run_cli):
    study = run_cli("config", "show", "configs/study/tiny.yaml")
    assert study.returncode == 0, study.stderr
    assert study.stdout.startswith("# read by the study command\n")
    shown = yaml.safe_load(study.stdout)
    assert list(shown) == ["storage", "run", "study"] and shown["run"] == {"output": "./out"}
    ft = run_cli("config", "show", "--command", "finetune", TINY, "eval.every=5")
    assert ft.returncode == 0, ft.stderr
    assert yaml.safe_load(ft.stdout)["eval"]["every"] == 5
    wrong = run_cli("config", "show", "--command", "study", TINY)
    assert wrong.returncode == 2 and "model.arch: not read by the study command" in wrong.stderr
    recipe = run_cli("config", "show", "--recipe", "--command", "pretrain", str(RECIPES[0]))
    assert recipe.returncode == 2 and "--recipe and --command" in recipe.stderr
