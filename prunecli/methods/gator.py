"""Gator: channel gating with a customisable cost (Passov, David and Netanyahu, arXiv 2205.15404).

Every channel of every prunable group gets a gate logit ``theta`` (initialised at
``logit(gate_init_prob)``). While gating, each forward pass draws, per sample and channel,
``g = 1[sigmoid((theta + l) / tau) > 0.5]`` with ``l ~ Logistic(0, 1)``; the value is the hard
0/1 gate, the gradient that of the sigmoid (straight-through). The gates multiply the *input*
channels of the group's consumers, exactly where prunecli's masks act, so a gate at 0 is a
removed channel. In eval mode the gate is deterministic (the original samples noise in eval
too). A channel whose ``theta`` falls below 0 is off for good: its gate stays 0 and, at the
next host sync (every ``sync_every`` steps), the hard masks record it.

Loss: ``criteria_weight * sum_h w_h * mean over the batch of sum_c g_hc``, where ``w_h`` is the
marginal cost of one channel of group ``h`` at the current kept counts divided by the dense cost
(Gator's ``static_total_cost``). It comes from the run's cost model (macs, params, memory or
latency): ``(cost(x) - cost(x with h halved)) / (channels removed)``. For MACs/params/memory that
is the exact per-channel cost, summed over both sides of every layer touching ``h`` (each layer
charged with the active channels on its other side, as in the paper); for latency it is the
paper's "time the net with that edge halved" multiplier. The weights are recomputed whenever
channels switch off. The gradient of group ``h``'s gates is multiplied by
``gradient_multiplier / w_h`` (Gator's gate learning rate ``lr * 0.2 / w_h``; with SGD, which
the paper uses: under AdamW the scale cancels), and the gates get no weight decay.

Budget: with ``cost.ratio == 0`` the paper's mode: ``criteria_weight`` as given, and the channels
with ``theta >= 0`` at the end of gating are kept. With ``cost.ratio > 0`` a multiplicative
controller adapts ``criteria_weight`` every sync so that the expected cost (gate probabilities
``sigmoid(theta)``) follows a goal falling linearly from its value when gating starts to the
budget over the first ``budget_ramp`` of gating (``lambda *= exp(budget_gain * (expected / goal
- 1))``, at most x2 or /2 a sync); gating ends as soon as the gated-on channels fit the budget, or
at ``gate_epochs``, and the masks are then cut to the budget exactly by ranking the channels on
``theta`` (switched-off channels first). Gating runs from ``start_epoch`` for ``gate_epochs``
(below 1 a fraction of training, from 1 on epochs); afterwards the gates are gone (the masks
hold the result) and the rest of the run fine-tunes.

The gate logits live in a module attached to the model (``model.prunecli_gates``) so that any
optimizer built from ``model.parameters()`` trains them and DDP all-reduces their gradients,
but they stay out of the model's ``state_dict``: checkpoints keep the plain (masked) model that
``prunecli slim``/``eval``/``export`` read, and the logits travel in the method's state instead.
The module leaves the model at the end of the run (before slimming). Outside gating, under DDP,
a zero term keeps the logits in the graph (DDP expects a gradient for every parameter).

Unlike the original: hyper-edges are found by tracing (any traceable CNN, not hand-written per
architecture); eval is deterministic; every group keeps its ``min_channels`` highest logits
(they are protected from switching off between syncs); gating on the consumer inputs instead
of on chosen (conv, side) pairs gives the same per-channel semantics, since a channel's gate
is shared by everything that reads it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from prunecli.allocate import prune_by_ranking
from prunecli.engine.events import HookContext
from prunecli.errors import ConfigError, PrunecliError
from prunecli.methods.base import PruningMethod, cfg_get
from prunecli.methods.gator_gates import ChannelGates, GatesOnModel, cost_weights
from prunecli.methods.schedule import span_steps

log = logging.getLogger("prunecli")

GATES_ATTR = "prunecli_gates"  # where the gates module sits on the model
_TRACE_MAX = 2000  # controller trace entries kept (thinned by half beyond this)


class Gator(GatesOnModel, PruningMethod):
    needs_budget = False  # cost.ratio=0: the paper's mode, criteria_weight as given

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.lam = float(cfg_get(cfg, "criteria_weight", 0.5))
        self.phase = "wait"  # wait -> gating -> done
        self.syncs = 0
        self.ended_at: int | None = None
        self.trace: list[list[float]] = []  # [step, lambda, expected cost, kept cost] per sync
        self.e0: float | None = None  # expected cost ratio when gating started
        self.handles: list[Any] = []
        self._gates: torch.Tensor | None = None  # this forward's gates, (N or 1, channels + 1)
        self._sample: torch.Tensor | None = None  # this training forward's gates, for the loss
        self._restored = False

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: HookContext) -> None:
        c = self.cfg
        p = float(cfg_get(c, "gate_init_prob", 0.995))
        if not 0.0 < p < 1.0:
            raise ConfigError(f"method.gate_init_prob={p} must be in (0, 1)")
        self.tau = float(cfg_get(c, "tau", 1.0))
        self.multiplier = float(cfg_get(c, "gradient_multiplier", 0.2))
        self.sync_every = int(cfg_get(c, "sync_every", 10))
        self.gain = float(cfg_get(c, "budget_gain", 2.0))
        self.ramp = float(cfg_get(c, "budget_ramp", 0.75))
        self.lam0 = float(cfg_get(c, "criteria_weight", 0.5))
        gate_epochs = float(cfg_get(c, "gate_epochs", 0.5))
        if self.tau <= 0 or self.multiplier <= 0 or self.lam0 < 0 or gate_epochs <= 0:
            raise ConfigError("method.tau, method.gradient_multiplier and method.gate_epochs must "
                              "be > 0 and method.criteria_weight >= 0")
        if self.sync_every < 1 or not 0.0 < self.ramp <= 1.0 or self.gain < 0:
            raise ConfigError("method.sync_every must be >= 1, method.budget_ramp in (0, 1] and "
                              "method.budget_gain >= 0")
        super().setup(ctx)
        if hasattr(ctx.model, GATES_ATTR):
            raise PrunecliError(f"the model already carries Gator gates ({GATES_ATTR}); build "
                                "one Gator per model")
        total = ctx.epochs * ctx.steps_per_epoch
        self.start = self.steps_of(ctx, cfg_get(c, "start_epoch", 0.0))
        span = span_steps(gate_epochs, ctx.epochs, ctx.steps_per_epoch)
        self.gate_end = self.start + max(1, span)
        if self.gate_end > total:
            log.warning("gator: gating ends at step %d but the run has %d optimizer steps; the "
                        "masks are settled at the end, without fine-tuning (lower "
                        "method.gate_epochs)",
                        self.gate_end, total)
        self.groups = [g.id for g in self.structure.prunable_groups]
        self.offsets: dict[int, int] = {}
        n = 0
        for g in self.structure.prunable_groups:
            self.offsets[g.id] = n
            n += g.size
        self.n_gates = n
        self.gates = ChannelGates(n, math.log(p / (1.0 - p))).to(self.device)
        ctx.model.add_module(GATES_ATTR, self.gates)
        self.layouts = self._consumer_layouts(ctx.net)
        self.w = np.ones(len(self.groups))
        self.distributed = bool(getattr(ctx.dist, "distributed", False))

    def param_groups(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The gates in a group of their own, without weight decay."""
        theta = self.gates.theta
        out = []
        for group in groups:
            params = [q for q in group["params"] if q is not theta]
            if params:
                out.append({**group, "params": params})
        out.append({"params": [theta], "weight_decay": 0.0, "name": "gator_gates"})
        return out

    # ------------------------------------------------------------------ training
    def on_train_start(self, ctx: HookContext) -> None:
        super().on_train_start(ctx)
        if not self._restored:  # start from the masks the model came with
            self.gates.active.copy_(self._flat(self.active()).to(self.gates.active))
        self._refresh_weights()
        if self.phase == "gating":  # resumed mid-gating: protection came with the state
            self.attach(ctx.net)
        elif self.phase == "wait" and ctx.step >= self.start:
            self._start_gating(ctx)
        opt = ctx.optimizer
        if opt is not None and not isinstance(opt, torch.optim.SGD):
            log.warning("gator: method.gradient_multiplier scales the gate gradients, which an "
                        "adaptive optimizer (%s) normalises away", type(opt).__name__)
        trainer = getattr(ctx.config, "trainer", None)
        if trainer is not None and getattr(trainer, "clip_grad_norm", None):
            log.warning("gator: trainer.clip_grad_norm also counts the gate gradients, scaled by "
                        "method.gradient_multiplier / w_h (often large)")
        log.info("gator: %d gates on %d groups, gating from step %d to %d, criteria weight %g, "
                 "%s", self.n_gates, len(self.groups), self.start, self.gate_end, self.lam,
                 f"budget {100 * (1 - self.ratio):.1f}% of the dense {self.cost_model.name}"
                 if self.ratio > 0 else "no budget (channels with theta >= 0 are kept)")

    def extra_loss(self, ctx: HookContext, outputs: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor | None:
        if self.phase != "gating" or self._sample is None:
            if self.distributed and self.phase != "gating" and self.gates.theta.requires_grad:
                return self.gates.theta.sum() * 0.0  # DDP expects a gradient for every parameter
            return None
        sample, self._sample = self._sample, None
        return self.lam * (sample @ self.wvec).mean()

    def before_optimizer_step(self, ctx: HookContext) -> None:
        grad = self.gates.theta.grad
        if self.phase == "gating" and grad is not None:
            grad.mul_(self.grad_scale)

    def after_optimizer_step(self, ctx: HookContext) -> None:
        if self.phase == "wait":
            if ctx.step >= self.start:
                self._start_gating(ctx)
                log.info("gator: gating starts at step %d", ctx.step)
            return
        if self.phase != "gating":
            return
        self.gates.update_active()
        final = ctx.step >= self.gate_end
        if final or ctx.step % self.sync_every == 0:
            self.sync(ctx, final=final)

    def _start_gating(self, ctx: HookContext) -> None:
        self.phase = "gating"
        self._update_protected()
        self.attach(ctx.net)
        if self.e0 is None:  # the controller's goal starts from here
            self.e0 = float(self._expected_ratio())

    # ------------------------------------------------------------------ host side
    def _flat(self, masks: dict[int, Any]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(np.asarray(masks[g]), dtype=torch.float32)
                          for g in self.groups])

    def _split(self, flat: np.ndarray) -> dict[int, np.ndarray]:
        return {g: flat[self.offsets[g]: self.offsets[g] + self.structure.groups[g].size]
                for g in self.groups}

    def _refresh_weights(self) -> None:
        """Cost weights at the current kept counts, and the per-channel vectors on the device."""
        self.w = cost_weights(self.cost_model, self.counts(), self.groups)
        sizes = [self.structure.groups[g].size for g in self.groups]
        per = torch.as_tensor(np.repeat(self.w, sizes), dtype=torch.float32, device=self.device)
        self.wvec = per
        self.grad_scale = self.multiplier / per

    def _update_protected(self) -> None:
        """Protect the ``min_channels`` highest logits among the active channels of each group."""
        theta = self._split(self.gates.theta.detach().float().cpu().numpy())
        active = self._split(self.gates.active.cpu().numpy() > 0.5)
        prot = {}
        for g in self.groups:
            p = np.zeros(len(theta[g]), dtype=bool)
            idx = np.flatnonzero(active[g])
            k = self.floor(g)
            if len(idx) >= 1:
                order = np.argsort(-theta[g][idx], kind="stable")
                p[idx[order[:k]]] = True
            prot[g] = p
        self.gates.protected.copy_(self._flat(prot).bool().to(self.device))

    def expected_counts(self) -> np.ndarray:
        """Kept counts if every active channel counted with its gate probability."""
        prob = torch.sigmoid(self.gates.theta.detach().float()) * self.gates.active
        prob = self._split(prob.cpu().numpy().astype(np.float64))
        x = self.cost_model.full.copy()
        for g in self.groups:
            x[g] = prob[g].sum()
        return x

    def _expected_ratio(self) -> float:
        x = self.expected_counts()
        try:
            return self.cost_model.ratio(x)
        except (PrunecliError, ValueError, IndexError):  # outside a latency grid: linearise
            now = self.counts()
            drop = sum(self.w[i] * (now[g] - x[g]) for i, g in enumerate(self.groups))
            return self.cost_model.ratio(now) - float(drop)

    def sync(self, ctx: HookContext, final: bool = False) -> None:
        """Bring the hard masks up to the gates; in budget mode run the controller and end
        gating (cut to the budget) once the gated-on channels fit it, or at ``final``."""
        self.syncs += 1
        theta = self._split(self.gates.theta.detach().double().cpu().numpy())
        dev = self._split(self.gates.active.cpu().numpy() > 0.5)
        prev = self.active()
        on = {}
        for g in self.groups:
            m = dev[g] & prev[g] & (theta[g] >= 0)  # protection only where it is needed
            k = self.floor(g)
            if m.sum() < k:  # the best channels stay: never a whole group (unless droppable)
                cand = np.flatnonzero(prev[g] & ~m)
                m[cand[np.argsort(-theta[g][cand], kind="stable")[: k - int(m.sum())]]] = True
            on[g] = m
        counts = self.cost_model.full.copy()
        for g in self.groups:
            counts[g] = on[g].sum()
        if self.ratio > 0:
            kept = self.cost_model.cost(counts)
            if final or kept <= self.target_cost:
                result = prune_by_ranking(self.cost_model, theta, self.target_cost, active=prev,
                                          min_channels=self.floors,
                                          droppable=self.droppable,
                                          priority={g: on[g].astype(np.float64)
                                                    for g in self.groups})
                if not result.reached:
                    log.warning("gator: the budget cannot be reached with %s per group",
                                self.floor_text())
                masks = {g: np.zeros(len(on[g]), dtype=bool) for g in self.groups}
                for g, idx in result.keep.items():
                    masks[g][idx] = True
                self._finish(ctx, masks, prev)
                return
            expected = self._expected_ratio()
            progress = (ctx.step - self.start) / max(1.0, self.ramp * (self.gate_end - self.start))
            start = self.e0 if self.e0 is not None else 1.0
            goal = start - min(1.0, progress) * (start - (1.0 - self.ratio))
            factor = min(2.0, max(0.5, math.exp(self.gain * (expected / goal - 1.0))))
            self.lam = min(self.lam0 * 1e4, max(self.lam0 * 1e-4, self.lam * factor))
            self._record(ctx.step, expected, self.cost_model.ratio(counts))
        elif final:
            self._finish(ctx, on, prev)
            return
        self._set_masks(ctx, on, prev, note="gator")
        self._update_protected()

    def _record(self, step: int, expected: float, kept: float) -> None:
        self.trace.append([float(step), float(self.lam), round(float(expected), 6),
                           round(float(kept), 6)])
        if len(self.trace) > _TRACE_MAX:
            self.trace = self.trace[::2]

    def _set_masks(self, ctx: HookContext, masks: dict[int, np.ndarray],
                   prev: dict[int, np.ndarray], note: str) -> None:
        changed = {g: np.flatnonzero(masks[g]) for g in self.groups
                   if not np.array_equal(masks[g], prev[g])}
        if changed:
            self.apply(ctx, changed, note=note)
            self._refresh_weights()
        self.gates.active.copy_(self._flat(masks).to(self.gates.active))

    def _finish(self, ctx: HookContext, masks: dict[int, np.ndarray],
                prev: dict[int, np.ndarray]) -> None:
        """End gating with ``masks`` as the final channels: the rest of the run fine-tunes."""
        self._set_masks(ctx, masks, prev, note="gator: gating ends")
        self.phase = "done"
        self.ended_at = int(ctx.step)
        self.detach()
        kept = self.counts()
        log.info("gator: gating ended at step %d, criteria weight %g, %d of %d prunable channels "
                 "off, %s at %.1f%% of dense", ctx.step, self.lam,
                 self.structure.prunable_channels() - self.structure.kept_channels(kept),
                 self.structure.prunable_channels(), self.cost_model.name,
                 100 * self.cost_model.ratio(kept))

    # ------------------------------------------------------------------ end, state
    def on_train_end(self, ctx: HookContext) -> dict[str, Any]:
        if self.phase != "done" and not ctx.stopped_early:
            log.warning("gator: training ended during gating; cutting %s now, without "
                        "fine-tuning (lower method.gate_epochs or train longer)",
                        "to the budget" if self.ratio > 0 else "the channels with theta < 0")
            self.gates.update_active()
            self.sync(ctx, final=True)
        self.detach()
        if getattr(ctx.model, GATES_ATTR, None) is self.gates:
            delattr(ctx.model, GATES_ATTR)
        summary = super().on_train_end(ctx)
        kept = int(summary["channels_kept"])
        summary.update({
            "gator_criteria_weight": self.lam,
            "gator_channels_off": self.structure.prunable_channels() - kept,
            "gator_gate_steps": self.gate_end - self.start,
            "gator_ended_at_step": self.ended_at,
            "gator_syncs": self.syncs,
            "gator_trace_len": len(self.trace),
            "gator_expected_cost_last": self.trace[-1][2] if self.trace else None,
        })
        return summary

    def strip_extras(self, model: nn.Module) -> None:
        if hasattr(model, GATES_ATTR):
            delattr(model, GATES_ATTR)

    def masks_final(self) -> bool:
        return bool(self.phase == "done")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "theta": self.gates.theta.detach().cpu().clone(),
                "active": self.gates.active.detach().cpu().clone(),
                "protected": self.gates.protected.detach().cpu().clone(),
                "lam": self.lam, "phase": self.phase, "syncs": self.syncs,
                "ended_at": self.ended_at, "trace": [list(t) for t in self.trace],
                "e0": self.e0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "theta" in state:
            with torch.no_grad():
                self.gates.theta.copy_(state["theta"].to(self.gates.theta))
                self.gates.active.copy_(state["active"].to(self.gates.active))
                self.gates.protected.copy_(state["protected"].to(self.gates.protected))
            self._restored = True
        self.lam = float(state.get("lam", self.lam))
        self.phase = str(state.get("phase", self.phase))
        self.syncs = int(state.get("syncs", 0))
        ended = state.get("ended_at")
        self.ended_at = None if ended is None else int(ended)
        self.trace = [list(t) for t in state.get("trace", [])]
        e0 = state.get("e0")
        self.e0 = None if e0 is None else float(e0)
