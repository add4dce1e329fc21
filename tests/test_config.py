"""Every config option composes, and bad keys/options are clear errors."""

from __future__ import annotations

from importlib.resources import files

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from prunecli.cli import misspelt_key
from prunecli.config.store import register_schemas
from prunecli.config.validate import check_known_keys, check_value_ranges
from prunecli.errors import ConfigError

register_schemas()
GROUPS = ("model", "data", "optim", "trainer", "cost", "method")


def _options(group: str) -> list[str]:
    root = files("prunecli.conf") / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _compose(overrides: list[str], name: str = "train"):
    with initialize_config_module(version_base="1.3", config_module="prunecli.conf"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    cfg = _compose([f"{group}={option}"])
    check_known_keys(cfg)
    check_value_ranges(cfg)
    assert cfg[group] is not None


def test_experiments_are_found_from_the_package() -> None:
    exps = [p.name for p in files("prunecli.conf.experiment").iterdir() if p.name.endswith("yaml")]
    assert "smoke.yaml" in exps
    for name in exps:
        cfg = _compose([f"experiment={name[:-5]}"])
        check_known_keys(cfg)
        check_value_ranges(cfg)
    assert _compose(["experiment=smoke"]).data.name == "fake"


def test_experiment_values_beat_main_config_defaults() -> None:
    cfg = _compose(["experiment=smoke"])
    assert cfg.trainer.epochs == 2 and cfg.optim.lr == 0.05


def test_command_line_beats_experiment() -> None:
    assert _compose(["experiment=smoke", "trainer.epochs=7"]).trainer.epochs == 7


def test_typo_in_key_is_an_error() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["trainer.epochz=3"])
    assert "epochz" in str(err.value.__cause__ or err.value)


def test_added_unknown_key_is_caught_by_validation() -> None:
    cfg = _compose(["+trainer.epochz=3"])
    with pytest.raises(ConfigError, match=r"trainer\.epochz.*did you mean trainer\.epochs"):
        check_known_keys(cfg)


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
    ("data.num_workers=-1", "data.num_workers=-1 must be an integer >= 0"),
    ("optim.lr=-0.1", "optim.lr=-0.1 must be a number >= 0"),
    ("optim.lr=nan", "optim.lr=nan must be"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001 must be a number >= 0"),
    ("optim.momentum=1", "optim.momentum=1.0 must be in [0, 1)"),
    ("trainer.epochs=-2", "trainer.epochs=-2 must be an integer >= 0"),
    ("trainer.label_smoothing=1", "trainer.label_smoothing=1.0 must be in [0, 1)"),
])
def test_a_value_out_of_range_is_named(override: str, message: str) -> None:
    check_value_ranges(_compose(["experiment=smoke"]))  # the same config in range passes
    with pytest.raises(ConfigError) as err:
        check_value_ranges(_compose(["experiment=smoke", override]))
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("command,override,message", [
    ("slim", "batch_size=0", "batch_size=0 must be an integer >= 1"),
    ("slim", "tolerance=-1", "tolerance=-1.0 must be a number >= 0"),
    ("export", "batch_size=0", "batch_size=0 must be an integer >= 1"),
    ("bench", "repeats=0", "repeats=0 must be an integer >= 1"),
    ("bench", "threads=0", "threads=0 must be an integer >= 1"),
    ("lut", "warmup=-1", "warmup=-1 must be an integer >= 0"),
])
def test_a_command_value_out_of_range_is_named(command: str, override: str, message: str) -> None:
    """slim batch_size=0 was a torch traceback, export batch_size=0 wrote a [0, 3, H, W] ONNX,
    slim tolerance=-1 blamed the slimming ('please report this model')."""
    check_value_ranges(_compose(["ckpt=x"], name=command))
    with pytest.raises(ConfigError) as err:
        check_value_ranges(_compose(["ckpt=x", override], name=command))
    assert str(err.value).startswith(message)


def test_wrong_type_is_an_error() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["trainer.epochs=abc"])
    assert isinstance(err.value.__cause__, ValidationError)


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(ConfigCompositionException, match="method/pruneall"):
        _compose(["method=pruneall"])


def test_typo_inside_a_yaml_file_is_an_error() -> None:
    from omegaconf import OmegaConf

    from prunecli.config.schema import TrainerConfig

    with pytest.raises(ConfigKeyError):
        OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"epochz": 1})


def test_eval_and_list_configs_compose() -> None:
    check_known_keys(_compose([], name="eval"))
    assert _compose(["what=models"], name="list").what == "models"


