"""The event interface between the training loop and a pruning method.

The engine knows nothing about any method: it calls these hooks at fixed points, and a method
(Taylor, Network Slimming, HALP, SMCP, Gator, CHEX, or a user's own) overrides the ones it needs.
Every hook has a no-op default, so dense training is ``TrainingHooks()`` itself.

Order of calls::

    setup(ctx)                         once; may modify ctx.model (add gates/masks) -- before the
                                       optimizer exists and before DDP wraps the model
    param_groups(groups) -> groups     once; may add/alter optimizer parameter groups
    on_train_start(ctx)                once; ctx.optimizer and ctx.scheduler exist
    for each epoch:
        on_epoch_start(ctx)
        for each micro-batch:
            extra_loss(ctx, outputs, targets) -> Tensor | None   added to the task loss
            after_backward(ctx)        gradients of this micro-batch exist (accumulated under
                                       grad_accum; under fp16 multiplied by the loss scale,
                                       ctx.grad_scaler.get_scale())
            once every trainer.grad_accum micro-batches:
                before_optimizer_step(ctx)   full, UNSCALED gradients; change them here
                (optimizer step, scheduler step)
                after_optimizer_step(ctx)    weights updated; re-apply masks, prune on schedule
        on_epoch_end(ctx, metrics)     after evaluation, before the checkpoint is written
    on_train_end(ctx) -> dict          final summary entries (kept channels, pruned cost, ...)

``state_dict``/``load_state_dict`` put the method's state (scores, masks, schedule position)
into every checkpoint so a resumed run continues exactly. Values must be tensors or plain
Python values: checkpoints are loaded with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from prunecli.engine.distributed import DistEnv


@dataclass
class HookContext:
    """What the loop shares with the method. ``model`` is always the unwrapped module (never the
    DDP wrapper), so methods address layers by their ordinary names."""

    model: nn.Module
    config: Any  # the resolved run config (TrainConfig-shaped DictConfig)
    dist: DistEnv
    example_inputs: torch.Tensor  # one batch-1 input on the device, for tracing
    epochs: int
    steps_per_epoch: int  # optimizer steps per epoch
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0  # optimizer steps taken so far (global)
    micro_step: int = 0  # micro-batches seen in this epoch
    # the fp16 loss scaler (disabled otherwise); get_scale() synchronises with the GPU, so the
    # engine never calls it per step and a method should only when it needs the value
    grad_scaler: Any = None
    run_dir: Path | None = None  # where the run writes (only rank 0 may write files)
    # evaluate(model) -> the task's metrics on the validation set, e.g. {"top1", "top5",
    # "loss"} or {"map", "map50", "voc07_map", ...} (all ranks must call it)
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    metric: str = "top1"  # the task's primary metric, a key of evaluate()'s result
    class_names: list[str] | None = None  # the dataset's, saved with the slim model
    # the run stops before its last epoch (trainer.stop_after_epoch, as if killed): its
    # on_train_end reports but does not finish the method's work (no last cut, no slim model);
    # the resumed run does
    stopped_early: bool = False
    extras: dict[str, Any] = field(default_factory=dict)  # free room for a method's own data
    # record(kind=..., **fields): one line of the run's metrics log (metrics.jsonl and, with
    # logger=tensorboard, TensorBoard); e.g. a pruning event. Only rank 0's log writes.
    record: Callable[..., None] = field(default=lambda **_: None)

    @property
    def net(self) -> nn.Module:
        """What pruning traces, masks and slims: a detector's core (backbone, neck, heads; its
        modules are the detector's own), or the model itself."""
        from prunecli.models.detection import core_of

        return core_of(self.model)

    def net_input(self) -> torch.Tensor:
        """``example_inputs`` as the net sees them (a detector's core takes normalised images)."""
        from prunecli.models.detection import is_detector

        x = self.example_inputs
        return self.model.normalise(x) if is_detector(self.model) else x

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]: the usual clock for pruning schedules."""
        total = max(1, self.epochs * self.steps_per_epoch)
        return min(1.0, self.step / total)


class TrainingHooks:
    """Base class of every method; all hooks are no-ops."""

    def setup(self, ctx: HookContext) -> None:
        """Called once before the optimizer is built; may add modules/parameters to the model."""

    def param_groups(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Adjust the optimizer's parameter groups (e.g. gates without weight decay)."""
        return groups

    def on_train_start(self, ctx: HookContext) -> None:
        """Called once the optimizer, scheduler and (after resume) all states are ready."""

    def on_epoch_start(self, ctx: HookContext) -> None:
        """Called before the first batch of every epoch."""

    def extra_loss(self, ctx: HookContext, outputs: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor | None:
        """A term added to the task loss (sparsity regulariser, gate penalty) or None."""
        return None

    def after_backward(self, ctx: HookContext) -> None:
        """Gradients of the current micro-batch are in ``.grad`` (accumulated, maybe scaled)."""

    def before_optimizer_step(self, ctx: HookContext) -> None:
        """Full unscaled gradients; the optimizer steps right after."""

    def after_optimizer_step(self, ctx: HookContext) -> None:
        """Weights were just updated."""

    def on_epoch_end(self, ctx: HookContext, metrics: dict[str, float]) -> None:
        """After the epoch's evaluation; the checkpoint is written right after."""

    def on_train_end(self, ctx: HookContext) -> dict[str, Any]:
        """Return entries for the results table/JSON."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
