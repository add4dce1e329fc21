"""Prune inside your own training loop: the same methods as ``prunecli train``, five calls.

    from prunecli.methods.pruner import Pruner

    pruner = Pruner(model, example_inputs, "taylor", cost="macs", ratio=0.5,
                    epochs=epochs, steps_per_epoch=len(loader))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # after the Pruner
    pruner.start(optimizer)
    for epoch in range(epochs):
        for x, y in loader:
            out = model(x)
            loss = criterion(out, y) + pruner.extra_loss(out, y)
            loss.backward()
            pruner.before_step()          # gradients complete (and unscaled under AMP)
            optimizer.step(); optimizer.zero_grad()
            pruner.after_step()           # masks change here, on the method's schedule
        pruner.end_epoch()
    small, summary = pruner.finish()      # the slimmed model and the pruned cost

Under DDP call it on the unwrapped model on every process, as the trainer does.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from prunecli.config.schema import CostConfig, ModelConfig
from prunecli.engine.distributed import DistEnv
from prunecli.engine.events import HookContext
from prunecli.errors import ConfigError
from prunecli.methods import build_method, method_names
from prunecli.methods.base import PruningMethod
from prunecli.methods.schemas import METHOD_SCHEMAS


class Pruner:
    """A pruning method driven by a user's loop. ``ratio``: the fraction of the dense ``cost``
    to remove (``cost.ratio``; 0 for methods given another target, e.g. slimming's
    ``channel_ratio`` or CHEX's ``sparsity``). ``hyper``: the method's hyperparameters (the keys
    of ``conf/method/<name>.yaml``), validated against its schema."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, method: str = "taylor",
                 cost: str = "macs", ratio: float = 0.0, epochs: int = 1,
                 steps_per_epoch: int = 1, table: str | None = None, **hyper: Any) -> None:
        if method not in METHOD_SCHEMAS or method == "none":
            raise ConfigError(f"unknown pruning method '{method}'; use one of "
                              f"{', '.join(m for m in method_names() if m != 'none')}")
        schema = METHOD_SCHEMAS[method][0]
        known = {f.name for f in fields(schema)}
        unknown = sorted(set(hyper) - known)
        if unknown:
            raise ConfigError(f"method {method} has no option {', '.join(unknown)}; its options "
                              f"are {', '.join(sorted(known - {'name'}))}")
        if hyper.get("slim_when_final"):
            raise ConfigError("slim_when_final is a `prunecli train` option: in your own loop, "
                              "check pruner.method.masks_final() and slim with pruner.finish()")
        mcfg = OmegaConf.structured(schema(**hyper))
        config = OmegaConf.create({
            "cost": OmegaConf.structured(CostConfig(name=cost, ratio=ratio, table=table)),
            "model": OmegaConf.structured(ModelConfig(name=type(model).__name__)),
            "data": {}, "method": mcfg})
        device = example_inputs.device
        self.ctx = HookContext(model=model, config=config,
                               dist=DistEnv(rank=0, local_rank=0, world_size=1, device=device),
                               example_inputs=example_inputs[:1], epochs=epochs,
                               steps_per_epoch=steps_per_epoch)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
            world = torch.distributed.get_world_size()
            self.ctx.dist = DistEnv(rank=rank, local_rank=rank, world_size=world, device=device)
        self.method: PruningMethod = build_method(mcfg)  # type: ignore[assignment]
        self.method.setup(self.ctx)

    def start(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.ctx.optimizer = optimizer
        self.method.on_train_start(self.ctx)

    def extra_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | float:
        extra = self.method.extra_loss(self.ctx, outputs, targets)
        return 0.0 if extra is None else extra

    def before_step(self) -> None:
        self.method.after_backward(self.ctx)
        self.method.before_optimizer_step(self.ctx)

    def after_step(self) -> None:
        self.ctx.step += 1
        self.ctx.micro_step += 1
        self.method.after_optimizer_step(self.ctx)

    def end_epoch(self, metrics: dict[str, float] | None = None) -> None:
        self.method.on_epoch_end(self.ctx, metrics or {})
        self.ctx.epoch += 1
        self.ctx.micro_step = 0
        if self.ctx.epoch < self.ctx.epochs:
            self.method.on_epoch_start(self.ctx)

    def finish(self) -> tuple[nn.Module, dict[str, Any]]:
        """Bring the model to the budget if the schedule has not, and return a slimmed copy
        (same classes, fewer channels; the masked ``model`` is left as it is) and a summary."""
        self.ctx.epoch = max(0, self.ctx.epoch - 1)
        summary = self.method.on_train_end(self.ctx)
        return self.method.final_model, summary

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method.state_dict(), "step": self.ctx.step,
                "epoch": self.ctx.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.ctx.step, self.ctx.epoch = int(state["step"]), int(state["epoch"])
