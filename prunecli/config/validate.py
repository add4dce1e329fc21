"""Reject keys that slipped past Hydra's struct mode (``+key=value`` adds one on purpose), so a
misspelt key is always an error, never a silently ignored value."""

from __future__ import annotations

import dataclasses
import difflib

from omegaconf import DictConfig, OmegaConf

from prunecli.errors import ConfigError


def check_known_keys(cfg: DictConfig, path: str = "") -> None:
    """Every key of a schema-typed node must be a field of its dataclass."""
    schema = OmegaConf.get_type(cfg)
    if schema is not None and dataclasses.is_dataclass(schema):
        fields = {f.name for f in dataclasses.fields(schema)}
        for key in cfg:
            if key not in fields:
                full = f"{path}{key}"
                close = difflib.get_close_matches(str(key), sorted(fields), n=1)
                hint = f" (did you mean {path}{close[0]}?)" if close else ""
                where = path.rstrip(".") or "the top level"
                raise ConfigError(
                    f"unknown config key '{full}'{hint}; valid keys of {where}: "
                    f"{', '.join(sorted(fields))}"
                )
    for key in cfg:
        value = cfg._get_node(key)
        if isinstance(value, DictConfig):
            check_known_keys(value, f"{path}{key}.")
