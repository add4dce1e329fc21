"""Tasks by name: what a batch means (classification, detection), asked by the training loop,
the commands and the methods instead of branching on model or dataset names."""

from __future__ import annotations

from typing import Any

from prunecli.tasks import classification, detection  # noqa: F401  (registration)
from prunecli.tasks.base import TASKS, Meter, Task


def build_task(bundle: Any, data_cfg: Any, label_smoothing: float = 0.0) -> Task:
    """The task of a dataset bundle (``bundle.task``), with ``data.metric`` as its primary
    metric (the task's default when unset)."""
    from prunecli.data.registry import as_data_config

    cls = TASKS.get(getattr(bundle, "task", "classification"))
    return cls(as_data_config(data_cfg), num_classes=bundle.num_classes,
               class_names=bundle.class_names, label_smoothing=label_smoothing)


__all__ = ["TASKS", "Meter", "Task", "build_task"]
