"""Channel masks on the input side of consumers (the SMCP view).

A mask zeroes input columns of every conv/linear that reads a group, and changes no shape: the
producer still computes the channel, but nothing downstream uses it, so the masked model computes
exactly what the slimmed model will. Masks are weight parametrizations holding a ``mask`` buffer,
so they travel in ``state_dict`` (checkpoints and resume keep them) and work under DDP.

A follower that mixes channels (ConvNeXt V2's Global Response Norm) gets its input masked too,
the removed channels zeroed there (:mod:`prunecli.structure.zeroed`).

``soft=True`` is the straight-through mask: the forward pass uses ``w * m`` but the gradient
reaches ``w`` unchanged, so masked channels keep learning and can come back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunecli.structure import zeroed
from prunecli.structure.structure import ChannelStructure, KeepSpec

# followers that mix channels: their inputs are masked too (removed channels zeroed)
MIXING_KINDS = ("grn",)


class _StraightThrough(torch.autograd.Function):
    """``w * m`` forward, the gradient passed to ``w`` unchanged (one op, no extra buffers)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class InputChannelMask(nn.Module):
    """``w -> w * mask`` over the input-channel axis (dim 1) of a conv/linear weight.

    ``full`` is a host-side flag kept by :class:`ChannelMasker` (no GPU sync to read it): while
    every channel is on, the weight passes through untouched, so masks cost nothing until a
    layer is actually pruned."""

    def __init__(self, in_channels: int, weight_ndim: int, soft: bool) -> None:
        super().__init__()
        self.soft = soft
        self.full = False  # only the masker, which knows the mask, may say it is all ones
        self.shape = (1, in_channels) + (1,) * (weight_ndim - 2)
        self.register_buffer("mask", torch.ones(in_channels))

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.full = bool(self.mask.bool().all())  # once per load, not per step

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.full:
            return weight
        m = self.mask.view(self.shape).to(weight.dtype)
        if self.soft:  # value of w*m, gradient of w
            return _StraightThrough.apply(weight, m)
        return weight * m


