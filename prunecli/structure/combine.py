"""How the tracer combines tensors: elementwise ops between two (residual adds, squeeze-excite
gates), constants in them (layer scales), concatenation, indexing and reductions.

A mixin of :class:`prunecli.structure.trace._Analysis`, split out so each module holds one
concern: the graph walk and module rules there, the tensor-combining rules here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from prunecli.structure.layouts import (
    _Const,
    _keeps_channel_axis,
    _Layout,
    _meta,
    _node_args,
    _same_layout,
    _Unsupported,
)
from prunecli.structure.refine import getitem_of_parts


class TensorOps:
    """Layout rules for ops on tensors already traced (see ``_Analysis`` for the state used:
    ``layouts``, ``params``, ``bad``, ``fresh``, ``on_axis``, ``union_layouts``)."""

    layouts: dict[fx.Node, Any]
    params: dict[str, tuple[str, str, _Layout]]

    def const_result(self, node: fx.Node, keeps_values: bool) -> Any:
        """An op on constants only: ``self.gamma.reshape(1, -1, 1, 1)`` is still gamma."""
        consts = [self.layouts.get(a) for a in _node_args(node)]
        consts = [c for c in consts if isinstance(c, _Const)]
        if len(consts) == 1 and keeps_values:
            return consts[0]
        if consts:
            return _Const(None)
        return self.fresh(node)

    def getitem(self, node: fx.Node) -> Any:
        src, idx = node.args[0], node.args[1]
        value = self.layouts.get(src)
        part = getitem_of_parts(value, idx)
        if part is not None:  # one part of a split
            return part
        if isinstance(value, _Layout):
            if _keeps_channel_axis(idx, value.axis, value.channels):
                return _same_layout(node, value)
            raise _Unsupported("tensor indexing/slicing across channels")
        if _meta(node) is not None and _meta(src) is None and not isinstance(value, _Const):
            # an element of a tuple returned by an op that was not understood
            return self.fresh(node, "output of an op not understood")
        return None  # indexing a shape or a constant

    def binary(self, node: fx.Node, what: str) -> Any:
        operands = _node_args(node)
        lays = [self.layouts.get(a) for a in operands]
        tensors = [x for x in lays if isinstance(x, _Layout)]
        source = {id(x): a for a, x in zip(operands, lays, strict=False)}
        consts = [(a, x) for a, x in zip(operands, lays, strict=False) if isinstance(x, _Const)]
        out_meta = _meta(node)
        if out_meta is None:
            return None
        wide = [t for t in tensors if t.channels > 1]
        if len(wide) >= 2:
            wide.sort(key=lambda t: t.guessed)  # a known channel axis decides where they are
            base = wide[0]
            for other in wide[1:]:
                if other.axis != base.axis:
                    other = self.on_axis(source[id(other)], other, base.axis,
                                         f"{what} of tensors with channels on different axes")
                self.union_layouts(base, other, what)
            result = base
        elif wide:
            result = wide[0]
        elif tensors:
            result = tensors[0]
        else:
            return self.fresh(node)
        out_shape = tuple(out_meta.shape)
        if result.axis >= len(out_shape) or int(out_shape[result.axis]) != result.channels:
            raise _Unsupported(f"{what} broadcasting that changes the channel count")
        for a, const in consts:
            self.const_operand(a, const, result, what)
        return _Layout(result.segs, result.axis, len(out_meta.shape), result.spatial,
                       result.guessed)

    def const_operand(self, node: fx.Node, const: _Const, x: _Layout, what: str) -> None:
        """``x * self.gamma``: a per-channel parameter is sliced with the group."""
        shape = _meta(node).shape if _meta(node) is not None else ()
        numel = int(torch.Size(shape).numel()) if shape else 1
        if numel <= 1:
            return
        aligned = (1,) * (x.ndim - len(shape)) + tuple(int(d) for d in shape)
        on_axis = len(aligned) == x.ndim and aligned[x.axis] == x.channels == numel
        if not on_axis or const.target is None or x.spatial != 1:
            raise _Unsupported(f"{what} with a constant of shape {tuple(shape)}")
        module, _, attr = const.target.rpartition(".")
        self.params[const.target] = (module, attr, x)

    def cat(self, node: fx.Node) -> _Layout:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        lays = [self.layouts.get(t) for t in tensors]
        if not all(isinstance(x, _Layout) for x in lays):
            raise _Unsupported("cat of tensors with unknown channels")
        ndim = lays[0].ndim
        dim = dim % ndim
        if dim == lays[0].axis and all(x.axis == dim and x.spatial == 1 for x in lays):
            return _Layout(tuple(s for x in lays for s in x.segs), dim, ndim,
                           guessed=any(x.guessed for x in lays))
        if dim != lays[0].axis:  # cat along batch/space: channels line up elementwise
            for other in lays[1:]:
                self.union_layouts(lays[0], other, "cat")
            return lays[0]
        raise _Unsupported("cat of flattened tensors")

    def reduce(self, node: fx.Node, x: _Layout, what: str) -> _Layout:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dims is None:
            raise _Unsupported(f"{what} over all axes")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % x.ndim for d in dims]
        if x.axis in dims:
            raise _Unsupported(f"{what} over the channel axis")
        out = _meta(node)
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        axis = x.axis if keep else x.axis - sum(d < x.axis for d in dims)
        return _Layout(x.segs, axis, len(out.shape), x.spatial, x.guessed)
