"""What every pruning method shares: the channel structure, masks, the cost model and budget,
the record of pruning events, and the end of the run (slim, check, save, report).

A method subclasses :class:`PruningMethod`, scores channels with :mod:`prunecli.importance`,
picks kept channels with :mod:`prunecli.allocate` and calls :meth:`PruningMethod.apply`; the
training loop never knows which method runs.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from prunecli.cost import build_cost_model, count_macs, count_params
from prunecli.cost.cascade import DropCascade
from prunecli.engine.events import HookContext, TrainingHooks
from prunecli.errors import ConfigError, PrunecliError
from prunecli.models.detection import core_of
from prunecli.structure import ChannelMasker, ChannelStructure, save_slim, slim, trace_structure
from prunecli.structure.masks import strip_all_masks
from prunecli.structure.slim import SliceLog, max_relative_difference

log = logging.getLogger("prunecli")

SLIM_FILE = "slim.pt"


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """A method hyperparameter from a DictConfig, a dataclass or a dict."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


class PruningMethod(TrainingHooks):
    """Base of the pruning methods. Subclasses set ``soft_masks`` and override the hooks they
    need, calling ``super()`` for ``setup``, ``on_train_start``, ``on_epoch_end``,
    ``on_train_end``, ``state_dict`` and ``load_state_dict``."""

    soft_masks = False  # straight-through masks (SMCP) instead of hard ones
    needs_budget = True  # the method cannot run without cost.ratio > 0
    # the fraction of prunable channels to keep when the budget is a channel count (CHEX's
    # method.sparsity, slimming's method.channel_ratio) instead of cost.ratio
    channels_target: float | None = None

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.history: list[dict[str, Any]] = []  # one entry per pruning event
        # the task's primary metric (ctx.metric: top1, map, ...) of the loaded weights before
        # training, and the last value before the first pruning event
        self.dense_metric: float | None = None
        self.metric_before_pruning: float | None = None
        self.metric = "top1"
        self.slimmed_keep: dict[int, torch.Tensor] | None = None  # set once slimmed in training
        self.slim_diff: float | None = None
        self.slimmed_at: int | None = None
        self.final_model: nn.Module | None = None  # the slimmed model, set by on_train_end
        self.structure: ChannelStructure
        self.masker: ChannelMasker
        self.cost_model: Any

    # ------------------------------------------------------------------ setup
    def setup(self, ctx: HookContext) -> None:
        run = ctx.config
        self.ratio = float(run.cost.ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"cost.ratio={self.ratio} must be in [0, 1): the fraction of the "
                              f"dense {run.cost.name} to remove")
        if self.needs_budget and self.ratio == 0.0:
            raise ConfigError(f"method={self.cfg.name} needs a budget: set cost.ratio, the "
                              f"fraction of the dense {run.cost.name} to remove (e.g. "
                              "cost.ratio=0.5)")
        # a detector is pruned in its core (backbone, neck, heads): anchors, box coding and
        # post-processing read only the head outputs, whose channels are never pruned
        net, x = ctx.net, ctx.net_input()
        self.structure = trace_structure(net, x,
                                         ignore=list(cfg_get(self.cfg, "ignore", []) or []))
        if not self.structure.prunable_groups:
            raise PrunecliError(f"{run.model.name} has no prunable channel group; see "
                                f"`prunecli inspect model={run.model.name}` for the reasons")
        self.cost_model = build_cost_model(
            run.cost.name, net, self.structure, x,
            batch_size=run.cost.batch_size, table=run.cost.table,
            allow_mismatch=run.cost.allow_mismatch)
        self.target_cost = (1.0 - self.ratio) * self.cost_model.dense
        self.masker = ChannelMasker(net, self.structure, soft=self.soft_masks)
        self.device = ctx.example_inputs.device
        self.min_channels = int(cfg_get(self.cfg, "min_channels", 1))
        self.max_prune_per_group = float(cfg_get(self.cfg, "max_prune_per_group", 1.0))
        if not 0.0 < self.max_prune_per_group <= 1.0:
            raise ConfigError(f"method.max_prune_per_group={self.max_prune_per_group} must be in "
                              "(0, 1]: the largest fraction of one group's channels to remove "
                              "(1 = no cap)")
        # layer drop: groups the graph lets go whole (a residual branch, a DenseNet layer, an SE
        # bottleneck); the allocators may then keep none of their channels
        self.droppable: frozenset[int] = frozenset(
            g.id for g in self.structure.droppable_groups) if cfg_get(
            self.cfg, "layer_drop", False) else frozenset()
        if self.droppable:
            self.cost_model = DropCascade(self.cost_model, self.structure, self.droppable)
        if self.ratio > 0:
            self.check_budget_reachable(run.cost.name)

    def masks_final(self) -> bool:
        """True once the masks will not change again: the rest of the run fine-tunes, and the
        trainer may slim the model for it (``method.slim_when_final``)."""
        return False

    def mark_slimmed(self, keep: dict[int, torch.Tensor], diff: float | None) -> None:
        """The trainer replaced the masked model by its slimmed version (``keep``); from now on
        only ``on_epoch_end``, ``on_train_end`` and the state are called."""
        self.slimmed_keep = keep
        self.slim_diff = diff
        if self.slimmed_at is None:
            self.slimmed_at = int(self.history[-1]["step"]) if self.history else 0

    def strip_extras(self, model: nn.Module) -> None:
        """Remove what the method added to (a copy of) the model before it is slimmed."""

    def on_train_start(self, ctx: HookContext) -> None:
        self.masker.sync_from_buffers()  # a resumed run's masks came with the weights
        self.metric = ctx.metric
        mcfg = ctx.config.model
        if ctx.step == 0 and not self.history and (mcfg.weights or mcfg.pretrained) \
                and ctx.evaluate is not None:
            self.dense_metric = ctx.evaluate(ctx.model).get(self.metric)
            log.info("dense model before pruning: %s %.2f", self.metric, self.dense_metric)

    def on_epoch_end(self, ctx: HookContext, metrics: dict[str, float]) -> None:
        key = f"val_{ctx.metric}"
        if not self.history and key in metrics:  # the last value before pruning
            self.metric_before_pruning = metrics[key]

    # ------------------------------------------------------------------ state
    @property
    def floors(self) -> dict[int, int]:
        """Channels every prunable group keeps at least (see :meth:`floor`), for the
        allocators."""
        return {g.id: self.floor(g.id) for g in self.structure.prunable_groups}

    def floor_text(self) -> str:
        """The settings behind :attr:`floors`, for a warning that a budget is out of reach."""
        cap = (f" and method.max_prune_per_group={self.max_prune_per_group:g}"
               if self.max_prune_per_group < 1.0 else "")
        return f"method.min_channels={self.min_channels}{cap}"

    def check_budget_reachable(self, cost_name: str) -> None:
        """Before training, when every prunable group at its floor still costs more than the
        budget: with ``max_prune_per_group``, fail and name a cap that fits; otherwise warn that
        the run will prune to that floor and miss the target, naming the largest ``cost.ratio``
        the model can reach (a latency table's time outside the prunable layers, the layers
        nothing can be pruned from, and ``min_channels`` set the floor). A warning, not an
        error: one unreachable point of a sweep over budgets should not stop the others."""
        def least_cost(cap: float) -> float:
            counts = self.least_counts(cap)
            return float(self.cost_model.cost(self.cost_model.counts_vector(counts)))

        cap, dense = self.max_prune_per_group, self.cost_model.dense
        least = least_cost(cap)
        if least <= self.target_cost * (1 + 1e-9):
            return
        allowed = f"the {100 * (1 - self.ratio):.1f}% cost.ratio={self.ratio:g} allows"
        if cap < 1.0 and least_cost(1.0) <= self.target_cost * (1 + 1e-9):
            fits = next((c for c in np.arange(cap + 0.05, 1.0, 0.05).round(2)
                         if least_cost(float(c)) <= self.target_cost), 1.0)
            raise ConfigError(
                f"method.max_prune_per_group={cap:g} keeps at least {100 * least / dense:.1f}% "
                f"of the dense {cost_name}, more than {allowed}: raise it to {fits:g} or more, "
                "or lower cost.ratio")
        floor = least_cost(1.0)
        reachable = math.floor(100 * (1 - floor / dense)) / 100
        log.warning(
            "%s: cost.ratio=%g is out of reach: with every prunable group at its floor (%s) this "
            "model still costs %.1f%% of its dense %s, more than %s; the run prunes to that floor "
            "and misses the target%s", self.cfg.name, self.ratio, self.floor_text(),
            100 * floor / dense, cost_name, allowed,
            f" (cost.ratio={reachable:g} or lower can be met)" if reachable > 0 else "")

    def least_counts(self, cap: float) -> dict[int, int]:
        """The narrowest widths a per-group cap ``cap`` allows: every group at its floor."""
        return {g.id: self.floor(g.id, cap) for g in self.structure.prunable_groups}

    def floor(self, group: int, cap: float | None = None) -> int:
        """Channels ``group`` keeps at least: ``min_channels``, raised to keep all but
        ``max_prune_per_group`` (or ``cap``) of its channels, or 0 where the group may be
        dropped."""
        size = self.structure.groups[group].size
        cap = self.max_prune_per_group if cap is None else cap
        least = max(self.min_channels, math.ceil((1.0 - cap) * size - 1e-9))
        return 0 if group in self.droppable else min(least, size)

    def active(self) -> dict[int, np.ndarray]:
        """Boolean masks (True = present) of every prunable group."""
        return {g: m.numpy() for g, m in self.masker.channel_masks().items()}

    def counts(self) -> np.ndarray:
        x = self.cost_model.full.copy()
        for g, m in self.masker.channel_masks().items():
            x[g] = int(m.sum())
        return x

    def pruned_keep(self) -> dict[int, torch.Tensor]:
        """Kept channels of every group that lost some: what slimming needs."""
        return {g: idx for g, idx in self.masker.keep().items()
                if len(idx) < self.structure.groups[g].size}

    def kept_cost_ratio(self) -> float:
        """The current fraction of the dense cost."""
        return self.cost_model.ratio(self.counts())

    def apply(self, ctx: HookContext, keep: dict[int, Any], note: str = "") -> None:
        """Set the masks to ``keep`` (kept channel indices per group; groups not listed keep
        their current masks) and record the event."""
        keep = {g: torch.as_tensor(np.asarray(k), dtype=torch.int64) for g, k in keep.items()}
        if self.droppable:
            keep.update(self._cascade(keep))
        self.masker.set_keep(keep)
        counts = self.counts()
        kept = self.structure.kept_channels(counts)
        ratio = self.cost_model.ratio(counts)
        event = {"step": int(ctx.step), "epoch": int(ctx.epoch), "cost_kept": round(ratio, 6),
                 "channels_kept": kept}
        self.history.append(event)
        ctx.record(kind="prune", **event)
        name = self.cost_model.name
        target = f"target {100 * (1 - self.ratio):.1f}%" if self.ratio > 0 else f"no {name} budget"
        log.info("%sstep %d: %d/%d prunable channels kept, %s at %.1f%% of dense (%s)",
                 f"{note}: " if note else "", ctx.step, kept, self.structure.prunable_channels(),
                 name, 100 * ratio, target)

    def _cascade(self, keep: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Empty keep-sets for the groups a drop leaves carrying only constants (what
        :class:`DropCascade` already counted as gone)."""
        present = {g: int(m.sum()) for g, m in self.masker.channel_masks().items()}
        present.update({g: len(k) for g, k in keep.items()})
        empty = {g for g, n in present.items() if n == 0}
        extra = self.structure.constant_groups(empty) & self.droppable
        if extra:
            log.info("layer drop: %s carry only constants now and go too",
                     ", ".join(self.structure.groups[g].key for g in sorted(extra)))
        return {g: torch.zeros(0, dtype=torch.int64) for g in extra}

    def score_arrays(self, scores: dict[int, torch.Tensor]) -> dict[int, np.ndarray]:
        """Scores to numpy on the host, averaged over processes (they already agree when they
        come from all-reduced gradients; activation-based scores do not)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for s in scores.values():
                dist.all_reduce(s)
                s /= dist.get_world_size()
        return {g: s.detach().float().cpu().numpy().astype(np.float64)
                for g, s in scores.items()}

    def steps_of(self, ctx: HookContext, epochs: float) -> int:
        """A point of training given in epochs, as optimizer steps."""
        return int(round(float(epochs) * ctx.steps_per_epoch))

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "dense_metric": self.dense_metric,
                "metric_before_pruning": self.metric_before_pruning,
                "slimmed_at": self.slimmed_at, "slim_diff": self.slim_diff}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        # checkpoints before tasks existed named these after top-1
        self.dense_metric = state.get("dense_metric", state.get("dense_top1"))
        self.metric_before_pruning = state.get("metric_before_pruning",
                                               state.get("top1_before_pruning"))
        self.slimmed_at = state.get("slimmed_at")
        self.slim_diff = state.get("slim_diff")

    # ------------------------------------------------------------------ end of the run
    def on_train_end(self, ctx: HookContext) -> dict[str, Any]:
        keep = self.pruned_keep()
        counts = self.counts()
        summary: dict[str, Any] = {
            "cost": self.cost_model.name,
            # None: the run had no budget in this cost (CHEX's method.sparsity, slimming's
            # method.channel_ratio), not a target of 100%
            "cost_target": round(1.0 - self.ratio, 6) if self.ratio > 0 else None,
            "channels_target": self.channels_target,
            "cost_kept": round(self.cost_model.ratio(counts), 6),
            "cost_dense": self.cost_model.dense,
            "cost_pruned": self.cost_model.cost(counts),
            "channels_kept": self.structure.kept_channels(counts),
            "channels_prunable": self.structure.prunable_channels(),
            "groups_dropped": [self.structure.groups[g].key for g, idx in keep.items()
                               if len(idx) == 0],
            # every prunable group's width, in network order (the report's architecture plot)
            "widths": [{"group": g.key, "size": int(g.size * g.unit),
                        "kept": int(counts[g.id] * g.unit)}
                       for g in self.structure.prunable_groups],
            "prune_events": len(self.history),
            f"dense_{self.metric}": self.dense_metric,
            f"{self.metric}_before_pruning": self.metric_before_pruning,
        }
        x = ctx.net_input()
        if ctx.stopped_early:  # the resumed run checks, evaluates and saves the final model
            if self.slimmed_keep is None:  # what the masks keep so far, counted on the slim net
                small = self.slim_model(ctx.model, keep)
                summary["macs"] = count_macs(core_of(small), x)
                summary["params"] = count_params(core_of(small))
            return summary
        if self.slimmed_keep is not None:  # slimmed during training: the model is the slim one
            small, diff = ctx.model.eval(), self.slim_diff
            summary["slimmed_at_step"] = self.slimmed_at
        else:
            small = self.slim_model(ctx.model, keep)
            diff = self._check_equal(ctx.model, small, x)
        self.final_model = small  # the Pruner API hands this one out
        summary["macs"] = count_macs(core_of(small), x)
        summary["params"] = count_params(core_of(small))
        summary["slim_max_diff"] = diff
        self._check_cost(summary)
        if cfg_get(self.cfg, "eval_slim", True) and ctx.evaluate is not None:
            summary[f"slim_{self.metric}"] = ctx.evaluate(small).get(self.metric)
        if ctx.run_dir is not None and ctx.dist.is_main and cfg_get(self.cfg, "save_slim", True):
            path = Path(ctx.run_dir) / SLIM_FILE
            num_classes = getattr(small, "num_classes", None)
            if num_classes is None:  # a classifier: the width of its output
                with torch.no_grad():
                    num_classes = int(small.eval()(x).shape[1])
            save_slim(path, small, self.structure, keep, ctx.config.model, num_classes,
                      int(x.shape[1]), extra={"method": self.cfg.name, "epoch": ctx.epoch + 1,
                                              "cost": summary["cost"],
                                              "cost_kept": summary["cost_kept"],
                                              "data_config": _plain(ctx.config.data),
                                              "class_names": ctx.class_names})
            summary["slim_model"] = str(path.resolve())
        return summary

    def slim_model(self, model: nn.Module, keep: dict[int, torch.Tensor],
                   log: SliceLog | None = None) -> nn.Module:
        """A slimmed copy of the masked ``model`` (the model itself is left as it is)."""
        dense = copy.deepcopy(model)
        strip_all_masks(dense)
        self.strip_extras(dense)
        slim(dense, self.structure, keep, inplace=True, log=log)  # a detector: in its core
        return dense.eval()

    def _check_cost(self, summary: dict[str, Any]) -> None:
        """The cost model never runs the network; the slimmed one was counted. For MACs and
        params the two must agree: a gap means the budget was met on a wrong model."""
        counted = {"macs": summary["macs"], "params": summary["params"]}.get(summary["cost"])
        if counted is None or not summary.get("cost_pruned"):
            return
        if abs(counted - summary["cost_pruned"]) > 1e-3 * max(1.0, summary["cost_pruned"]):
            log.warning("the %s cost model predicted %.4g for the pruned network, counting its "
                        "slimmed version gives %.4g: the budget is not what it seems; please "
                        "report this model", summary["cost"], summary["cost_pruned"], counted)

    @torch.no_grad()
    def _check_equal(self, masked: nn.Module, small: nn.Module, x: torch.Tensor) -> float:
        was = masked.training
        masked.eval()
        inp = torch.randn((2, *x.shape[1:]), generator=torch.Generator().manual_seed(0)
                          ).to(x.device, x.dtype)
        diff = max_relative_difference(masked, small, inp)
        masked.train(was)
        if diff > 1e-3:
            raise PrunecliError(f"the slimmed model differs from the masked one by {diff:.2e}; "
                                "please report this model")
        return diff


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return cfg
