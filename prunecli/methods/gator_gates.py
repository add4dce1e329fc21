"""Gator's gates: the logits, their straight-through samples, and the hooks that multiply the
consumers' input channels by them (see :mod:`prunecli.methods.gator` for the method)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from prunecli.errors import PrunecliError


def logistic_noise(shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """Samples of the standard logistic distribution, ``log(u) - log(1 - u)``."""
    u = torch.rand(shape, device=device).clamp_(1e-6, 1.0 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def cost_weights(cost_model: Any, counts: np.ndarray, groups: list[int]) -> np.ndarray:
    """Gator's ``w_h`` of every group in ``groups``: the marginal cost of one of its channels
    at ``counts`` (secant over half the group's kept channels, exact for the bilinear MACs,
    params and memory models), divided by the dense cost; never below 1e-3 of the largest."""
    x = np.asarray(counts, dtype=np.float64)

    def secants(halve: bool) -> np.ndarray:
        steps = np.array([max(1.0, math.floor(x[g] / 2)) if halve else 1.0 for g in groups])
        rows = np.repeat(x[None], len(groups) + 1, axis=0)
        for i, g in enumerate(groups):
            rows[i + 1, g] -= steps[i]
        costs = np.asarray(cost_model.cost_batch(rows), dtype=np.float64)
        return (costs[0] - costs[1:]) / steps

    try:
        w = secants(halve=True)
    except (PrunecliError, ValueError, IndexError):  # e.g. a latency table's grid ends above
        w = secants(halve=False)
    positive = w[w > 0]
    floor = 1e-3 * float(positive.max()) if positive.size else 1.0
    dense = float(cost_model.dense) or 1.0
    return np.maximum(w, floor) / dense


class ChannelGates(nn.Module):
    """The gate logits of all prunable channels, one flat vector (group after group), with
    ``active`` (0 once a channel is off for good) and ``protected`` (the ``min_channels`` best
    of each group, never switched off between host syncs).

    Not part of the model's ``state_dict`` (see the module docstring): the method saves it.
    """

    def __init__(self, total: int, init_logit: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.full((total,), float(init_logit)))
        self.register_buffer("active", torch.ones(total))
        self.register_buffer("protected", torch.zeros(total, dtype=torch.bool))

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        return  # the method's state carries the gates

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        return

    def sample(self, n: int, tau: float) -> torch.Tensor:
        """(n, channels) hard 0/1 gates with the sigmoid's (straight-through) gradient."""
        noise = logistic_noise((n, self.theta.numel()), self.theta.device)
        soft = torch.sigmoid((self.theta + noise) / tau)
        hard = (soft > 0.5).to(soft.dtype)
        return (hard + (soft - soft.detach())) * self.active  # exactly 0/1 forward

    def deterministic(self) -> torch.Tensor:
        """(1, channels) eval gates: on while ``theta >= 0`` (or protected) and active."""
        on = (self.theta.detach() >= 0) | self.protected
        return on.to(self.active.dtype)[None] * self.active

    def update_active(self) -> None:
        """Switch off for good every unprotected channel whose logit fell below 0."""
        with torch.no_grad():
            on = (self.theta >= 0) | self.protected
            self.active.mul_(on.to(self.active.dtype))


class GatesOnModel:
    """Forward pre-hooks that gate every consumer's input channels (state from ``Gator``:
    ``gates``, ``tau``, ``structure``, ``offsets``, ``n_gates``, ``device``, ``layouts``,
    ``handles``, ``_gates``, ``_sample``)."""

    gates: ChannelGates
    tau: float
    structure: Any
    offsets: dict[int, int]
    n_gates: int
    device: torch.device
    layouts: list[tuple[str, torch.Tensor, bool]]
    handles: list[Any]
    _gates: torch.Tensor | None
    _sample: torch.Tensor | None

    def _consumer_layouts(self, model: nn.Module) -> list[tuple[str, torch.Tensor, bool]]:
        """(consumer, gate index of each input feature (n_gates = always on), channels last)."""
        modules = dict(model.named_modules())
        out = []
        for name in self.structure.consumers_of_prunable():
            role = self.structure.roles[name]
            m = modules[name]
            width = m.in_features if role.kind == "linear" else m.in_channels
            idx = np.full(width, self.n_gates, dtype=np.int64)
            for s in role.in_segments:
                if s.group in self.offsets:
                    idx[s.offset: s.offset + s.length * s.spatial] = (
                        self.offsets[s.group] + np.repeat(np.arange(s.length), s.spatial))
            out.append((name, torch.as_tensor(idx, device=self.device), role.kind == "linear"))
        return out

    def attach(self, model: nn.Module) -> None:
        if self.handles:
            return
        modules = dict(model.named_modules())
        self.handles.append(model.register_forward_pre_hook(self._root_hook))
        for name, idx, last in self.layouts:
            hook = partial(self._consumer_hook, idx=idx, last=last)
            self.handles.append(modules[name].register_forward_pre_hook(hook))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self._gates = self._sample = None

    def _with_ones(self, g: torch.Tensor) -> torch.Tensor:
        return torch.cat([g, g.new_ones(g.shape[0], 1)], dim=1)

    def _root_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if module.training and x is not None and x.ndim > 0:
            sample = self.gates.sample(int(x.shape[0]), self.tau)
            self._sample = sample if torch.is_grad_enabled() else None
            self._gates = self._with_ones(sample)
        else:
            self._gates = self._with_ones(self.gates.deterministic())

    def _consumer_hook(self, module: nn.Module, args: tuple[Any, ...], idx: torch.Tensor,
                       last: bool) -> tuple[Any, ...] | None:
        if self._gates is None or not args or not isinstance(args[0], torch.Tensor):
            return None
        x, g = args[0], self._gates
        if g.shape[0] not in (1, x.shape[0]):  # a layer that reshapes the batch: no sampling
            g = self._with_ones(self.gates.deterministic())
        lay = g.index_select(1, idx)
        n = lay.shape[0]
        shape = (n, *([1] * (x.ndim - 2)), -1) if last else (n, -1, *([1] * (x.ndim - 2)))
        return (x * lay.view(shape).to(x.dtype), *args[1:])
