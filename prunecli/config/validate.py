"""Reject keys that slipped past Hydra's struct mode (``+key=value`` adds one on purpose), so a
misspelt key is always an error, never a silently ignored value; and values outside their range
(``data.batch_size=0``, a negative learning rate), which would otherwise surface as a traceback
from deep inside PyTorch, or worse, as a run that trains on nonsense."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from prunecli.errors import ConfigError


def check_known_keys(cfg: DictConfig, path: str = "") -> None:
    """Every key of a schema-typed node must be a field of its dataclass."""
    schema = OmegaConf.get_type(cfg)
    if schema is not None and dataclasses.is_dataclass(schema):
        fields = {f.name for f in dataclasses.fields(schema)}
        for key in cfg:
            if key not in fields:
                raise ConfigError(unknown_key_message(path, str(key), fields))
    for key in cfg:
        value = cfg._get_node(key)
        if isinstance(value, DictConfig):
            check_known_keys(value, f"{path}{key}.")


def unknown_key_message(path: str, key: str, fields: set[str], meant: str | None = None) -> str:
    """``unknown config key 'trainer.epochz' (did you mean trainer.epochs?); valid keys ...``;
    ``meant`` is the hint when no field is close (a bare ``lr`` -> ``optim.lr``)."""
    close = difflib.get_close_matches(key, sorted(fields), n=1)
    meant = f"{path}{close[0]}" if close else meant
    hint = f" (did you mean {meant}?)" if meant else ""
    where = path.rstrip(".") or "the top level"
    return (f"unknown config key '{path}{key}'{hint}; valid keys of {where}: "
            f"{', '.join(sorted(fields))}")


def misspelt_override(
    primary: type, overrides: Sequence[str], methods: dict[str, type], groups: set[str]
) -> str | None:
    """The message for the first ``key=value`` override whose key the schemas do not have.

    Checked before Hydra composes: Hydra's own error for it is five lines that end by advising
    ``+key=value`` (which the key check then refuses) and never suggest the key meant. A bare
    key must be a field or one of the config ``groups``; a dotted key is followed down to the
    first field that is not a schema of its own (``model.kwargs``); ``method.KEY`` is checked
    only when ``method=NAME`` is on the command line (an experiment may pick it otherwise).
    """
    method = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), None)
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" not in override or override.startswith(("+", "~", "-")) or "/" in key \
                or "@" in key or key.startswith("hydra.") or key in groups:
            continue
        message = _unknown_key(primary, key.split("."), methods, method)
        if message:
            return message
    return None


def _unknown_key(
    primary: type, parts: list[str], methods: dict[str, type], method: str | None
) -> str | None:
    schema: Any = primary
    for depth, part in enumerate(parts):
        if depth == 1 and parts[0] == "method":
            schema = methods.get(method or "")
        fields = _field_names(schema)
        if not fields:
            return None  # not a schema (a dict of kwargs, an unknown method): Hydra decides
        if part in fields:
            schema = _field_schema(schema, part)
            continue
        path = "".join(f"{p}." for p in parts[:depth])
        meant = None
        if depth == 0:
            nested = _nested_keys(primary)
            close = difflib.get_close_matches(part, list(nested), n=1, cutoff=0.75)
            meant = nested[close[0]] if close else None
        message = unknown_key_message(path, part, fields, meant)
        owners = [name for name, m in methods.items() if part in _field_names(m)]
        if path == "method." and owners:
            message += f" (method.{part} is a key of method={', method='.join(owners)})"
        return message
    return None


def method_sweep_overrides(overrides: Sequence[str], methods: dict[str, type]) -> list[str]:
    """``overrides`` for Hydra when ``method=`` is swept (``method=taylor,chex``): every
    ``method.KEY=value`` that all the swept methods have becomes ``++method.KEY=value``.

    Hydra composes a multirun's first config without the swept groups, i.e. with
    ``method=none``, where ``method.KEY`` does not exist: so ``-m method=taylor,chex
    method.max_prune_per_group=0.5`` failed with "Key 'max_prune_per_group' not in
    'NoneConfig'". A key that only some of the swept methods have is a ConfigError naming them.
    """
    choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), "")
    names = _listed_values(choice)
    if not names or any(n not in methods for n in names):
        return list(overrides)  # one method, or a sweep Hydra expands itself (glob, range)
    out = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" in override and key.startswith("method.") and not override.startswith(("+", "~")):
            field = key.split(".")[1]
            lacking = [n for n in names if field not in _field_names(methods[n])]
            if len(lacking) == len(names):
                raise ConfigError(unknown_key_message("method.", field,
                                                      _field_names(methods[names[0]])))
            if lacking:
                raise ConfigError(
                    f"{key} is not a key of method={', method='.join(lacking)}, which this "
                    f"sweep also runs (method={choice}); sweep those methods in a command of "
                    "their own, or choose experiment files that set it")
            override = f"++{override}"
        out.append(override)
    return out


def _listed_values(value: str) -> list[str]:
    """The options of a sweep written ``a,b`` or ``choice(a,b)``; [] for one value."""
    if value.startswith("choice(") and value.endswith(")"):
        value = value[len("choice("):-1]
    names = [v.strip() for v in value.split(",")]
    return names if len(names) > 1 and all(names) else []


def _nested_keys(primary: type) -> dict[str, str]:
    """Field name -> ``group.field`` for the schemas one level down (``lr`` -> ``optim.lr``)."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(primary):  # in the schema's order: data before cost
        for inner in sorted(_field_names(_field_schema(primary, f.name))):
            out.setdefault(inner, f"{f.name}.{inner}")
    return out


