"""Where a CHEX group's channels live: one :class:`Slot` per per-channel tensor (producer rows,
biases, norm and depthwise entries, layer scales), indexed per channel or per unit, so pruning,
snapshots and regrowth act on every copy of a channel (:mod:`prunecli.methods.chex`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from prunecli.structure import ChannelStructure


@dataclass(frozen=True)
class Slot:
    """A per-channel tensor of a group: channel ``c`` is index ``offset + c`` along ``dim`` of
    ``module.attr`` (the stored weight when it carries a mask); in a group of ``unit``-channel
    units (grouped convs, GroupNorm groups), unit ``c`` is ``offset + c*unit ... + unit - 1``."""

    key: str
    module: str  # module name ("" = the model itself)
    attr: str
    dim: int
    offset: int
    zero: bool  # zeroed while the channel is pruned (weights, biases; not running statistics)
    producer: bool = False  # an output filter of a producer: a column block of X
    unit: int = 1  # entries per channel of the group (a grouped conv's group: ``unit`` rows)

    def index(self, channels: np.ndarray) -> np.ndarray:
        """Positions along ``dim`` of ``channels`` (every entry of each unit, in order)."""
        channels = np.asarray(channels, dtype=np.int64)
        return (channels[:, None] * self.unit + np.arange(self.unit)).ravel() + self.offset


_FOLLOWER_ATTRS = {
    "norm": (("weight", True), ("bias", True), ("running_mean", False), ("running_var", False)),
    "depthwise": (("weight", True), ("bias", True)),
    "prelu": (("weight", True),),
    "grn": (("weight", True), ("bias", True)),
}


def group_slots(structure: ChannelStructure, model: nn.Module, gid: int) -> list[Slot]:
    """Every per-channel tensor of group ``gid``: its producers' output rows (one slot per part
    of their output that is this group's), biases, its followers' entries and per-channel
    parameters."""
    g, modules = structure.groups[gid], dict(model.named_modules())
    slots = []
    for name in g.producers:  # every part of its output that is this group's
        for seg in structure.roles[name].out_segments:
            if seg.group != gid or seg.spatial != g.unit:
                continue
            at = f"@{seg.offset}" if seg.offset else ""
            slots.append(Slot(f"{name}.weight{at}", name, "weight", 0, seg.offset, True,
                              producer=True, unit=g.unit))
            if getattr(modules[name], "bias", None) is not None:
                slots.append(Slot(f"{name}.bias{at}", name, "bias", 0, seg.offset, True,
                                  unit=g.unit))
    for name in g.followers:
        role = structure.roles[name]
        for seg in role.in_segments:
            if seg.group != gid or seg.spatial != g.unit:
                continue
            for attr, zero in _FOLLOWER_ATTRS.get(role.kind, ()):
                if isinstance(getattr(modules[name], attr, None), torch.Tensor):
                    slots.append(Slot(f"{name}.{attr}@{seg.offset}", name, attr, 0,
                                      seg.offset, zero, unit=g.unit))
    for p in structure.params:
        owner = modules[p.module] if p.module else model
        t = getattr(owner, p.attr)
        dim = next(d for d, n in enumerate(t.shape) if n == t.numel())
        for seg in p.segments:
            if seg.group == gid and seg.spatial == g.unit:
                slots.append(Slot(f"{p.module}.{p.attr}@{seg.offset}", p.module, p.attr,
                                  dim, seg.offset, True, unit=g.unit))
    return slots


def zero_optimizer_state(optimizer: Any, p: torch.Tensor, dim: int, index: np.ndarray) -> None:
    """A pruned or regrown channel's optimizer state (momentum, Adam moments) restarts."""
    if optimizer is None or len(index) == 0:
        return
    for v in optimizer.state.get(p, {}).values():
        if isinstance(v, torch.Tensor) and v.shape == p.shape:
            v.index_fill_(dim, torch.as_tensor(index, device=v.device), 0)


def agree_on_keep(keep: dict[int, np.ndarray], sizes: dict[int, int], device: torch.device
                  ) -> dict[int, np.ndarray]:
    """Every process takes rank 0's keep-sets (SVDs and sampling agree anyway)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return keep
    masks = []
    for g, size in sizes.items():
        m = torch.zeros(size, dtype=torch.uint8)
        m[torch.as_tensor(np.asarray(keep[g], dtype=np.int64))] = 1
        masks.append(m)
    flat = torch.cat(masks).to(device)
    dist.broadcast(flat, 0)
    out, at = {}, 0
    for g, m in zip(sizes, masks, strict=True):
        out[g] = np.flatnonzero(flat[at: at + len(m)].cpu().numpy())
        at += len(m)
    return out
