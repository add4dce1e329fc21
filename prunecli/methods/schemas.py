"""Hyperparameter schemas of the pruning methods (torch-free, so the CLI starts fast).

Each method registers a dataclass here; ``conf/method/<name>.yaml`` starts from it, so a typo
in a method's key is a composition error. The method implementation lives in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MethodConfig:
    """Fields every method has."""

    name: str = "none"


@dataclass
class NoneConfig(MethodConfig):
    """Dense training: no pruning."""

    name: str = "none"


# name -> (schema, "module:Class" of the implementation, one-line description)
METHOD_SCHEMAS: dict[str, tuple[type[MethodConfig], str, str]] = {
    "none": (NoneConfig, "prunecli.methods.none:NoPruning", "dense training, no pruning"),
}
