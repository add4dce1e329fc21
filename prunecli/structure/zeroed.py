"""Removed channels zeroed on the input of a follower that mixes channels (GRN).

Input-side masks (:mod:`prunecli.structure.masks`) leave a removed channel computed, only unread.
That is exact as long as nothing between its producer and its consumers combines channels. A
Global Response Norm (ConvNeXt V2) does: it divides each channel by the mean over all channels
of their spatial norms, so a removed channel still computed would change the kept ones. Its
input is therefore masked too, with the removed channels zeroed: they add nothing to the mean,
and slimming rescales the mean from ``C`` to the kept ``C'`` channels
(:func:`prunecli.structure.slim._slim_module`), so the slim model computes what this one does.

The mask is a non-persistent buffer plus a forward pre-hook: nothing enters ``state_dict``
(checkpoints stay loadable into plain models); :class:`ChannelMasker` fills it from its
channel masks, also after a resume (the consumers' mask buffers are the record).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_BUFFER = "prunecli_input_mask"
_AXIS = "_prunecli_mask_axis"
_FULL = "_prunecli_mask_full"


def _zero_removed(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: the input times the channel mask (nothing while all channels are on)."""
    if getattr(module, _FULL, True):
        return None
    x = args[0]
    shape = [1] * x.dim()
    shape[getattr(module, _AXIS)] = -1
    return (x * getattr(module, _BUFFER).view(shape).to(x.dtype), *args[1:])


def has_zeroed_input(module: nn.Module) -> bool:
    return _BUFFER in module._buffers


def attach(module: nn.Module, channels: int, axis: int) -> None:
    """Give ``module`` an all-ones input mask over ``channels`` on ``axis`` (once)."""
    if has_zeroed_input(module):
        return
    device = next((p.device for p in module.parameters(recurse=False)), torch.device("cpu"))
    module.register_buffer(_BUFFER, torch.ones(channels, device=device), persistent=False)
    setattr(module, _AXIS, axis)
    setattr(module, _FULL, True)
    module.register_forward_pre_hook(_zero_removed)


def mask_width(module: nn.Module) -> int:
    return getattr(module, _BUFFER).numel()


def set_mask(module: nn.Module, keep: torch.Tensor) -> None:
    """Boolean ``keep`` over the module's input channels."""
    buf = getattr(module, _BUFFER)
    buf.copy_(keep.to(buf.dtype))
    setattr(module, _FULL, bool(keep.all()))


def detach(module: nn.Module) -> None:
    """Remove the mask and its hook (slimming, timing the dense network)."""
    if not has_zeroed_input(module):
        return
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _zero_removed:
            del module._forward_pre_hooks[key]
    del module._buffers[_BUFFER]
    for attr in (_AXIS, _FULL):
        module.__dict__.pop(attr, None)
