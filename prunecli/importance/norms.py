"""Where each prunable group's per-channel norms are (the BN after a producer), and |gamma|."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunecli.structure import ChannelStructure


@dataclass(frozen=True)
class NormSlice:
    """Channels ``[offset, offset + length * spatial)`` of the affine norm ``module`` are group
    ``group``; each of its ``length`` units spans ``spatial`` channels (a grouped conv's group
    width, see ChannelGroup.unit; 1 otherwise)."""

    module: nn.Module
    name: str
    group: int
    offset: int
    length: int
    spatial: int = 1

    def per_unit(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``'s entries for this slice, as (units, channels per unit)."""
        part = tensor[self.offset: self.offset + self.length * self.spatial]
        return part.reshape(self.length, self.spatial)


def norm_slices(model: nn.Module, structure: ChannelStructure) -> dict[int, list[NormSlice]]:
    """The affine per-channel norms (BatchNorm, per-channel GroupNorm, ...) of every prunable
    group; groups with none are absent."""
    modules = dict(model.named_modules())
    out: dict[int, list[NormSlice]] = {}
    for g in structure.prunable_groups:
        for name in g.followers:
            role = structure.roles[name]
            m = modules[name]
            if role.kind != "norm" or getattr(m, "weight", None) is None:
                continue
            for seg in role.in_segments:
                if seg.group == g.id:
                    out.setdefault(g.id, []).append(NormSlice(m, name, g.id, seg.offset,
                                                              seg.length, seg.spatial))
    return out


@torch.no_grad()
def bn_scale(slices: dict[int, list[NormSlice]]) -> dict[int, torch.Tensor]:
    """Network Slimming's score: ``|gamma|`` per channel, averaged over the norms of a group (a
    residual stream has one BN per block; the mean keeps groups comparable under one global
    threshold)."""
    scores = {}
    for gid, parts in slices.items():
        total = sum(p.per_unit(p.module.weight.detach()).abs().float().mean(1) for p in parts)
        scores[gid] = total / len(parts)
    return scores
