"""Taylor pruning (Molchanov et al., ICLR 2017 and CVPR 2019 "Taylor-FO-BN").

Importance of a channel = the first-order change of the loss when it is removed:

- ``fo_bn`` (default, CVPR 2019): ``(sum over the channel of gamma*dL/dgamma + beta*dL/dbeta)^2``
  per minibatch, i.e. ``(g * dL/dg)^2`` of a gate after the BN; a residual stream's score is
  divided by the number of norms sharing it. Groups without a norm use ``fo_weight``.
- ``fo_weight``: ``(sum w * dL/dw over the channel's consumer input columns)^2``.
- ``iclr2017``: ``|mean a * dL/da|`` per sample, l2-normalised per layer.

Scores are averaged over the ``prune_every`` minibatches between pruning steps, then smoothed
across steps with ``momentum``. Every step removes the ``remove_per_step`` lowest-ranked active
channels (one global ranking), stopping as soon as the cost budget is met; the rest of the run
fine-tunes. ``remove_per_step=0`` spreads the removal evenly: each step removes the channels
still needed to reach the budget divided by the pruning steps left before ``finish_at``.
Unlike the original, the channels are really removed at the end (slim.pt).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from prunecli.allocate import prune_by_ranking
from prunecli.engine.events import HookContext
from prunecli.errors import ConfigError
from prunecli.importance import (
    Accumulator,
    ActivationTaylor,
    BNTaylor,
    WeightTaylor,
    l2_normalise,
    norm_slices,
)
from prunecli.methods.base import PruningMethod
from prunecli.methods.schedule import removal_count

log = logging.getLogger("prunecli")

CRITERIA = ("fo_bn", "fo_weight", "iclr2017")


class TaylorPruning(PruningMethod):
    def setup(self, ctx: HookContext) -> None:
        super().setup(ctx)
        c = self.cfg
        if c.criterion not in CRITERIA:
            raise ConfigError(f"method.criterion={c.criterion} is unknown; use one of "
                              f"{', '.join(CRITERIA)}")
        if c.prune_every < 1:
            raise ConfigError("method.prune_every must be >= 1 (minibatches per pruning step)")
        self.start = self.steps_of(ctx, c.start_epoch)
        total = ctx.epochs * ctx.steps_per_epoch
        planned = int(round(c.finish_at * total))
        self.finish = min(total, max(self.start + c.prune_every, planned))
        if self.finish > max(planned, self.start + 1):
            # the run is too short for one window of prune_every minibatches by finish_at
            after = "no fine-tuning after it" if self.finish >= total else (
                f"{total - self.finish} steps of fine-tuning after it")
            log.warning("taylor: method.prune_every=%d minibatches does not fit before "
                        "method.finish_at=%g of this %d-step run: the whole cut comes at step %d "
                        "(%s); lower method.prune_every (e.g. %d)", c.prune_every, c.finish_at,
                        total, self.finish, after, max(1, (planned - self.start) // 4))
        if c.remove_per_step < 0:
            raise ConfigError("method.remove_per_step must be >= 0 (0: spread evenly)")
        self.per_step = (None if c.remove_per_step == 0 else
                         removal_count(c.remove_per_step,  # units: a conv group goes at once
                                       sum(g.size for g in self.structure.prunable_groups)))
        slices = norm_slices(ctx.net, self.structure)
        self.hooks: ActivationTaylor | None = None
        if c.criterion == "fo_bn":
            taylor = BNTaylor(ctx.net, self.structure, slices)
            self.score_fn = lambda: {g: s.pow(2) / taylor.counts[g] for g, s in taylor().items()}
        elif c.criterion == "fo_weight":
            weight = WeightTaylor(ctx.net, self.structure)
            self.score_fn = lambda: {g: s.pow(2) for g, s in weight().items()}
        else:
            self.hooks = ActivationTaylor(ctx.net, self.structure)
            self.score_fn = self.hooks.pop
        self.window = Accumulator("average")  # minibatches since the last pruning step
        self.smooth = Accumulator("momentum", momentum=c.momentum)  # across pruning steps
        self.done = False

    def pruning(self, ctx: HookContext) -> bool:
        return not self.done and ctx.step >= self.start

    def on_train_start(self, ctx: HookContext) -> None:
        super().on_train_start(ctx)
        if self.hooks is not None and not self.done:
            self.hooks.attach()

    def before_optimizer_step(self, ctx: HookContext) -> None:
        if self.pruning(ctx):
            self.window.update(self.score_fn())
        elif self.hooks is not None:
            self.hooks.pop()  # activations seen outside the pruning phase are not used

    def after_optimizer_step(self, ctx: HookContext) -> None:
        if not self.pruning(ctx):
            return
        due = (ctx.step - self.start) % self.cfg.prune_every == 0 or ctx.step >= self.finish
        if due:
            self.prune_step(ctx)

    def prune_step(self, ctx: HookContext) -> None:
        scores = self.window.value()
        if scores:
            self.smooth.update(l2_normalise(scores) if self.cfg.criterion == "iclr2017"
                               else scores)
        self.window.reset()
        smoothed = self.smooth.value() or {g.id: torch.zeros(g.size, device=self.device)
                                           for g in self.structure.prunable_groups}
        arrays = self.score_arrays(smoothed)
        last = ctx.step >= self.finish  # out of time: cut to the budget now
        active = self.active()
        cap = None if last else self.per_step
        if cap is None and not last:  # spread evenly over the pruning steps left
            needed = prune_by_ranking(self.cost_model, arrays, self.target_cost, active,
                                      min_channels=self.floors,
                                      droppable=self.droppable).removed
            steps_left = (self.finish - ctx.step) // self.cfg.prune_every + 1
            cap = -(-needed // max(1, steps_left))
        result = prune_by_ranking(self.cost_model, arrays, self.target_cost, active,
                                  max_remove=cap, min_channels=self.floors,
                                  droppable=self.droppable)
        if result.removed:
            self.apply(ctx, result.keep, note="taylor")
        if result.reached or last:
            self.done = True
            if not result.reached:
                log.warning("taylor: the budget cannot be reached with %s per group (%.1f%% of "
                            "dense left)", self.floor_text(), 100 * self.kept_cost_ratio())
            if self.hooks is not None:
                self.hooks.detach()

    def on_train_end(self, ctx: HookContext) -> dict[str, Any]:
        if not self.done and not ctx.stopped_early:
            log.warning("taylor: training ended before the budget was reached; cutting to it "
                        "now, without fine-tuning (lower method.finish_at or train longer)")
            self.finish = ctx.step
            self.prune_step(ctx)
        return super().on_train_end(ctx)

    def masks_final(self) -> bool:
        return bool(self.done)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "window": self.window.state_dict(),
                "smooth": self.smooth.state_dict(), "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.window.load_state_dict(state.get("window", {}), self.device)
        self.smooth.load_state_dict(state.get("smooth", {}), self.device)
        self.done = bool(state.get("done", False))