def test_method_configs_state_the_schema_defaults() -> None:
    """A method's yaml and its schema are two places for one default: the CLI reads the yaml,
    the Python API the schema. They drifted once (SMCP's prune_every stayed 80 in the yaml)."""
    import dataclasses

    from omegaconf import OmegaConf

    from prunecli.methods.schemas import METHOD_SCHEMAS

    for name, (schema, _impl, _doc) in METHOD_SCHEMAS.items():
        method = OmegaConf.to_container(_compose([f"method={name}"]).method)
        for f in dataclasses.fields(schema):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            assert method[f.name] == default, (name, f.name, method[f.name], default)


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """(experiment file, command, overrides) of every `prunecli COMMAND ...` (or `torchrun ...
    -m prunecli COMMAND ...`) written in an experiment file's comments, continuation lines
    joined."""
    found = []
    for path in sorted(files("prunecli.conf.experiment").iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yaml"):
            continue
        lines = [line.lstrip("#").strip() for line in path.read_text().splitlines()
                 if line.startswith("#")]
        joined, buffer = [], ""
        for line in lines:
            buffer += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                joined.append(buffer.strip())
                buffer = ""
        for text in joined:
            words = text.split()
            if "prunecli" not in words:
                continue
            at = words.index("prunecli") + 1
            if at >= len(words) or words[at] not in ("train", "lut", "eval", "bench", "slim",
                                                     "export", "inspect"):
                continue
            overrides = [w.strip("`") for w in words[at + 1:] if "=" in w and not w.startswith("-")]
            found.append((path.name, words[at], overrides))
    return found


def test_the_commands_written_in_experiment_files_compose() -> None:
    """Every key an experiment's comment tells a user to type exists (PATH-like values are
    placeholders: only the keys are checked)."""
    commands = _documented_commands()
    assert len(commands) >= 10
    for name, command, overrides in commands:
        _check_documented(name, command, overrides)


def _check_documented(where: str, command: str, overrides: list[str]) -> None:
    """A documented command passes what the console script checks: the key pre-check, Hydra's
    composition, the key and the value-range checks."""
    try:
        assert misspelt_key(command, overrides) is None, misspelt_key(command, overrides)
        cfg = _compose(overrides, name=command)
        check_known_keys(cfg)
        check_value_ranges(cfg)
    except (ConfigCompositionException, ConfigKeyError, ValidationError, ConfigError) as exc:
        raise AssertionError(f"{where}: `prunecli {command} {' '.join(overrides)}`: "
                             f"{exc.__cause__ or exc}") from None


COMMANDS = ("train", "eval", "lut", "bench", "slim", "export", "inspect", "report")


def _readme_commands() -> list[tuple[str, list[str]]]:
    """(command, overrides) of every `prunecli COMMAND ...` in the README: in code blocks
    (continuation lines joined, comments cut) and inline. A sweep's comma list gives its first
    value; placeholders (`<...>`, `...`) and hydra's own keys are left out."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippets = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        buffer = ""
        for line in block.splitlines():
            line = "" if line.lstrip().startswith("#") else line.split(" #")[0].rstrip()
            buffer += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                snippets.append(buffer.strip())
                buffer = ""
    prose = re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " ")
    snippets += re.findall(r"`([^`]*prunecli [a-z]+[^`]*)`", prose)
    found = []
    for snippet in snippets:
        words = snippet.split()
        if "prunecli" not in words or words.index("prunecli") + 1 >= len(words):
            continue
        at = words.index("prunecli") + 1
        command = words[at].split("/")[0]
        if command not in COMMANDS:
            continue
        overrides = []
        for word in words[at + 1:]:
            if "=" not in word or word.startswith(("-", "hydra", "[")) or "<" in word \
                    or "..." in word:
                continue
            key, value = word.split("=", 1)
            if "," in value and not value.startswith("["):
                value = value.split(",")[0]
            overrides.append(f"{key}={value}")
        found.append((command, overrides))
    return found


def test_the_commands_in_the_readme_compose() -> None:
    commands = _readme_commands()
    assert len(commands) >= 50
    for command, overrides in commands:
        _check_documented("README", command, overrides)


@pytest.mark.parametrize("experiment,lr", [
    ("ssd300_resnet50_coco", 2.08e-2), ("chex_ssd300_coco", 4.16e-2),
    ("ssd512_resnet50_voc", 8e-3), ("smcp_ssd512_voc", 8e-3), ("halp_ssd512_voc", 8e-3)])
def test_detector_experiments_train_at_the_published_rate_for_their_batch(experiment: str,
                                                                         lr: float) -> None:
    """They leave optim.lr unset, so it scales with the global batch: on the papers' 8 GPUs it is
    the rate the papers name, on 2 GPUs a quarter of it."""
    from prunecli.engine.optim import choose_lr

    for gpus in (8, 2):
        cfg = _compose([f"experiment={experiment}"])
        assert cfg.optim.lr is None
        batch = cfg.data.batch_size * gpus
        steps = -(-118_287 // batch)  # an epoch of COCO train2017
        warmup = cfg.optim.warmup_epochs
        choose_lr(cfg.model, cfg.optim, batch, steps, cfg.trainer.epochs * steps)
        assert cfg.optim.lr == pytest.approx(lr * gpus / 8)
        if warmup is None:  # NVIDIA's 300 warm-up steps whatever the number of GPUs
            assert experiment == "ssd300_resnet50_coco"
            assert round(cfg.optim.warmup_epochs * steps) == 300
        else:
            assert cfg.optim.warmup_epochs == warmup
