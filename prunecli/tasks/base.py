"""What a task is: how a batch becomes a loss, a loader becomes metrics, and which metric counts.

The training loop, the pruning methods, the reports and the sweeps all ask the task instead of
assuming classification: the loop calls :meth:`Task.loss` and :meth:`Task.evaluate`, the methods
read ``ctx.metric`` (the task's primary metric), and results carry ``metric`` so reports know
which number to compare. A task is picked by the dataset (``DatasetBundle.task``) and registered
by name in :data:`TASKS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from prunecli.config.schema import DataConfig
from prunecli.engine.precision import Precision
from prunecli.errors import ConfigError
from prunecli.registry import Registry


class Meter(ABC):
    """Accumulates training statistics over an epoch; ``compute`` reduces over ranks."""

    @abstractmethod
    def update(self, outputs: Any, targets: Any, loss: Tensor) -> None:
        """One micro-batch: the task's outputs, its targets and the (detached) task loss."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The epoch's figures, e.g. ``{"loss": ..., "top1": ...}`` (every rank must call)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The sums so far (tensors and plain values), saved with a checkpoint written
        mid-epoch so that the resumed epoch reports the whole epoch's figures."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s sums (``{}``: nothing was summed yet)."""


class Task(ABC):
    """One kind of problem (classification, detection): batch -> loss, loader -> metrics."""

    name: str = ""
    metrics: tuple[str, ...] = ()  # what ``evaluate`` reports that may be the primary metric
    default_metric: str = ""

    def __init__(self, data_cfg: DataConfig, *, num_classes: int,
                 class_names: list[str] | None = None, label_smoothing: float = 0.0) -> None:
        self.num_classes = num_classes
        self.class_names = class_names
        self.label_smoothing = label_smoothing
        metric = data_cfg.metric or self.default_metric
        if metric not in self.metrics:
            raise ConfigError(f"data.metric={metric} is not a {self.name} metric; choose one of "
                              f"{', '.join(self.metrics)}")
        self.metric: str = metric  # the primary metric: what methods, reports and sweeps use

    # ------------------------------------------------------------------ data
    collate_fn: Callable[[list[Any]], Any] | None = None  # None: PyTorch's default

    def example_input(self, dataset: Dataset) -> Tensor:
        """One batch-1 model input (for tracing, MAC counts and checks)."""
        return dataset[0][0][None]

    @abstractmethod
    def to_device(self, batch: Any, device: torch.device,
                  memory_format: torch.memory_format) -> tuple[Tensor, Any]:
        """``(inputs, targets)`` of a loader batch, on ``device``."""

    # ------------------------------------------------------------------ model
    @abstractmethod
    def check_model(self, model: nn.Module, model_name: str, data_name: str) -> None:
        """A one-line ConfigError when ``model`` cannot do this task."""

    @abstractmethod
    def loss(self, model: nn.Module, inputs: Tensor, targets: Any) -> tuple[Tensor, Any]:
        """``(loss, outputs)`` of one micro-batch in training mode; ``outputs`` goes to the
        method's ``extra_loss`` and the training meter."""

    @abstractmethod
    def class_logits(self, model: nn.Module, core_output: Any) -> tuple[Tensor, str]:
        """The class scores in ``core_of(model)``'s output as ``(..., columns)`` logits and how
        they become probabilities (``"softmax"`` over the last axis or ``"sigmoid"`` per
        column): what distillation matches between teacher and student."""

    #: whether :meth:`box_regressions` gives boxes to distil (detection)
    has_boxes: bool = False

    def box_regressions(self, model: nn.Module, core_output: Any) -> Tensor | None:
        """The box regressions in ``core_of(model)``'s output as ``(..., boxes, 4)`` in the order
        of :meth:`class_logits`' boxes; None for a task without boxes (classification)."""
        return None

    #: ``distill.alpha`` when the config leaves it unset: the share of the supervised loss that
    #: the class-score distillation term takes
    kd_alpha: float = 0.5

    def split_loss(self, model: nn.Module, loss: Tensor, outputs: Any
                   ) -> tuple[Tensor, Tensor | None]:
        """``(supervised, rest)``: the part of ``loss`` that supervises the class scores
        distillation matches, which shares its weight with the distillation term, and the rest,
        which keeps its full weight (``None``: nothing else). Default: the whole loss."""
        return loss, None

    @abstractmethod
    def train_meter(self, device: torch.device) -> Meter:
        """A fresh meter for one training epoch."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device,
                 precision: Precision, channels_last: bool = False,
                 limit: int | None = None, per_class: bool = False) -> dict[str, float]:
        """Metrics of ``model`` (unwrapped: no DDP collectives inside the forward) over
        ``loader``; under DDP every rank passes its shard and gets the same result. With
        ``per_class``, ``metrics["per_class"]`` maps each class name to its own metrics."""

    # ------------------------------------------------------------------ reporting
    def results(self, metrics: dict[str, float]) -> dict[str, Any]:
        """The entries a run's results carry for ``metrics`` (from :meth:`evaluate`)."""
        return dict(metrics)

    @abstractmethod
    def describe(self, metrics: dict[str, float]) -> str:
        """A short line for the log, e.g. ``"top1 91.20%"`` or ``"mAP 45.1 AP50 80.2"``."""


TASKS: Registry[type[Task]] = Registry("task")