def _field_names(schema: Any) -> set[str]:
    if not dataclasses.is_dataclass(schema):
        return set()
    return {f.name for f in dataclasses.fields(schema)}


def _field_schema(schema: type, name: str) -> Any:
    """The dataclass a field holds (``Optional[X]`` -> ``X``), or None."""
    hint = typing.get_type_hints(schema).get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


# key -> (accepts the value, what the value must be); a key a command's config lacks is skipped,
# and None (unset) is always accepted
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "data.batch_size": (lambda v: v >= 1, "an integer >= 1 (images per process and step)"),
    "data.eval_batch_size": (lambda v: v >= 1, "an integer >= 1 or null (2 x data.batch_size)"),
    "data.num_workers": (lambda v: v >= 0, "an integer >= 0 (0 loads data in the main process)"),
    "optim.lr": (lambda v: v >= 0, "a number >= 0"),
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "optim.eps": (lambda v: v > 0, "a number > 0"),
    "optim.warmup_epochs": (lambda v: v >= 0, "a number of epochs >= 0"),
    "optim.warmup_start_factor": (lambda v: 0 < v <= 1, "in (0, 1] (the first step's LR factor)"),
    "optim.min_lr": (lambda v: v >= 0, "a number >= 0"),
    "optim.gamma": (lambda v: v > 0, "a number > 0 (the step scheduler's decay factor)"),
    "optim.bias_lr_factor": (lambda v: v >= 0, "a number >= 0"),
    "trainer.epochs": (lambda v: v >= 0, "an integer >= 0"),
    "trainer.eval_every": (lambda v: v >= 1, "an integer >= 1 (epochs between evaluations)"),
    "trainer.log_every": (lambda v: v >= 1, "an integer >= 1 (steps between metric lines)"),
    "trainer.threads": (lambda v: v >= 1, "an integer >= 1 or null (torch's default)"),
    "trainer.clip_grad_norm": (lambda v: v > 0, "a number > 0 or null (no clipping)"),
    "trainer.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "trainer.limit_train_batches": (lambda v: v >= 1, "an integer >= 1 or null"),
    "trainer.limit_val_batches": (lambda v: v >= 1, "an integer >= 1 or null"),
    "trainer.stop_after_epoch": (lambda v: v >= 1, "an integer >= 1 or null"),
    # the keys of slim, export, bench and lut
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "tolerance": (lambda v: v >= 0, "a number >= 0 (max |masked - slimmed| / max |masked|)"),
    "repeats": (lambda v: v >= 1, "an integer >= 1 (timed calls)"),
    "warmup": (lambda v: v >= 0, "an integer >= 0 (untimed calls first)"),
    "threads": (lambda v: v >= 1, "an integer >= 1 or null (torch's default)"),
}


def check_value_ranges(cfg: DictConfig) -> None:
    """A ConfigError naming the first key whose value is out of its range (``_RANGES``)."""
    for key, (accepts, what) in _RANGES.items():
        try:
            value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        except InterpolationResolutionError:
            continue  # ${...} that cannot resolve here: the code that reads it reports it
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # unset, or a type the schema itself rejects
        if not (math.isfinite(value) and accepts(value)):
            raise ConfigError(f"{key}={value} must be {what}")
