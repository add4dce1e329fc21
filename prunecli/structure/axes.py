"""Follow the channel axis through ops that move it or reshape around it.

ConvNeXt runs its MLP on channels-last tensors (``permute(0, 2, 3, 1)`` then ``nn.Linear``), and
ViT-style models turn a conv's output into tokens (``flatten(2).transpose(1, 2)``). None of these
ops mixes channels: each keeps every channel as one index of one axis, only the axis moves. The
tracer keeps following the layout through them, so a Linear over the last axis of an (N, ..., C)
tensor is a conv over channels and the MLP's hidden width becomes prunable.

Exactness rule for reshapes: the channel axis must come out as an axis of its own, with the same
number of elements before it (so the channel index of every element is unchanged), not as the
leading axis (traced at batch 1, merging channels into the batch looks the same), and its size
must not be a literal in the code (``x.view(B, -1, 64)`` would break once the 64 channels shrink).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx

from prunecli.structure.layouts import _Layout, _meta, _Unsupported

AXIS_MOVE_METHODS = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}
AXIS_MOVE_FUNCTIONS = {torch.permute, torch.transpose, torch.swapaxes, torch.swapdims,
                       torch.movedim, torch.moveaxis}
RESHAPE_AS_METHODS = {"reshape_as", "view_as"}


def _plain(value: Any) -> bool:
    """Dims given as Python ints (not computed by the traced graph)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, int)


def moved_layout(node: fx.Node, x: _Layout) -> _Layout:
    """Where the channel axis lands after a permute/transpose/movedim.

    The op is replayed on a meta tensor whose axes have distinct sizes: the output axis that has
    the channel axis' size is where the channels went. Works for every spelling of these ops
    (method or function, negative dims, tuples) without re-implementing their argument rules."""
    args, kwargs = node.args[1:], dict(node.kwargs)
    if not _plain(args) or not all(_plain(v) for v in kwargs.values()):
        raise _Unsupported(f"{_op_name(node)} with dims computed at run time")
    sizes = [2 + i for i in range(x.ndim)]
    probe = torch.empty(sizes, device="meta")
    op = node.target
    try:
        out = getattr(probe, op)(*args, **kwargs) if isinstance(op, str) else op(
            probe, *args, **kwargs)
    except (RuntimeError, TypeError, IndexError) as exc:
        raise _Unsupported(f"{_op_name(node)} could not be replayed ({exc})") from exc
    axis = list(out.shape).index(sizes[x.axis])
    return _Layout(x.segs, axis, out.dim(), x.spatial, x.guessed)


def reshaped_layout(node: fx.Node, x: _Layout) -> _Layout:
    """Flatten into features (N, C*H*W), or any reshape that keeps channels an axis of their own.
    Anything else regroups channels and is refused."""
    src = _meta(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    out = _meta(node)
    if src is None or out is None:
        raise _Unsupported("reshape of unknown shape")
    s, o = tuple(int(d) for d in src.shape), tuple(int(d) for d in out.shape)
    literal = _literal_sizes(node)
    if x.axis == 1 and len(o) == 2 and o[0] == s[0] and x.spatial == 1:  # into features
        _refuse_literal(literal, 1, s, o)
        return _Layout(x.segs, 1, 2, math.prod(s[2:]), x.guessed)
    if x.spatial != 1:
        if x.axis == 1 and o[:2] == s[:2]:  # (N, C*HW) -> (N, C*HW, 1, ...): features stay
            _refuse_literal(literal, 1, s, o)
            return _Layout(x.segs, 1, len(o), x.spatial, x.guessed)
        raise _Unsupported(f"reshape {s} -> {o} of flattened features")
    before = math.prod(s[: x.axis])
    for b in range(1, len(o)):  # channels onto axis 0 would join the batch (even if N is 1)
        if math.prod(o[:b]) == before and o[b] == s[x.axis]:
            _refuse_literal(literal, b, s, o)
            return _Layout(x.segs, b, len(o), 1, x.guessed)
        if math.prod(o[:b]) > before:
            break
    raise _Unsupported(f"reshape {s} -> {o} that regroups channels")


def _literal_sizes(node: fx.Node) -> list[Any] | None:
    """The sizes a ``view``/``reshape`` was given, as written (ints or graph nodes); None for
    ops that take no sizes (flatten, squeeze, unsqueeze, reshape_as)."""
    if node.op == "call_method" and node.target in ("view", "reshape"):
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = sizes[0]
        sizes = sizes or node.kwargs.get("shape", node.kwargs.get("size", ()))
    elif node.op == "call_function" and node.target is torch.reshape:
        sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("shape", ())
    else:
        return None
    return list(sizes) if isinstance(sizes, (list, tuple)) else None


def _refuse_literal(literal: list[Any] | None, axis: int, s: tuple, o: tuple) -> None:
    if literal is not None and len(literal) == len(o) and isinstance(literal[axis], int) \
            and literal[axis] != -1:
        raise _Unsupported(
            f"reshape {s} -> {o} with the channel count written as a number ({literal[axis]}); "
            "use -1 or a size read from the tensor")


def _op_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "op")


def shape_origin(size: Any) -> tuple[fx.Node, int] | None:
    """``(t, dim)`` when ``size`` (a reshape's size, as traced) is read from a tensor's shape:
    ``t.shape[dim]``, ``t.size(dim)`` or ``t.size()[dim]``; None for anything computed."""
    if not isinstance(size, fx.Node):
        return None
    if size.op == "call_method" and size.target == "size" and len(size.args) == 2 \
            and isinstance(size.args[1], int):
        return size.args[0], size.args[1]
    if size.op == "call_function" and size.target is operator.getitem and \
            isinstance(size.args[1], int) and isinstance(size.args[0], fx.Node):
        shape = size.args[0]
        if (shape.op == "call_function" and shape.target is getattr
                and shape.args[1:] == ("shape",)) or (
                shape.op == "call_method" and shape.target == "size" and len(shape.args) == 1):
            return shape.args[0], size.args[1]
    return None