class ChannelMasker:
    """Attach masks to every consumer of a model's prunable groups and set them by keep-sets.

    >>> masker = ChannelMasker(model, structure)       # all channels on
    >>> masker.set_keep({"layer1.0.conv1": [0, 2, 5]})  # group key or id -> kept channels
    >>> masker.keep()                                   # what is kept now
    """

    def __init__(self, model: nn.Module, structure: ChannelStructure, soft: bool = False) -> None:
        self.model = model
        self.structure = structure
        self.soft = soft
        self.masks: dict[str, InputChannelMask] = {}
        modules = dict(model.named_modules())
        for name in structure.consumers_of_prunable():
            module = modules[name]
            if parametrize.is_parametrized(module, "weight"):
                existing = module.parametrizations.weight
                found = [p for p in existing if isinstance(p, InputChannelMask)]
                if found:  # already masked (e.g. a resumed run): reuse
                    self.masks[name] = found[0]
                    continue
            p = InputChannelMask(module.weight.shape[1], module.weight.ndim, soft)
            p.to(module.weight.device)
            parametrize.register_parametrization(module, "weight", p)
            self.masks[name] = p
        self._channel_masks = {g.id: torch.ones(g.size, dtype=torch.bool)
                               for g in structure.groups if g.prunable}
        self.zeroed: dict[str, nn.Module] = {}  # mixing followers, their inputs masked
        for name, role in structure.roles.items():
            if role.kind in MIXING_KINDS and any(
                    s.group in self._channel_masks for s in role.in_segments):
                module = modules[name]
                width = sum(s.length * s.spatial for s in role.in_segments)
                zeroed.attach(module, width, getattr(module, "channel_dim", 1))
                self.zeroed[name] = module
        self.sync_from_buffers()  # masks that came with the model (a resumed run) stay

    def set_keep(self, keep: KeepSpec) -> None:
        """Turn on exactly the given channels of each listed group (others stay as they are);
        a keep-set holding a whole group turns all of it back on."""
        reduced = self.structure.normalise_keep(keep)
        for ref in keep:
            gid = self.structure.group(ref).id
            if gid in self._channel_masks:
                self._channel_masks[gid] = torch.ones(self.structure.groups[gid].size,
                                                      dtype=torch.bool)
        for gid, idx in reduced.items():
            m = torch.zeros(self.structure.groups[gid].size, dtype=torch.bool)
            m[idx] = True
            self._channel_masks[gid] = m
        self._refresh()

    def set_masks(self, masks: Mapping[int | str, torch.Tensor]) -> None:
        """Boolean channel masks per group (True = keep)."""
        self.set_keep({k: torch.nonzero(v.bool().cpu()).flatten() for k, v in masks.items()})

    def keep(self) -> dict[int, torch.Tensor]:
        """Kept channel indices of every prunable group."""
        return {gid: torch.nonzero(m).flatten() for gid, m in self._channel_masks.items()}

    def channel_masks(self) -> dict[int, torch.Tensor]:
        return {gid: m.clone() for gid, m in self._channel_masks.items()}

    def _input_mask(self, name: str, width: int) -> torch.Tensor:
        """Module ``name``'s kept inputs under the current channel masks."""
        full = torch.ones(width, dtype=torch.bool)
        for seg in self.structure.roles[name].in_segments:
            if seg.group in self._channel_masks:
                m = self._channel_masks[seg.group].repeat_interleave(seg.spatial)
                full[seg.offset: seg.offset + seg.length * seg.spatial] = m
        return full

    def _refresh(self) -> None:
        for name, p in self.masks.items():
            full = self._input_mask(name, p.mask.numel())
            p.mask.copy_(full.to(p.mask.dtype))
            p.full = bool(full.all())
        self._refresh_zeroed()

    def _refresh_zeroed(self) -> None:
        for name, module in self.zeroed.items():
            zeroed.set_mask(module, self._input_mask(name, zeroed.mask_width(module)))

    def sync_from_buffers(self) -> None:
        """Rebuild the channel masks from the consumers' buffers (after ``load_state_dict``)."""
        for gid in self._channel_masks:
            g = self.structure.groups[gid]
            name = g.consumers[0]
            seg = next(s for s in self.structure.roles[name].in_segments if s.group == gid)
            buf = self.masks[name].mask[seg.offset: seg.offset + seg.length * seg.spatial]
            self._channel_masks[gid] = buf.view(seg.length, seg.spatial)[:, 0].bool().cpu()
        for p in self.masks.values():
            p.full = bool(p.mask.bool().all())
        self._refresh_zeroed()

    def remove(self) -> None:
        """Take the masks off, leaving the original (unmasked) weights in place."""
        modules = dict(self.model.named_modules())
        for name in self.masks:
            remove_masks(modules[name])
        self.masks.clear()
        for module in self.zeroed.values():
            zeroed.detach(module)
        self.zeroed.clear()


def remove_masks(module: nn.Module) -> None:
    """Drop prunecli's mask from a module's weight, keeping the stored (unmasked) weight.

    Unlike ``parametrize.remove_parametrizations`` this never edits the injected
    ``Parametrized<Class>`` class, which a deep copy shares with its original: removing masks
    from a copy must not break the model it was copied from.
    """
    if not parametrize.is_parametrized(module, "weight"):
        return
    plist = module.parametrizations.weight
    if any(not isinstance(p, InputChannelMask) for p in plist) or len(module.parametrizations) > 1:
        raise ValueError(f"{type(module).__name__} has other parametrizations; remove them "
                         "before slimming")
    original = plist.original
    module.__class__ = module.__class__.__bases__[0]
    del module._modules["parametrizations"]
    module.register_parameter("weight", original)


def strip_all_masks(model: nn.Module) -> None:
    for module in model.modules():
        remove_masks(module)
        zeroed.detach(module)
