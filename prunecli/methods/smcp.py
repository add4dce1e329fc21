"""SMCP: Soft Masking for Cost-Constrained Channel Pruning (Humble et al., ECCV 2022).

Masks sit on the input channels of every consumer of a prunable group. With ``mask=soft`` (the
default) they are straight-through: the forward pass uses ``w * m`` while the gradient reaches
the stored weight unchanged, so masked channels keep learning and may come back at the next
re-solve (``mask=hard``: masked columns get no gradient from the loss).

Importance, per input channel of each group, always on the stored (unmasked) weight so masked
channels are still scored: per element ``|w|`` (``magnitude``), ``-w*g`` (``taylor_fo``) or
``-w*g + w^2*H/2`` (``taylor_so``), where ``g`` is this step's gradient (``grad_source=grad``) or
the optimizer's momentum buffer / Adam ``exp_avg`` (``grad_source=momentum``), and ``H`` is
Adam's ``exp_avg_sq`` when the optimizer keeps one, ``g^2`` otherwise. Elements are summed over
kernel positions and over the *active* output channels of each consumer (rows whose own channel
is masked do not count), then over every consumer of the group; the absolute value is taken
last. Scores are accumulated (``latest``, ``momentum`` ``m*past + (1-m)*new``, ``average``) and
the accumulator is reset after every re-solve.

Schedule (``T`` optimizer steps; lengths below 1 are fractions of training, from 1 on epochs):
``W`` = warmup steps, ramp ends at ``R = W + ramp`` steps, masks freeze at ``C = T - cooldown``.
With ``u = (step - W) / (R - W)`` the fraction of the dense cost removed is
``cost.ratio * f(u)``: ``f = 0`` before ``W``, ``f = 1`` from ``R`` on, and in between

- ``linear``: ``f(u) = u``
- ``power``: ``f(u) = 1 - (1 - u)^a`` (``a = ramp_power``; fast first, then slower)
- ``exponential``: the kept cost shrinks geometrically, ``kept = (1 - r)^u``, i.e.
  ``f(u) = (1 - (1 - r)^u) / r`` (equal relative cuts per step, like HALP).

Every ``f`` is exactly 1 at the end of the ramp, so the target is ``cost.ratio`` itself (the
original lands near 0.997 of it). Masks are re-solved every ``prune_every`` steps counted from
``W`` (unset: the paper's 80, or fewer so that the ramp gets at least 30 re-solves: a 160-step
fine-tune with 80 got one), at the end of the ramp and once more when the cool-down starts (at
the full ratio), after which they stay frozen: the multiple-choice knapsack of
:func:`prunecli.allocate.allocate_to_budget` keeps the top channels of each group under the
exact cost target, within 0.5% of it.

Pruned decay: ``pruned_decay * (1 - m) * w`` is added to the gradient of every masked weight, so
masked channels shrink slowly unless the loss wants them back. The run reports how many channels
came back (masked before a re-solve, kept after it): ``channels_returned`` and
``returns_per_resolve``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunecli.allocate import allocate_to_budget, allowed_counts
from prunecli.engine.events import HookContext
from prunecli.errors import ConfigError
from prunecli.importance import Accumulator
from prunecli.methods.base import PruningMethod, cfg_get
from prunecli.methods.schedule import span_steps
from prunecli.structure import ChannelMasker, ChannelStructure
from prunecli.structure.keep import _weight, add_channel_sums

log = logging.getLogger("prunecli")

MASKS = ("soft", "hard")
IMPORTANCES = ("magnitude", "taylor_fo", "taylor_so")
GRAD_SOURCES = ("grad", "momentum")
ACCUMULATORS = ("latest", "momentum", "average")
RAMPS = ("exponential", "linear", "power")
PAPER_PRUNE_EVERY = 80  # steps between re-solves in the paper (256 images a step)
MIN_RESOLVES = 30  # an unset prune_every re-solves at least this often over the ramp


def ramp_fraction(kind: str, u: float, ratio: float, power: float = 3.0) -> float:
    """Share ``f(u)`` of the final pruned fraction reached at ramp progress ``u`` in [0, 1]."""
    u = min(1.0, max(0.0, float(u)))
    if u >= 1.0:
        return 1.0
    if kind == "linear":
        return u
    if kind == "power":
        return 1.0 - (1.0 - u) ** power
    if kind == "exponential":
        if ratio <= 0.0:
            return u
        return (1.0 - (1.0 - ratio) ** u) / ratio
    raise ConfigError(f"method.ramp={kind} is unknown; use one of {', '.join(RAMPS)}")


@dataclass
class SMCPSchedule:
    """Where each phase starts, in optimizer steps, and the target at each step."""

    warmup: int  # W: nothing is pruned up to here
    ramp_end: int  # R: the full ratio from here on
    freeze: int  # C: last re-solve, masks frozen after it
    prune_every: int
    ratio: float  # cost.ratio
    kind: str = "exponential"
    power: float = 3.0

    def target(self, step: int) -> float:
        """Fraction of the dense cost to remove at ``step``."""
        if step >= self.ramp_end:
            return self.ratio
        if step <= self.warmup:
            return 0.0
        u = (step - self.warmup) / (self.ramp_end - self.warmup)
        return self.ratio * ramp_fraction(self.kind, u, self.ratio, self.power)

    def due(self, step: int) -> bool:
        """Whether the masks are re-solved right after optimizer step ``step`` (a re-solve
        during warm-up only resets the scores)."""
        return step >= 1 and ((step - self.warmup) % self.prune_every == 0
                              or step == self.ramp_end or step >= self.freeze)

    def phase(self, step: int) -> str:
        if step >= self.freeze:
            return "cooldown"
        if step <= self.warmup:
            return "warmup"
        return "ramp" if step < self.ramp_end else "hold"


class SMCPImportance:
    """Per-channel SMCP importance of every prunable group (see the module docstring)."""

    def __init__(self, model: nn.Module, structure: ChannelStructure, masker: ChannelMasker,
                 kind: str = "magnitude", grad_source: str = "grad") -> None:
        if kind not in IMPORTANCES:
            raise ConfigError(f"method.importance={kind} is unknown; use one of "
                              f"{', '.join(IMPORTANCES)}")
        if grad_source not in GRAD_SOURCES:
            raise ConfigError(f"method.grad_source={grad_source} is unknown; use one of "
                              f"{', '.join(GRAD_SOURCES)}")
        self.kind = kind
        self.grad_source = grad_source
        self.structure = structure
        self.masker = masker
        modules = dict(model.named_modules())
        wanted = {g.id for g in structure.prunable_groups}
        self.groups = sorted(wanted)
        self.device = next(model.parameters()).device
        # (module, segments of prunable groups it reads, its output's segments if any are)
        self.layers: list[tuple[nn.Module, list, tuple]] = []
        for name in structure.consumers_of_prunable():
            role = structure.roles[name]
            segs = [s for s in role.in_segments if s.group in wanted]
            outs = role.out_segments if any(s.group in wanted for s in role.out_segments) else ()
            if segs:
                self.layers.append((modules[name], segs, outs))
        self.refresh()

    def refresh(self) -> None:
        """Take the current channel masks (which output rows count) to the device."""
        self.out_masks = {g: m.to(self.device) for g, m in self.masker.channel_masks().items()}

    def _gradient(self, w: torch.Tensor, state: dict[str, Any]) -> torch.Tensor | None:
        if self.grad_source == "momentum":
            for key in ("momentum_buffer", "exp_avg"):
                if state.get(key) is not None:
                    return state[key]
        return w.grad

    @torch.no_grad()
    def elementwise(self, module: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor | None:
        """Importance of every element of ``module``'s stored weight (None: no gradient)."""
        w = _weight(module)
        if self.kind == "magnitude":
            return w.detach().float().abs()
        state = optimizer.state.get(w, {}) if optimizer is not None else {}
        g = self._gradient(w, state)
        if g is None:
            return None
        wf, gf = w.detach().float(), g.detach().float()
        out = -wf * gf
        if self.kind == "taylor_so":
            h = state.get("exp_avg_sq")
            h = gf * gf if h is None else h.detach().float()
            out = out + 0.5 * wf * wf * h
        return out

    @torch.no_grad()
    def __call__(self, optimizer: torch.optim.Optimizer | None = None
                 ) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for module, segs, outs in self.layers:
            e = self.elementwise(module, optimizer)
            if e is None:
                continue
            if outs:  # rows of masked output channels do not count
                rows = torch.cat([self.out_masks[s.group].repeat_interleave(s.spatial)
                                  if s.group in self.out_masks else
                                  torch.ones(s.length * s.spatial, dtype=torch.bool,
                                             device=self.device) for s in outs])
                e = e * rows.view((-1,) + (1,) * (e.ndim - 1)).to(e.dtype)
            add_channel_sums(out, e, segs)
        for g in self.groups:  # no gradient yet (e.g. a frozen consumer): zeros
            if g not in out:
                out[g] = torch.zeros(self.structure.groups[g].size, device=self.device)
        return {g: s.abs() for g, s in out.items()}  # absolute value last


