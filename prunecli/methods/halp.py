"""HALP: Hardware-Aware Latency Pruning (Shen et al., NeurIPS 2022).

Importance per channel: ``|sum over the group's norms of gamma*dL/dgamma + beta*dL/dbeta|``
each iteration (a group without a norm: ``|sum w*dL/dw|`` over its consumer inputs), summed
over the ``prune_every`` iterations before a pruning step and averaged (iterations with NaN/Inf
scores are skipped). The paper prunes 30 steps every 40 iterations (the ImageNet recipes say so);
by default (``prune_every`` unset) the ``prune_steps`` steps are instead spread evenly from
``start_epoch`` to ``finish_at`` of training, fewer when that window has fewer optimizer steps,
so that a short run fits too. At each step the cost target follows the geometric
schedule ``L0^(1-t/T) * LT^(t/T)``; the channels still active are sorted by importance and cut
into neuron groups of ``group_size``, and the augmented knapsack keeps the most important
prefix of every group's chunks under that target (cost from the latency table of
``prunecli lut`` with ``cost=latency``, or any other cost model; producer view of a layer's
cost by default, ``side_weight=0``). Pruned channels never return; the last step lands on the
budget and the rest of the run fine-tunes.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from prunecli.allocate import allocate_to_budget
from prunecli.allocate.halp import chunk_counts
from prunecli.engine.events import HookContext
from prunecli.errors import ConfigError
from prunecli.importance import Accumulator, BNTaylor, norm_slices
from prunecli.methods.base import PruningMethod
from prunecli.methods.schedule import geometric_target, spread_steps

log = logging.getLogger("prunecli")

#: a final cost this far (a fraction of dense) under the budget gets a warning
UNDERSHOOT = 0.02


class HALP(PruningMethod):
    def setup(self, ctx: HookContext) -> None:
        super().setup(ctx)
        c = self.cfg
        if c.group_size < 1 or c.prune_steps < 1 or (c.prune_every is not None
                                                     and c.prune_every < 1):
            raise ConfigError("method.group_size, method.prune_every and method.prune_steps "
                              "must be >= 1")
        if not 0.0 < c.finish_at <= 1.0:
            raise ConfigError(f"method.finish_at={c.finish_at} must be a fraction of training "
                              "in (0, 1]")
        self.start = self.steps_of(ctx, c.start_epoch)
        total = ctx.epochs * ctx.steps_per_epoch
        if c.prune_every is None:  # spread over the window, as the run's length allows
            finish = min(total, max(self.start + 1, int(round(c.finish_at * total))))
            self.steps, self.every = spread_steps(self.start, finish, c.prune_steps)
        else:  # the paper's explicit schedule: it must fit as given
            self.steps, self.every = int(c.prune_steps), int(c.prune_every)
        end = self.start + self.steps * self.every
        if end > total:
            raise ConfigError(
                f"HALP prunes until step {end} (start {self.start} + {self.steps} steps x "
                f"{self.every} iterations) but the run has {total} optimizer steps; lower "
                "method.prune_steps / method.prune_every / method.start_epoch or train longer "
                "(or leave method.prune_every unset to spread the steps over the run)")
        log.info("halp: %d pruning steps every %d iterations, from step %d to %d of %d",
                 self.steps, self.every, self.start, end, total)
        self.taylor = BNTaylor(ctx.net, self.structure, norm_slices(ctx.net, self.structure))
        self.window = Accumulator("average", skip_nonfinite=True)
        self.done_steps = 0

    def before_optimizer_step(self, ctx: HookContext) -> None:
        if self.done_steps < self.steps and ctx.step >= self.start:
            self.window.update({g: s.abs() for g, s in self.taylor().items()})

    def after_optimizer_step(self, ctx: HookContext) -> None:
        if self.done_steps >= self.steps or ctx.step <= self.start:
            return
        if (ctx.step - self.start) % self.every == 0:
            self.prune_step(ctx)

    def prune_step(self, ctx: HookContext) -> None:
        c = self.cfg
        self.done_steps += 1
        scores = self.score_arrays(self.window.value())
        self.window.reset()
        dense = self.cost_model.dense
        target = geometric_target(dense, self.target_cost, self.done_steps, self.steps)
        if self.cost_model.cost(self.counts()) <= target:
            self._check_landing()
            return  # already at or under this step's target
        result = allocate_to_budget(self.cost_model, scores, 1.0 - target / dense,
                                    side_weight=c.side_weight, active=self.active(),
                                    group_size=c.group_size, droppable=self.droppable,
                                    min_channels=self.floors)
        if not result.feasible:
            log.warning("halp: step %d target %.1f%% of dense is out of reach with %s",
                        self.done_steps, 100 * target / dense, self.floor_text())
        self.apply(ctx, result.keep, note=f"halp {self.done_steps}/{self.steps}")
        self._check_landing()

    def least_counts(self, cap: float) -> dict[int, int]:
        """As for every method, each floor raised to a whole number of neuron groups: the
        allocator keeps at least one group of ``group_size`` channels per layer (none in a
        group the graph may drop)."""
        size = max(int(self.cfg.group_size), 1)  # setup rejects < 1
        out = {}
        for gid, least in super().least_counts(cap).items():
            group = self.structure.groups[gid]
            counts = chunk_counts(group.size, size // math.gcd(size, group.unit),
                                  force_first=gid not in self.droppable)
            out[gid] = int(counts[(counts >= min(least, group.size))][0])
        return out

    def floor_text(self) -> str:
        return (f"one neuron group of method.group_size={self.cfg.group_size} per layer and "
                f"{super().floor_text()}")

    def _check_landing(self) -> None:
        """After the last step: a budget missed from below by more than UNDERSHOOT of the dense
        cost is the neuron groups' doing (the knapsack keeps value, not cost, and a group of
        ``group_size`` channels in a narrow layer can weigh several percent); say how to fix it."""
        size = self.cfg.group_size
        if self.done_steps < self.steps or size <= 1:
            return
        kept, goal = self.kept_cost_ratio(), 1.0 - self.ratio
        if kept >= goal - UNDERSHOOT:
            return
        log.warning("halp: pruning ended at %.1f%% of the dense %s for a %.1f%% budget: neuron "
                    "groups of %d channels are coarse for this model's widths; "
                    "method.group_size=%d or lower lands nearer the budget", 100 * kept,
                    self.cost_model.name, 100 * goal, size, max(1, size // 2))

    def masks_final(self) -> bool:
        return bool(self.done_steps >= self.steps)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "window": self.window.state_dict(),
                "done_steps": self.done_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.window.load_state_dict(state.get("window", {}), self.device)
        self.done_steps = int(state.get("done_steps", 0))
