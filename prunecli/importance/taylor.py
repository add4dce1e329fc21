"""First-order Taylor importance from parameter gradients (no hooks, no extra passes).

Call after the backward pass (prunecli's methods do it in ``before_optimizer_step``, where the
gradients are complete, unscaled and -- under DDP -- already averaged over processes).
"""

from __future__ import annotations

import torch
from torch import nn

from prunecli.importance.norms import NormSlice
from prunecli.structure import ChannelStructure
from prunecli.structure.keep import _weight, add_channel_sums


def l2_normalise(scores: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Each group's scores divided by their l2 norm (ICLR 2017's per-layer normalisation)."""
    return {g: s / s.norm().clamp_min(1e-12) for g, s in scores.items()}


class WeightTaylor:
    """Per channel: ``sum w * dL/dw`` over every input column that reads it, in all consumers.

    That is the first-order change of the loss when the channel is masked at its consumers
    (the sign is kept; square or take the absolute value for an importance)."""

    def __init__(self, model: nn.Module, structure: ChannelStructure,
                 groups: set[int] | None = None) -> None:
        modules = dict(model.named_modules())
        self.structure = structure
        wanted = groups if groups is not None else {g.id for g in structure.prunable_groups}
        self.groups = sorted(wanted)
        self.layers: list[tuple[nn.Module, list]] = []
        self.device = next(model.parameters()).device
        for name in structure.consumers_of_prunable():
            segs = [s for s in structure.roles[name].in_segments if s.group in wanted]
            if segs:
                self.layers.append((modules[name], segs))

    @torch.no_grad()
    def __call__(self) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for module, segs in self.layers:
            w = _weight(module)
            if w.grad is None:
                continue
            add_channel_sums(out, (w.detach() * w.grad).float(), segs)
        for g in self.groups:  # no gradient yet (e.g. a frozen consumer): zeros
            if g not in out:
                out[g] = torch.zeros(self.structure.groups[g].size, device=self.device)
        return out


class BNTaylor:
    """Per channel: ``sum over the group's norms of gamma * dL/dgamma + beta * dL/dbeta``.

    With ``a = gamma * x_hat + beta`` the norm's output, that equals ``sum a * dL/da`` over the
    batch and positions: the derivative of the loss with respect to a gate on the channel
    (Molchanov et al. CVPR 2019), i.e. the first-order loss change of removing it. Groups with
    no affine norm use :class:`WeightTaylor` instead. ``counts[g]`` is how many norms a group
    sums (a residual stream shares one channel space across blocks)."""

    def __init__(self, model: nn.Module, structure: ChannelStructure,
                 slices: dict[int, list[NormSlice]]) -> None:
        self.slices = slices
        rest = {g.id for g in structure.prunable_groups} - set(slices)
        self.fallback = WeightTaylor(model, structure, rest) if rest else None
        self.counts = {g: len(parts) for g, parts in slices.items()}
        self.counts.update({g: 1 for g in rest})

    @torch.no_grad()
    def __call__(self) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for gid, parts in self.slices.items():
            total = None
            for p in parts:
                m = p.module
                term = torch.zeros(p.length, p.spatial, device=m.weight.device)
                if m.weight.grad is not None:
                    term = term + p.per_unit(m.weight * m.weight.grad).float()
                bias = getattr(m, "bias", None)
                if bias is not None and bias.grad is not None:
                    term = term + p.per_unit(bias * bias.grad).float()
                term = term.sum(1)  # a unit's channels go together: their changes add
                total = term if total is None else total + term
            out[gid] = total
        if self.fallback is not None:
            out.update(self.fallback())
        return out
