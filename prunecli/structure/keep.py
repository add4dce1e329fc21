"""Simple keep-set choices: magnitude (L1) scores, top-k per group, random keep-sets.

The pruning methods bring their own importance and allocation; these are the building blocks
a user needs to prune from a script in a few lines, and what the tests and benchmarks use.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from prunecli.allocate.options import kept_count
from prunecli.structure.masks import InputChannelMask
from prunecli.structure.structure import ChannelStructure
from prunecli.structure.types import Segment


def _weight(module: nn.Module) -> torch.Tensor:
    """The stored (unmasked) weight, so masked channels are still scored."""
    if (hasattr(module, "parametrizations") and "weight" in module.parametrizations
            and any(isinstance(p, InputChannelMask) for p in module.parametrizations.weight)):
        return module.parametrizations.weight.original
    return module.weight


def add_channel_sums(out: dict[int, torch.Tensor], elementwise: torch.Tensor,
                     segments: Iterable[Segment]) -> None:
    """Sum a consumer-weight-shaped tensor over all but its input axis and add each segment's
    channels to ``out[group]`` (a flatten's ``spatial`` features fold into one channel). The
    one rule every weight-based channel score (|w|, w*g, ...) shares."""
    per_input = elementwise.transpose(0, 1).reshape(elementwise.shape[1], -1).sum(1)
    for s in segments:
        part = per_input[s.offset: s.offset + s.length * s.spatial].view(s.length, s.spatial)
        part = part.sum(1)
        out[s.group] = out[s.group] + part if s.group in out else part


@torch.no_grad()
def l1_scores(model: nn.Module, structure: ChannelStructure) -> dict[int, torch.Tensor]:
    """Per prunable group: the L1 norm of every channel's input columns over all consumers
    (the SMCP view of magnitude importance)."""
    modules = dict(model.named_modules())
    scores = {g.id: torch.zeros(g.size) for g in structure.prunable_groups}
    for name in structure.consumers_of_prunable():
        w = _weight(modules[name]).detach().float().abs().cpu()
        add_channel_sums(scores, w, [s for s in structure.roles[name].in_segments
                                     if s.group in scores])
    return scores


def top_k_keep(scores: dict[int, torch.Tensor], keep_ratio: float, round_to: int = 1,
               min_channels: int = 1) -> dict[int, torch.Tensor]:
    """Keep the highest-scoring ``keep_ratio`` of channels in every scored group."""
    keep = {}
    for gid, s in scores.items():
        k = kept_count(s.numel(), keep_ratio, round_to, min_channels)
        keep[gid] = torch.topk(s, k).indices.sort().values
    return keep


def random_keep(structure: ChannelStructure, keep_ratio: float,
                generator: torch.Generator | None = None) -> dict[int, torch.Tensor]:
    """A random keep-set of ``keep_ratio`` of each prunable group (tests and benchmarks)."""
    keep = {}
    for g in structure.prunable_groups:
        k = kept_count(g.size, keep_ratio)
        keep[g.id] = torch.randperm(g.size, generator=generator)[:k].sort().values
    return keep
