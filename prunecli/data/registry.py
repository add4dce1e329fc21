"""The dataset registry and what every dataset factory returns.

A factory turns a :class:`DataConfig` into a :class:`DatasetBundle`: the two splits plus what
the model and the engine need to know about them (classes, channels, size, normalisation), so
models are built from the data instead of from per-dataset settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from prunecli.config.schema import DataConfig
from prunecli.errors import ConfigError, DataError
from prunecli.registry import Registry


@dataclass
class DatasetBundle:
    """Train and validation datasets plus the facts a model and a report need about them."""

    train: Dataset
    val: Dataset
    num_classes: int
    channels: int
    image_size: int
    class_names: list[str] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # "classification": samples are (normalised image, int label); "detection": (image in
    # [0, 1], target dict), see prunecli.data.detection. Picks the task (prunecli.tasks).
    task: str = "classification"


DatasetFactory = Callable[[DataConfig], DatasetBundle]
DATASETS: Registry[DatasetFactory] = Registry("dataset")


def build_datasets(cfg: DataConfig | Mapping[str, Any]) -> DatasetBundle:
    """Build the datasets ``cfg.name`` names (a mapping is read as a :class:`DataConfig`)."""
    cfg = as_data_config(cfg)
    factory = DATASETS.get(cfg.name)  # UnknownNameError lists the available names
    return factory(cfg)


def describe_datasets() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every registered dataset, for ``prunecli list``."""
    return [(e.name, e.description) for e in DATASETS.entries()]


def as_data_config(cfg: DataConfig | Mapping[str, Any]) -> DataConfig:
    """Accept a :class:`DataConfig` or a plain/OmegaConf mapping and check the values we use."""
    if not isinstance(cfg, DataConfig):
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"data config must be a mapping, got {type(cfg).__name__}")
        if type(cfg).__module__.startswith("omegaconf"):
            from omegaconf import OmegaConf

            # a missing mandatory value (``root: ???``) reads as "not set", not as a crash
            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        values = {str(k): (None if v == "???" else v) for k, v in cfg.items()}
        known = {f.name for f in fields(DataConfig)}
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown data key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        cfg = DataConfig(**values)
    for key in ("image_size", "train_size", "val_size", "num_classes"):
        value = getattr(cfg, key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"data.{key} must be a positive integer or null, got {value!r}")
    if cfg.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels must be 1, 3 or null, got {cfg.channels!r}")
    return cfg


def balanced_order(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Indices that interleave the classes (first of each class, then second, ...).

    Any prefix of this order is as class-balanced as possible, so ``train_size=N`` keeps the
    class mix; within a class the original order is kept, which makes prefixes stable.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    by_class = np.argsort(labels, kind="stable")
    sorted_labels = labels[by_class]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty_like(labels)
    rank[by_class] = np.arange(labels.size) - starts  # position of each item inside its class
    return np.lexsort((labels, rank))  # by rank, then class


def take_balanced(
    dataset: Dataset, labels: Sequence[int] | np.ndarray, size: int | None
) -> Dataset:
    """The first ``size`` items of :func:`balanced_order` (all of them, unchanged, if None)."""
    if size is None or size >= len(labels):
        return dataset
    return Subset(dataset, balanced_order(labels)[:size].tolist())


def require_root(cfg: DataConfig, what: str) -> Path:
    """``cfg.root`` as an existing folder, or a :class:`DataError` saying what it should hold."""
    if not cfg.root:
        raise DataError(f"data={cfg.name} needs data.root=PATH pointing at {what}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        kind = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data.root={root} {kind}; data={cfg.name} expects {what}")
    return root
