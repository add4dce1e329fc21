"""Relative file paths in a run's config, made absolute before the run saves its config: a
checkpoint read later from another folder (``prunecli eval ckpt=RUN``, a distillation teacher,
``resume=RUN``) finds its data, weights and tables wherever the command is run from."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: the config keys that name files or folders on this machine
PATH_KEYS = ("data.root", "model.weights", "cost.table", "distill.teacher")


def anchor_paths(cfg: DictConfig, keys: tuple[str, ...] = PATH_KEYS) -> list[str]:
    """Resolve every existing relative path among ``keys`` against the current folder, in
    place; returns the keys changed. A path that does not exist is left as typed, so the error
    that follows names it as the user wrote it."""
    changed = []
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or not value or "://" in value:
            continue
        path = Path(value).expanduser()
        if path.is_absolute() and str(path) == value:
            continue
        if path.exists():  # abspath, not resolve: a symlinked data folder stays the link
            OmegaConf.update(cfg, key, os.path.abspath(path), merge=False)
            changed.append(key)
    return changed