class SMCP(PruningMethod):
    soft_masks = True  # method.mask=hard turns it off per run

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        mask = str(cfg_get(cfg, "mask", "soft"))
        if mask not in MASKS:
            raise ConfigError(f"method.mask={mask} is unknown; use one of {', '.join(MASKS)}")
        self.soft_masks = mask == "soft"
        self.resolves = 0  # re-solves at a non-zero target
        self.returns: list[int] = []  # channels that came back at each re-solve
        self.frozen = False
        self.current_ratio = 0.0

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: HookContext) -> None:
        c = self.cfg
        for key, allowed in (("accumulator", ACCUMULATORS), ("ramp", RAMPS),
                             ("importance", IMPORTANCES), ("grad_source", GRAD_SOURCES)):
            if cfg_get(c, key) not in allowed:
                raise ConfigError(f"method.{key}={cfg_get(c, key)} is unknown; use one of "
                                  f"{', '.join(allowed)}")
        if (c.prune_every is not None and c.prune_every < 1) or c.round_to < 1:
            raise ConfigError("method.prune_every and method.round_to must be >= 1")
        if not 0.0 <= c.channel_doublesided_weight <= 1.0:
            raise ConfigError("method.channel_doublesided_weight must be in [0, 1]")
        if c.pruned_decay < 0:
            raise ConfigError("method.pruned_decay must be >= 0")
        super().setup(ctx)
        self.schedule = self.make_schedule(ctx)
        self.importance = SMCPImportance(ctx.net, self.structure, self.masker, c.importance,
                                         c.grad_source)
        # magnitude and momentum-based scores are taken after the optimizer step (the buffers
        # then hold this step's gradient); scores from this step's gradient before it
        self.score_after_step = c.importance == "magnitude" or c.grad_source == "momentum"
        self.scores = Accumulator(c.accumulator, momentum=c.accumulator_momentum)
        modules = dict(ctx.net.named_modules())
        self.decayed = [(_weight(modules[name]), p) for name, p in self.masker.masks.items()]
        self._masked: list[tuple[torch.Tensor, Any]] = []

    def least_counts(self, cap: float) -> dict[int, int]:
        """As for every method, each floor raised to the next width ``round_to`` offers (a
        floor of 13 channels is 16 at ``round_to=8``)."""
        round_to = max(int(self.cfg.round_to), 1)  # setup rejects < 1 just after
        out = {}
        for gid, least in super().least_counts(cap).items():
            group = self.structure.groups[gid]
            step = round_to // math.gcd(round_to, group.unit)
            out[gid] = int(allowed_counts(group.size, least, step)[0])
        return out

    def make_schedule(self, ctx: HookContext) -> SMCPSchedule:
        c = self.cfg
        total = ctx.epochs * ctx.steps_per_epoch
        warmup = span_steps(c.warmup_epochs, ctx.epochs, ctx.steps_per_epoch)
        ramp_end = warmup + span_steps(c.ramp_epochs, ctx.epochs, ctx.steps_per_epoch)
        freeze = total - span_steps(c.cooldown_epochs, ctx.epochs, ctx.steps_per_epoch)
        if ramp_end > freeze:
            as_epochs = [v if v >= 1 else v * ctx.epochs
                         for v in (c.warmup_epochs, c.ramp_epochs, c.cooldown_epochs)]
            if sum(as_epochs) > ctx.epochs + 1e-6 or ramp_end - freeze > 2:
                raise ConfigError(
                    f"SMCP's warm-up + ramp + cool-down ({' + '.join(f'{e:g}' for e in as_epochs)}"
                    f" epochs) is longer than the run ({ctx.epochs} epochs); shorten "
                    "method.warmup_epochs / ramp_epochs / cooldown_epochs (values below 1 are "
                    "fractions of training)")
            ramp_end = freeze  # rounding to steps only
        if freeze < 1:
            raise ConfigError(f"SMCP would freeze the masks before the first step (cool-down of "
                              f"{total - freeze} of {total} steps); lower "
                              "method.cooldown_epochs")
        every = int(c.prune_every) if c.prune_every is not None else max(
            1, min(PAPER_PRUNE_EVERY, (ramp_end - warmup) // MIN_RESOLVES))
        return SMCPSchedule(warmup, ramp_end, freeze, every, self.ratio, c.ramp,
                            float(c.ramp_power))

    def on_train_start(self, ctx: HookContext) -> None:
        super().on_train_start(ctx)
        if self.cfg.grad_source == "momentum" and self.cfg.importance != "magnitude":
            opt = ctx.optimizer
            if isinstance(opt, torch.optim.SGD) and any(
                    not g.get("momentum") for g in opt.param_groups):
                raise ConfigError("method.grad_source=momentum needs an optimizer with momentum "
                                  "(optim.momentum > 0, or AdamW); use method.grad_source=grad")
        self._masks_changed()
        log.info("smcp: warm-up until step %d, ramp (%s) until step %d, masks frozen from step "
                 "%d of %d; re-solve every %d steps", self.schedule.warmup, self.cfg.ramp,
                 self.schedule.ramp_end, self.schedule.freeze,
                 ctx.epochs * ctx.steps_per_epoch, self.schedule.prune_every)

    # ------------------------------------------------------------------ steps
    def _wants_scores(self, step: int) -> bool:
        """Scores are taken every step, or only before a re-solve with ``latest``."""
        return self.cfg.accumulator != "latest" or self.schedule.due(step)

    def before_optimizer_step(self, ctx: HookContext) -> None:
        if self.frozen:
            return
        if not self.score_after_step and self._wants_scores(ctx.step + 1):
            self.scores.update(self.importance(ctx.optimizer))
        decay = float(self.cfg.pruned_decay)
        if decay:
            with torch.no_grad():
                for w, p in self._masked:
                    if w.grad is not None:
                        keep = p.mask.view(p.shape).to(w.dtype)
                        w.grad.add_(w.detach() * (1 - keep), alpha=decay)

    def after_optimizer_step(self, ctx: HookContext) -> None:
        if self.frozen:
            return
        step = ctx.step
        if self.score_after_step and self._wants_scores(step):
            self.scores.update(self.importance(ctx.optimizer))
        if self.schedule.due(step):
            self.resolve(ctx, last=step >= self.schedule.freeze)

    def resolve(self, ctx: HookContext, last: bool = False) -> None:
        """Re-solve the masks at this step's target (the full ratio when ``last``)."""
        ratio = self.ratio if last else self.schedule.target(ctx.step)
        self.frozen = last
        if ratio <= 0.0:
            self.scores.reset()  # warm-up: only the scores of the last window count
            return
        values = self.scores.value() or self.importance(ctx.optimizer)
        scores = self.score_arrays(values)
        self.scores.reset()
        before = self.active()
        # a dropped layer stays dropped: its masked weights keep learning, so a whole group
        # would look worth bringing back at the next re-solve and go again at the one after
        # (ResNet-20 at 30% MACs flipped between 232 and 368 channels, and lost 15 points)
        gone = {g: m for g, m in before.items() if g in self.droppable and not m.any()}
        result = allocate_to_budget(self.cost_model, scores, ratio,
                                    min_channels=self.floors, round_to=int(self.cfg.round_to),
                                    side_weight=float(self.cfg.channel_doublesided_weight),
                                    droppable=self.droppable, active=gone or None)
        if not result.feasible:
            log.warning("smcp: %.1f%% of the dense %s is out of reach with %s and "
                        "method.round_to=%d", 100 * (1 - ratio), self.cost_model.name,
                        self.floor_text(), self.cfg.round_to)
        returned = 0
        for g, idx in result.keep.items():
            now = np.zeros(len(before[g]), dtype=bool)
            now[np.asarray(idx, dtype=np.int64)] = True
            returned += int((now & ~before[g]).sum())
        self.current_ratio = ratio
        self.resolves += 1
        self.returns.append(returned)
        phase = "final" if last else self.schedule.phase(ctx.step)
        self.apply(ctx, result.keep, note=f"smcp {phase} re-solve, target ratio {ratio:.4f}, "
                                          f"{returned} channels back")
        self.history[-1].update({"target_ratio": round(ratio, 6), "returned": returned})
        if last:
            log.info("smcp: masks frozen at step %d; %d channels came back over %d re-solves",
                     ctx.step, sum(self.returns), self.resolves)

    def apply(self, ctx: HookContext, keep: dict[int, Any], note: str = "") -> None:
        super().apply(ctx, keep, note)
        self._masks_changed()

    def _masks_changed(self) -> None:
        self.importance.refresh()
        self._masked = [(w, p) for w, p in self.decayed if not bool(p.mask.all())]

    # ------------------------------------------------------------------ end, state
    def on_train_end(self, ctx: HookContext) -> dict[str, Any]:
        total = ctx.epochs * ctx.steps_per_epoch
        if not self.frozen and ctx.step >= total:  # defensive: the final re-solve was missed
            self.resolve(ctx, last=True)
        summary = super().on_train_end(ctx)
        summary.update({
            "smcp_resolves": self.resolves,
            "channels_returned": int(sum(self.returns)),
            "returns_per_resolve": list(self.returns),
            "returns_mean": round(float(np.mean(self.returns)), 3) if self.returns else 0.0,
            "smcp_final_ratio": round(self.current_ratio, 6),
        })
        return summary

    def masks_final(self) -> bool:
        return bool(self.frozen)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scores": self.scores.state_dict(),
                "resolves": self.resolves, "returns": list(self.returns),
                "frozen": self.frozen, "current_ratio": self.current_ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scores.load_state_dict(state.get("scores", {}), self.device)
        self.resolves = int(state.get("resolves", 0))
        self.returns = [int(r) for r in state.get("returns", [])]
        self.frozen = bool(state.get("frozen", False))
        self.current_ratio = float(state.get("current_ratio", 0.0))
