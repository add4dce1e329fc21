"""Network Slimming (Liu et al., ICCV 2017), with the Optimal Thresholding variant
(Ye et al., arXiv 2003.04566).

Sparsity training adds ``s * sign(gamma)`` to the gradient of every BN scale of a prunable
group (the L1 subgradient). At ``prune_at`` (a fraction of training) the channels with the
smallest ``|gamma|`` go, by one global ranking, until the target is met: a channel ratio
(``channel_ratio``, the paper's "percent") or the cost budget ``cost.ratio`` in any cost model.
No group is ever emptied. The rest of the run fine-tunes without the sparsity term.

``threshold=optimal``: per group, the smallest channels whose squared scales add up to at most
``ot_energy`` of the group's total are negligible. Without a target they are exactly what is
pruned (the paper's mode); with one, they go first and the global ranking does the rest (or
gives some back when they alone overshoot the target).

Two-run recipe: sparsity-train with ``prune_at=1.0`` (prunes at the very end), then
``model.weights=RUN/last.pt method.prune_at=0 method.sparsity=0`` prunes at once and fine-tunes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from prunecli.allocate import prune_by_ranking
from prunecli.cost.channels import ChannelCountCost
from prunecli.engine.events import HookContext
from prunecli.errors import ConfigError
from prunecli.importance import bn_scale, norm_slices
from prunecli.methods.base import PruningMethod

log = logging.getLogger("prunecli")


def optimal_threshold_mask(scale: np.ndarray, energy: float) -> np.ndarray:
    """True for the negligible channels of one group: the smallest ones whose squared scales
    sum to at most ``energy`` of the group's total (never all of them)."""
    order = np.argsort(scale, kind="stable")
    sq = np.square(scale[order])
    total = sq.sum()
    if total <= 0:
        return np.zeros(len(scale), bool)
    n = int(np.searchsorted(np.cumsum(sq) / total, energy, side="right"))
    n = min(n, len(scale) - 1)
    out = np.zeros(len(scale), bool)
    out[order[:n]] = True
    return out


class NetworkSlimming(PruningMethod):
    needs_budget = False

    def setup(self, ctx: HookContext) -> None:
        super().setup(ctx)
        c = self.cfg
        if c.threshold not in ("global", "optimal"):
            raise ConfigError(f"method.threshold={c.threshold} is unknown; use global or optimal")
        if c.channel_ratio is not None and not 0.0 <= c.channel_ratio < 1.0:
            raise ConfigError(f"method.channel_ratio={c.channel_ratio} must be in [0, 1)")
        self.channels_target = None if c.channel_ratio is None else 1.0 - c.channel_ratio
        if c.channel_ratio is not None and self.ratio > 0:
            raise ConfigError("set either method.channel_ratio (fraction of channels) or "
                              "cost.ratio (fraction of the cost), not both")
        if c.channel_ratio is None and self.ratio == 0 and c.threshold == "global":
            raise ConfigError("method=slimming needs a target: cost.ratio (fraction of the "
                              "cost to remove), method.channel_ratio (fraction of channels), or "
                              "method.threshold=optimal")
        self.slices = norm_slices(ctx.net, self.structure)
        if not self.slices:
            raise ConfigError(f"{ctx.config.model.name} has no BN after a prunable layer: "
                              "Network Slimming prunes by BN scales")
        self.params = [p.module.weight for parts in self.slices.values() for p in parts]
        self.params = list({id(p): p for p in self.params}.values())
        self.prune_step_at = int(round(c.prune_at * ctx.epochs * ctx.steps_per_epoch))
        self.pruned = False

    def on_train_start(self, ctx: HookContext) -> None:
        super().on_train_start(ctx)
        if not self.pruned and self.prune_step_at <= ctx.step:
            self.prune(ctx)

    def before_optimizer_step(self, ctx: HookContext) -> None:
        s = self.cfg.sparsity
        if s and not self.pruned:
            with torch.no_grad():
                for w in self.params:
                    if w.grad is not None:
                        w.grad.add_(torch.sign(w), alpha=s)

    def after_optimizer_step(self, ctx: HookContext) -> None:
        if not self.pruned and ctx.step >= self.prune_step_at:
            self.prune(ctx)

    def prune(self, ctx: HookContext) -> None:
        c = self.cfg
        scores = self.score_arrays(bn_scale(self.slices))
        priority = None
        if c.threshold == "optimal":
            priority = {g: np.where(optimal_threshold_mask(s, c.ot_energy), 0.0, 1.0)
                        for g, s in scores.items()}
        if c.channel_ratio is not None:
            cost = ChannelCountCost(self.structure, scores)
            target = (1.0 - c.channel_ratio) * cost.dense
        elif self.ratio > 0:
            cost, target = self.cost_model, self.target_cost
        else:  # Optimal Thresholding alone decides
            keep = {g: np.flatnonzero(p > 0) for g, p in priority.items()}
            self._done(ctx, keep)
            return
        result = prune_by_ranking(cost, scores, target, self.active(),
                                  min_channels=self.floors, priority=priority,
                                  droppable=self.droppable)
        if not result.reached:
            log.warning("slimming: the target cannot be reached with %s per group",
                        self.floor_text())
        self._done(ctx, result.keep)

    def _done(self, ctx: HookContext, keep: dict[int, np.ndarray]) -> None:
        self.pruned = True
        self.apply(ctx, keep, note="slimming")

    def on_train_end(self, ctx: HookContext) -> dict[str, Any]:
        if not self.pruned and not ctx.stopped_early:
            self.prune(ctx)  # prune_at >= 1: sparsity training only, prune at the very end
        return super().on_train_end(ctx)

    def masks_final(self) -> bool:
        return bool(self.pruned)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pruned": self.pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pruned = bool(state.get("pruned", False))
