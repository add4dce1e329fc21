"""How the tracer reads the modules it knows: convs, linears and norms (the layers prunecli
slices), activations and pools that pass channels through.

A conv or linear output starts a new channel space (or several, where earlier passes cut it,
:mod:`prunecli.structure.refine`); a depthwise conv, or a grouped conv mapping ``w`` channels to
``w``, carries its input's spaces (pruned in whole conv groups); a norm carries them, a
GroupNorm in whole GN groups; LayerNorm over the channels leaves them whole. A mixin of
:class:`prunecli.structure.trace._Analysis`, split out so each module holds one concern.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from prunecli.structure.axes import reshaped_layout
from prunecli.structure.layouts import (
    _CONV,
    _CONV_FORWARDS,
    _NORM,
    _NORM_FORWARDS,
    _PASS_MODULES,
    _SAFE_SUBCLASSES,
    _Layout,
    _same_layout,
    _Unsupported,
)


def is_grn(m: nn.Module) -> bool:
    """timm's GlobalResponseNorm (ConvNeXt V2), by its forward: a leaf the tracer reads whole.
    (Only a model that imported timm can hold one: no timm import here, tracing stays fast.)"""
    grn = sys.modules.get("timm.layers.grn")
    cls = getattr(grn, "GlobalResponseNorm", None)
    return cls is not None and type(m).forward is cls.forward


class ModuleOps:
    """Layout rules for ``call_module`` nodes (state from ``_Analysis``)."""

    units: dict[int, int]

    if TYPE_CHECKING:  # provided by _Analysis and the other mixins
        def tensor_inputs(self, node: fx.Node) -> list[_Layout]: ...
        def fresh(self, node: fx.Node, reason: str | None = None) -> _Layout | None: ...
        def bad(self, layout: Any, reason: str) -> None: ...
        def record(self, name: str, kind: str, x: _Layout | None) -> None: ...
        def producer_layout(self, name: str, size: int, axis: int, ndim: int) -> _Layout: ...
        def on_axis(self, src: Any, x: _Layout, axis: int, what: str,
                    features: bool = False) -> _Layout: ...

    def visit_module(self, node: fx.Node, m: nn.Module) -> Any:
        name = str(node.target)
        inputs = self.tensor_inputs(node)
        if not inputs:
            return self.fresh(node)
        x = inputs[0]
        cls = type(m).__name__
        if isinstance(m, _CONV) and (type(m).forward in _CONV_FORWARDS or cls in _SAFE_SUBCLASSES):
            return self.conv(node, name, m, x)
        if isinstance(m, nn.Linear) and (type(m) is nn.Linear or cls in _SAFE_SUBCLASSES):
            return self.linear(node, name, m, x)
        if isinstance(m, _NORM) and (type(m).forward in _NORM_FORWARDS or cls in _SAFE_SUBCLASSES):
            x = self.on_axis(node.args[0], x, 1,
                             f"{cls} on a tensor whose channels are not on axis 1")
            self.record(name, "norm", x)
            return x
        if isinstance(m, nn.GroupNorm) and (type(m) is nn.GroupNorm or cls in _SAFE_SUBCLASSES):
            width = m.num_channels // m.num_groups
            if width > 1 and (m.num_groups == 1 or any(s.length % width for s in x.segs)):
                self.bad(x, f"GroupNorm {name} mixes channels ({m.num_groups} groups)")
                return x
            for s in x.segs:  # statistics per GN group: pruned in whole GN groups, exact
                self.units[s.space] = math.lcm(self.units.get(s.space, 1), width)
            self.record(name, "norm", x)
            return x
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
            if x.guessed:
                x = self.on_axis(node.args[0], x, 1 if cls == "LayerNorm2d" else -1, "LayerNorm")
            on_channels = (cls == "LayerNorm2d" and x.axis == 1) or (
                x.axis == x.ndim - 1 and cls != "LayerNorm2d")
            if on_channels and m.normalized_shape[0] == x.channels:
                self.bad(x, f"LayerNorm {name} normalises over the channels")
                return x
            raise _Unsupported(f"{cls} ({name}) not over the channel axis")
        if is_grn(m):
            return self.grn(node, name, m, x)
        if isinstance(m, nn.PReLU):
            if m.num_parameters > 1:
                self.record(name, "prelu", x)
            return x
        if type(m) in _PASS_MODULES:
            return _same_layout(node, x)
        if isinstance(m, nn.Flatten):
            return reshaped_layout(node, x)
        raise _Unsupported(f"module {cls} ({name})")

    def conv(self, node: fx.Node, name: str, m: nn.Module, x: _Layout) -> _Layout | None:
        x = self.on_axis(node.args[0], x, 1, f"{type(m).__name__} ({name}) on a reshaped tensor")
        if m.groups == 1:
            self.record(name, "conv", x)
            return self.producer_layout(name, m.out_channels, 1, x.ndim)
        if m.groups == m.in_channels == m.out_channels:
            self.record(name, "depthwise", x)
            return _same_layout(node, x)
        width = m.in_channels // m.groups
        if m.out_channels == m.in_channels and all(s.length % width == 0 for s in x.segs):
            # w -> w channels per conv group: a follower pruned in whole conv groups
            for s in x.segs:
                self.units[s.space] = math.lcm(self.units.get(s.space, 1), width)
            self.record(name, "depthwise", x)
            return _same_layout(node, x)
        self.bad(x, f"grouped conv {name} (groups={m.groups}) cannot keep its groups whole")
        return self.fresh(node, f"output of grouped conv {name} (groups={m.groups})")

    def grn(self, node: fx.Node, name: str, m: nn.Module, x: _Layout) -> _Layout:
        """Global Response Norm: per-channel weight and bias, and a mean over the channels of
        their spatial norms. Exact when pruned with the removed channels zeroed on its input
        (:mod:`prunecli.structure.zeroed`) and the mean rescaled at slimming."""
        x = self.on_axis(node.args[0], x, m.channel_dim,
                         f"GlobalResponseNorm ({name}) on a tensor whose channels are not on "
                         f"axis {m.channel_dim}")
        if x.channels != m.weight.numel():
            raise _Unsupported(f"GlobalResponseNorm ({name}) of {m.weight.numel()} channels "
                               f"on {x.channels}")
        self.record(name, "grn", x)
        return _same_layout(node, x)

    def linear(self, node: fx.Node, name: str, m: nn.Linear, x: _Layout) -> _Layout | None:
        x = self.on_axis(node.args[0], x, -1,
                         f"Linear ({name}) on a tensor whose last axis is not channels",
                         features=True)
        self.record(name, "linear", x)
        return self.producer_layout(name, m.out_features, x.ndim - 1, x.ndim)
