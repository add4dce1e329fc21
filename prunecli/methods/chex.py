"""CHEX: Channel Exploration (Hou et al., CVPR 2022) -- prune and regrow channels from scratch.

Target: ``method.sparsity`` S, the fraction of the channels of the scored groups to remove (the
paper's knob), or, when it is not set, the budget ``cost.ratio`` r in the run's cost model
(macs, params, memory, latency). "S" below stands for either; with a cost budget every
sparsity is read as a removal ratio of the dense cost.

- **Start** (before the first optimizer step): every group keeps the same fraction of its
  channels, the largest one at which the model is at sparsity ``S - d0``, chosen by the L1 norm
  of the producers' output filters.
- **Exploration**, every ``update_every`` (dT) until ``t_max`` (T_max) -- both in optimizer
  steps from the ``optim.milestones`` rule: below 1 a fraction of training, from 1 on epochs --
  with ``d_t = d0 * (1 + cos(pi * t / T_max)) / 2``:

  1. *layer allocation*: one global ranking of the BN scales ``|gamma|`` (mean over a group's
     norms, :func:`prunecli.importance.bn_scale`) over all channels, pruned ones included (their
     gamma is zero, so they go first): how many channels each group keeps at ``S`` ("down") and
     at ``S - d_t`` ("up"), by :func:`prunecli.allocate.prune_by_ranking` on the channel count
     (``method.sparsity``) or the cost model;
  2. *prune* by column subset selection: ``X`` stacks the group's producers' (input-masked)
     weights so that each output channel is one column, shape ``(sum C_in*k*k, C)``; among the
     active columns, the ``down`` ones with the largest leverage scores ``||V_{:r}[j]||^2``
     (``r`` = down, ``V`` the right singular vectors of ``X``) stay. When the active columns are
     linearly dependent (``C_in*k^2 < C``, rank-deficient) the L1 norm of the columns decides;
  3. *regrow* ``up - down`` channels sampled without replacement from the rest, with
     probabilities ``softmax(||w_j - P w_j|| / regrow_temperature)`` (P projects onto the span of
     the kept columns; ``regrow_sampling=proportional``: ``||w_j - P w_j||`` normalised to sum
     1; ``uniform``). A regrown channel gets back the producer rows, biases and follower entries
     (BN weight, bias, running mean/var, depthwise filter) it had when it was last active: the
     snapshot taken at the update that pruned it (for a channel pruned at the previous update,
     that update's snapshot). Its optimizer state starts from zero.

  The last update, at T_max, has ``d = 0``: the masks freeze at the "down" allocation (the
  target itself, at or just under it in the chosen cost) and training goes on.
- Masks are hard (input channels of every consumer); in addition, after every optimizer step the
  producers' output rows and the followers' weights/biases of pruned channels are zeroed, as the
  paper does. Running statistics are not zeroed (a zero-scale BN outputs zero anyway) but they
  are part of the snapshot. Groups without a norm have no BN scale to rank: they stay whole.

Sampling uses a ``torch.Generator`` seeded from the run's ``seed``; its state, the update count
and the snapshot (only the pruned channels' rows, on the host) are in the checkpoint, so a
resumed run is the same run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from prunecli.cost.channels import ChannelCountCost
from prunecli.engine.events import HookContext
from prunecli.errors import ConfigError
from prunecli.importance import bn_scale, norm_slices
from prunecli.methods.base import PruningMethod, cfg_get
from prunecli.methods.chex_select import (
    SAMPLINGS,
    css_select,
    exploration_delta,
    projection_residuals,
    ranked_counts,
    regrow_probabilities,
    uniform_fraction_counts,
)
from prunecli.methods.chex_slots import Slot, agree_on_keep, group_slots, zero_optimizer_state
from prunecli.methods.schedule import span_steps
from prunecli.structure.keep import _weight

log = logging.getLogger("prunecli")

class CHEX(PruningMethod):
    needs_budget = False  # method.sparsity alone is a target

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.started = False  # the uniform L1 start was done
        self.frozen = False  # the final update was done
        self.updates = 0
        self.regrown: list[int] = []  # channels regrown at each update
        self.snapshot: dict[int, dict[str, Any]] = {}  # group -> index, rows (pruned channels)
        self.generator = torch.Generator()
        self._zero_targets: list[tuple[torch.Tensor, int, torch.Tensor]] = []

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: HookContext) -> None:
        c = self.cfg
        sparsity = cfg_get(c, "sparsity")
        self.sparsity = None if sparsity is None else float(sparsity)
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"method.sparsity={self.sparsity} must be in [0, 1): the fraction "
                              "of channels to remove")
        self.channels_target = None if self.sparsity is None else 1.0 - self.sparsity
        self.d0 = float(cfg_get(c, "d0", 0.3))
        if not 0.0 <= self.d0 < 1.0:
            raise ConfigError(f"method.d0={self.d0} must be in [0, 1)")
        every, t_max = float(cfg_get(c, "update_every", 2.0)), float(cfg_get(c, "t_max", 0.72))
        if every <= 0 or t_max < 0:
            raise ConfigError("method.update_every must be > 0 and method.t_max >= 0 (below 1: "
                              "fractions of training, from 1 on: epochs)")
        self.sampling = str(cfg_get(c, "regrow_sampling", "softmax"))
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"method.regrow_sampling={self.sampling} is unknown; use one of "
                              f"{', '.join(SAMPLINGS)}")
        self.temperature = float(cfg_get(c, "regrow_temperature", 1.0))
        if self.temperature <= 0:
            raise ConfigError("method.regrow_temperature must be > 0")
        super().setup(ctx)
        if self.sparsity is not None and self.ratio > 0:
            raise ConfigError("set either method.sparsity (fraction of channels) or cost.ratio "
                              "(fraction of the cost), not both")
        if self.sparsity is None and self.ratio == 0:
            raise ConfigError(f"method=chex needs a target: method.sparsity (fraction of "
                              f"channels to remove, the paper's S) or cost.ratio (fraction of "
                              f"the dense {ctx.config.cost.name} to remove)")
        total = ctx.epochs * ctx.steps_per_epoch
        self.every = max(1, span_steps(every, ctx.epochs, ctx.steps_per_epoch))
        self.t_max = span_steps(t_max, ctx.epochs, ctx.steps_per_epoch)
        if self.t_max > total:
            raise ConfigError(f"method.t_max={t_max:g} is step {self.t_max} but the run has "
                              f"{total} optimizer steps; lower it (below 1: a fraction of "
                              "training)")
        self.slices = norm_slices(ctx.net, self.structure)
        if not self.slices:
            raise ConfigError(f"{ctx.config.model.name} has no BN after a prunable layer: CHEX "
                              "allocates channels by BN scales")
        self.groups = sorted(self.slices)  # a unit group (grouped convs) regrows whole units
        whole = [g.key for g in self.structure.prunable_groups if g.id not in self.slices]
        if whole:
            log.warning("chex: %d group(s) without a norm stay whole: %s", len(whole),
                        ", ".join(whole[:5]))
        if self.sparsity is not None:
            self.alloc_cost: Any = ChannelCountCost(self.structure, self.groups)
            self.final = self.sparsity
        else:
            self.alloc_cost, self.final = self.cost_model, self.ratio
        self.model = ctx.net
        self.slots = {g: group_slots(self.structure, ctx.net, g) for g in self.groups}
        self.generator.manual_seed(_seed(ctx.config))

    def _tensor(self, slot: Slot) -> torch.Tensor:
        module = self._named[slot.module] if slot.module else self.model
        return _weight(module) if slot.attr == "weight" else getattr(module, slot.attr)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, ctx: HookContext) -> None:
        super().on_train_start(ctx)
        self.model = ctx.net  # after a SyncBatchNorm conversion
        self._named = dict(self.model.named_modules())
        if not self.started:
            self.start(ctx)
        else:
            self._refresh_zero_targets()
        log.info("chex: %s, d0 %.2f, update every %d steps until step %d", self._target_text(),
                 self.d0, self.every, self.t_max)

    def after_optimizer_step(self, ctx: HookContext) -> None:
        if not self.started:
            return
        self.zero_pruned()
        if not self.frozen and (ctx.step >= self.t_max or ctx.step % self.every == 0):
            self.update(ctx)

    def on_train_end(self, ctx: HookContext) -> dict[str, Any]:
        if self.started and not self.frozen and ctx.step >= ctx.epochs * ctx.steps_per_epoch:
            self.update(ctx, last=True)  # defensive: the final update was missed
        summary = super().on_train_end(ctx)
        unit = {g: self.structure.groups[g].unit for g in self.groups}  # channels a unit
        kept = sum(int(m.sum()) * unit[g] for g, m in self.active().items() if g in self.slices)
        total = sum(self.structure.groups[g].size * unit[g] for g in self.groups)
        summary.update({
            "chex_updates": self.updates,
            "channels_regrown": int(sum(self.regrown)),
            "regrown_per_update": list(self.regrown),
            "chex_sparsity_target": self.sparsity,
            "channel_sparsity": round(1.0 - kept / total, 6),
        })
        return summary

    # ------------------------------------------------------------------ the method
    def start(self, ctx: HookContext) -> None:
        """Uniform pruning by filter L1 norm to ``S - d0``."""
        removed = max(0.0, self.final - exploration_delta(0, self.t_max, self.d0))
        counts = self.uniform_counts(removed)
        before = self.active()
        keep = {}
        for g in self.groups:
            l1 = self.matrix(g, before).abs().sum(0).numpy()
            keep[g] = np.sort(np.argsort(-l1, kind="stable")[: counts[g]])
        self.started = True
        self.frozen = self.t_max == 0
        self._change(ctx, agree_on_keep(keep, self._sizes(), self.device),
                     f"chex start (uniform L1, {self._text(removed)})")

    def update(self, ctx: HookContext, last: bool | None = None) -> None:
        """One exploration step: allocate, prune by CSS, regrow (see the module docstring)."""
        last = ctx.step >= self.t_max if last is None else last
        d = 0.0 if last else exploration_delta(ctx.step, self.t_max, self.d0)
        scores = self.score_arrays(bn_scale(self.slices))
        down = self.allocate(self.final, scores)
        up = down if last else {g: max(u, down[g]) for g, u in
                                self.allocate(max(0.0, self.final - d), scores).items()}
        before = self.active()
        keep = {}
        for g in self.groups:
            x = self.matrix(g, before)
            act = np.flatnonzero(before[g])
            kept = act[css_select(x[:, torch.as_tensor(act)], min(down[g], len(act)))]
            extra = up[g] - len(kept)
            if extra > 0:
                cand = np.setdiff1d(np.arange(len(before[g])), kept)
                p = regrow_probabilities(projection_residuals(x, kept, cand), self.sampling,
                                         self.temperature)
                pick = torch.multinomial(p, extra, replacement=False, generator=self.generator)
                kept = np.union1d(kept, cand[pick.numpy()])
            keep[g] = kept
        self.frozen = last
        self.updates += 1
        phase = "final" if last else f"{self.updates}"
        note = f"chex update {phase} (d_t {d:.4f}, up {self._text(self.final - d)})"
        regrown = self._change(ctx, agree_on_keep(keep, self._sizes(), self.device), note)
        self.regrown.append(regrown)
        self.history[-1].update({"delta": round(d, 6), "regrown": regrown})
        if last:
            log.info("chex: masks frozen at step %d; %d channels regrown over %d updates",
                     ctx.step, sum(self.regrown), self.updates)

    def allocate(self, removed: float, scores: dict[int, np.ndarray]) -> dict[int, int]:
        """Channels per group at removal ratio ``removed``, from one global |gamma| ranking."""
        sizes = self._sizes()
        counts, reached = ranked_counts(self.alloc_cost, scores, removed, sizes,
                                        self.floors, self.droppable)
        if not reached:
            log.warning("chex: %s is out of reach with %s per group",
                        self._text(removed), self.floor_text())
        return counts

    def uniform_counts(self, removed: float) -> dict[int, int]:
        """The same kept fraction in every group (CHEX's start), at ``removed`` or under it."""
        sizes = self._sizes()
        counts, reached = uniform_fraction_counts(self.alloc_cost, removed, sizes,
                                                  self.floors)
        if not reached:
            log.warning("chex: the start at %s is out of reach with %s",
                        self._text(removed), self.floor_text())
        return counts

    @torch.no_grad()
    def matrix(self, gid: int, active: dict[int, np.ndarray]) -> torch.Tensor:
        """``X`` of a group (host, float64): the producers' output filters, input-masked, one
        column per channel; a pruned channel's column holds its last active weights."""
        size = self.structure.groups[gid].size
        parts = []
        for k, slot in enumerate(self.slots[gid]):
            if not slot.producer:
                continue
            rows = self._last_rows(gid, k, np.arange(size), active).double()
            mask = self.masker.masks.get(slot.module)
            if mask is not None:  # on the input axis: after the channel (and unit) axes
                m = mask.mask.detach().double().cpu()
                lead = 2 if slot.unit > 1 else 1
                rows = rows * m.view((1,) * lead + (-1,) + (1,) * (rows.ndim - lead - 1))
            parts.append(rows.reshape(size, -1))
        return torch.cat(parts, 1).T.contiguous()

    # ------------------------------------------------------------------ rows and snapshots
    def _current_rows(self, slot: Slot, channels: np.ndarray) -> torch.Tensor:
        t = self._tensor(slot).detach()
        idx = torch.as_tensor(slot.index(channels), dtype=torch.int64, device=t.device)
        rows = t.index_select(slot.dim, idx).movedim(slot.dim, 0).cpu()
        return rows.reshape(len(channels), slot.unit, *rows.shape[1:]) if slot.unit > 1 \
            else rows  # a channel's rows together (a unit's entries)

    def _last_rows(self, gid: int, k: int, channels: np.ndarray,
                   active: dict[int, np.ndarray]) -> torch.Tensor:
        """Rows of slot ``k`` for ``channels``: the current ones for active channels, the
        snapshot for pruned ones (their stored values when they were never snapshot)."""
        rows = self._current_rows(self.slots[gid][k], channels)
        snap = self.snapshot.get(gid)
        stale = ~active[gid][channels]
        if snap is None or not stale.any() or len(snap["index"]) == 0:
            return rows
        index = snap["index"].numpy()
        pos = np.searchsorted(index, channels).clip(0, len(index) - 1)
        found = stale & (index[pos] == channels)
        if found.any():
            rows[torch.as_tensor(found)] = snap["rows"][k][torch.as_tensor(pos[found])].to(
                rows.dtype)
        return rows

    @torch.no_grad()
    def _change(self, ctx: HookContext, keep: dict[int, np.ndarray], note: str) -> int:
        """Set the masks to ``keep``: snapshot the channels that go, restore the ones that come
        back, zero the pruned ones; returns how many came back."""
        before = self.active()
        snapshot, regrown = {}, 0
        for g in self.groups:
            after = np.zeros(len(before[g]), dtype=bool)
            after[np.asarray(keep[g], dtype=np.int64)] = True
            pruned = np.flatnonzero(~after)
            back = np.flatnonzero(after & ~before[g])
            gone = np.flatnonzero(before[g] & ~after)
            regrown += len(back) * self.structure.groups[g].unit  # in channels
            snapshot[g] = {"index": torch.as_tensor(pruned, dtype=torch.int64),
                           "rows": [self._last_rows(g, k, pruned, before)
                                    for k in range(len(self.slots[g]))]}
            for k, slot in enumerate(self.slots[g]):
                t = self._tensor(slot)
                if len(back):
                    rows = self._last_rows(g, k, back, before)
                    if slot.unit > 1:
                        rows = rows.flatten(0, 1)
                    idx = torch.as_tensor(slot.index(back), device=t.device)
                    t.index_copy_(slot.dim, idx, rows.movedim(0, slot.dim).to(t.device, t.dtype))
                if slot.zero and len(gone):
                    t.index_fill_(slot.dim, torch.as_tensor(slot.index(gone), device=t.device),
                                  0)
                if slot.zero and isinstance(t, nn.Parameter):
                    zero_optimizer_state(ctx.optimizer, t, slot.dim,
                                         slot.index(np.concatenate([back, gone])))
        self.snapshot = snapshot
        self.apply(ctx, keep, note=note)
        self._refresh_zero_targets()
        self.zero_pruned()
        return regrown

    def _refresh_zero_targets(self) -> None:
        targets = []
        for g, m in self.active().items():
            if g not in self.slots or m.all():
                continue
            pruned = np.flatnonzero(~m)
            for slot in self.slots[g]:
                if slot.zero:
                    t = self._tensor(slot)
                    targets.append((t, slot.dim, torch.as_tensor(slot.index(pruned),
                                                                 device=t.device)))
        self._zero_targets = targets

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """The paper's mask on weights: pruned channels' filters and norm entries are zero."""
        for t, dim, idx in self._zero_targets:
            t.index_fill_(dim, idx, 0)

    def _sizes(self) -> dict[int, int]:
        return {g: self.structure.groups[g].size for g in self.groups}

    def _text(self, removed: float) -> str:
        if self.sparsity is not None:
            return f"channel sparsity {max(0.0, removed):.4f}"
        return f"{self.cost_model.name} ratio {max(0.0, removed):.4f}"

    def _target_text(self) -> str:
        return f"target {self._text(self.final)}"

    # ------------------------------------------------------------------ state
    def masks_final(self) -> bool:
        return bool(self.frozen)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "started": self.started, "frozen": self.frozen,
                "updates": self.updates, "regrown": list(self.regrown),
                "generator": self.generator.get_state(),
                "snapshot": {int(g): {"index": s["index"], "rows": list(s["rows"]),
                                      "keys": [slot.key for slot in self.slots[g]]}
                             for g, s in self.snapshot.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.started = bool(state.get("started", False))
        self.frozen = bool(state.get("frozen", False))
        self.updates = int(state.get("updates", 0))
        self.regrown = [int(r) for r in state.get("regrown", [])]
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"].cpu())
        self.snapshot = {}
        for g, s in state.get("snapshot", {}).items():
            g = int(g)
            if g not in self.slots or s.get("keys") != [slot.key for slot in self.slots[g]]:
                log.warning("chex: the checkpoint's snapshot of group %d does not match this "
                            "model; its pruned channels regrow with their stored values", g)
                continue
            self.snapshot[g] = {"index": s["index"].cpu(), "rows": [r.cpu() for r in s["rows"]]}


def _seed(config: Any) -> int:
    try:
        return int(config.get("seed", 0) or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
