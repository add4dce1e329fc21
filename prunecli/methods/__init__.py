"""Pruning methods by name. The schemas (torch-free) are in :mod:`prunecli.methods.schemas`;
the implementation is imported only when a run builds the method."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prunecli.errors import UnknownNameError
from prunecli.methods.schemas import METHOD_SCHEMAS

if TYPE_CHECKING:
    from prunecli.engine.events import TrainingHooks


def method_names() -> list[str]:
    return sorted(METHOD_SCHEMAS)


def describe_methods() -> list[tuple[str, str]]:
    return [(name, METHOD_SCHEMAS[name][2]) for name in method_names()]


def build_method(cfg: Any) -> TrainingHooks:
    """Instantiate the method named by ``cfg.name`` with its (validated) hyperparameters."""
    name = cfg.name if hasattr(cfg, "name") else cfg["name"]
    if name not in METHOD_SCHEMAS:
        raise UnknownNameError(
            f"unknown method '{name}'. Available: {', '.join(method_names())} "
            "(see `prunecli list`)."
        )
    module_name, class_name = METHOD_SCHEMAS[name][1].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(cfg)
