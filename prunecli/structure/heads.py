"""Attention heads: pruned whole, as units of their q, k and v rows and of the projection's
input columns.

timm's ``Attention`` reshapes ``qkv(x)`` from (B, N, 3*H*D) to (B, N, 3, H, D), permutes,
unbinds q, k and v, runs attention per head and merges heads back with ``reshape(B, N, H*D)``
before ``proj``. Removing head ``h`` everywhere is exact when every op between the split and the
merge is *per head* (batched over the head axis): then the kept heads compute what they did,
and ``proj``'s masked input columns (``prunecli.structure.masks``) are those of the dropped
heads. So the tracer:

- at the split, cuts ``qkv``'s output into its q, k and v parts (one group, like ``chunk``)
  with a unit of D channels (one head), and follows the *head axis* instead of the channel axis
  (a layout with ``head_dim = D``: its segments count heads);
- allows on that axis only per-head ops: moves (permute/transpose), elementwise ops whose other
  operands have size 1 on the head axis (a scale, a mask shared by all heads), softmax over
  another axis, matmul and ``scaled_dot_product_attention`` batched over it (their MACs are
  charged to the heads, ``TraceResult.op_macs``), norms over the head's own channels (qk-norm),
  ``unbind`` and indexing of other axes, reshapes that keep it an axis of its own;
- at the merge, turns (H, D) back into H*D channels of the same group.

The head count must follow pruning: a literal head count or merged width in a reshape is allowed
only when it is an attribute of the module running it (``num_heads``, ``attn_dim``), which
slimming rewrites (``SizeAttr``); ``-1`` follows by itself. Anything else (a per-head bias table,
heads merged into the batch, sizes computed at run time, an op not listed) leaves the heads
whole with the op named. A mixin of :class:`prunecli.structure.trace._Analysis`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunecli.structure.axes import (
    AXIS_MOVE_FUNCTIONS,
    AXIS_MOVE_METHODS,
    _literal_sizes,
    moved_layout,
)
from prunecli.structure.layouts import (
    _BINARY_FUNCTIONS,
    _BINARY_METHODS,
    _PASS_FUNCTIONS,
    _PASS_METHODS,
    _PASS_MODULES,
    _RESHAPE_FUNCTIONS,
    _RESHAPE_METHODS,
    _SIZE_METHODS,
    _flat_layouts,
    _Layout,
    _meta,
    _name,
    _node_args,
    _Seg,
    _Unsupported,
)
from prunecli.structure.refine import _bounds, getitem_of_parts

_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul}
_SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}
_SDPA = F.scaled_dot_product_attention
_HEAD_NORMS = (nn.LayerNorm, nn.RMSNorm)
# timm's attention-mask helpers, kept opaque by its fx wrapper: ``resolve_self_attn_mask``
# gives the mask (None when there is none) and ``maybe_add_mask(x, mask)`` is ``x + mask``
_MASK_RESOLVERS = {"resolve_self_attn_mask"}
_MASK_ADDERS = {"maybe_add_mask"}


class HeadOps:
    """Head splits, per-head ops and head merges (state from ``_Analysis``)."""

    layouts: dict[fx.Node, Any]
    units: dict[int, int]
    uf: Any
    size_attrs: dict[tuple[str, str], list[_Layout]]
    size_units: dict[tuple[str, str], int]
    op_macs: dict[int, float]
    head_spaces: set[int]
    batch: int

    if TYPE_CHECKING:  # provided by _Analysis and the other mixins
        def request_cuts(self, x: _Layout, bounds: set[int], apply: bool = True) -> bool: ...
        def _size_attribute(self, node: fx.Node, sizes: list[int] | int,
                            what: str = "split with sizes") -> tuple[str, str]: ...

    # ------------------------------------------------------------------ split and merge
    def reads_heads(self, node: fx.Node) -> bool:
        values = [self.layouts.get(a) for a in _node_args(node)]
        return any(lay.head_dim for lay in _flat_layouts(values))

    def split_heads(self, node: fx.Node, x: _Layout) -> _Layout:
        """(..., P*H*D, ...) -> (..., [P,] H, D, ...): the channel axis becomes heads of D
        channels (P = 3 for a fused qkv, 2 for kv, none for a lone q)."""
        src, out = _meta(node.args[0]), _meta(node)
        written = _literal_sizes(node)
        if src is None or out is None or written is None or x.spatial != 1 or x.guessed:
            raise _Unsupported("reshape that regroups channels")
        s, o, a = tuple(int(d) for d in src.shape), tuple(int(d) for d in out.shape), x.axis
        k = len(o) - len(s) + 1
        if k not in (2, 3) or o[:a] != s[:a] or o[a + k:] != s[a + 1:] or \
                math.prod(o[a:a + k]) != s[a] or len(written) != len(o):
            raise _Unsupported(f"reshape {s} -> {o} that regroups channels")
        heads, dim = o[a + k - 2], o[a + k - 1]
        for pos in range(a, a + k):  # parts and head_dim must stay; heads may follow pruning
            if isinstance(written[pos], fx.Node):
                raise _Unsupported(f"reshape {s} -> {o} that regroups channels (as attention "
                                   "heads: sizes computed at run time would not follow pruning)")
        attr = None
        if written[a + k - 2] != -1:
            attr = self._size_attribute(node, heads, "attention head count")  # num_heads
        width = heads * dim
        bounds = set(range(width, s[a], width))
        if not bounds <= set(_bounds(x)):
            if self.request_cuts(x, bounds):
                raise _Unsupported("attention heads inside a channel space (cut on the next pass)")
            raise _Unsupported("attention heads of channels no layer writes as separate parts")
        if set(_bounds(x)) != bounds:
            raise _Unsupported("attention heads over channels written in several parts")
        for seg in x.segs:  # q, k and v lose the same heads: one group, a head per unit
            self.uf.union(x.segs[0].space, seg.space)
            self.head_spaces.add(seg.space)
            self.units[seg.space] = math.lcm(self.units.get(seg.space, 1), dim)
        lay = _Layout((_Seg(x.segs[0].space, heads),), a + k - 2, len(o), head_dim=dim)
        if attr is not None:
            self.hold_size(attr, lay, dim)
        return lay

    def hold_size(self, attr: tuple[str, str], lay: _Layout, unit: int) -> None:
        """``module.attr`` holds the width of ``lay`` in units of ``unit`` channels; one
        attribute read by several reshapes (q's and kv's head count) ties their groups."""
        if attr in self.size_attrs:
            old = self.size_attrs[attr][0]
            if [s.length for s in old.segs] != [s.length for s in lay.segs] or \
                    self.size_units.get(attr, 1) != unit:
                raise _Unsupported(f"{attr[0]}.{attr[1]} holds differently laid-out sizes")
            for sa, sb in zip(old.segs, lay.segs, strict=True):
                self.uf.union(sa.space, sb.space)
            return
        self.size_attrs[attr] = [lay]
        self.size_units[attr] = unit

    def _head_reshape(self, node: fx.Node, x: _Layout) -> _Layout:
        """Merge (H, D) back into channels, or a reshape that keeps heads an axis of their own."""
        src, out = _meta(node.args[0]), _meta(node)
        if src is None or out is None:
            raise _Unsupported("reshape of attention heads of unknown shape")
        s, o, h = tuple(int(d) for d in src.shape), tuple(int(d) for d in out.shape), x.axis
        written = _literal_sizes(node)
        if written is not None and len(written) != len(o):
            raise _Unsupported(f"reshape of attention heads {s} -> {o}")
        if h + 1 < len(s) and len(o) == len(s) - 1 and o[:h] == s[:h] and \
                s[h + 1] == x.head_dim and o[h] == s[h] * s[h + 1] and o[h + 1:] == s[h + 2:]:
            merged = _Layout(tuple(_Seg(g.space, g.length * x.head_dim) for g in x.segs),
                             h, len(o))
            self._follows(node, written, h, merged, 1, "merged width")
            return merged
        before = math.prod(s[:h])
        for b in range(1, len(o)):
            if math.prod(o[:b]) == before and o[b] == s[h]:
                lay = dataclasses.replace(x, axis=b, ndim=len(o))
                self._follows(node, written, b, lay, x.head_dim, "head count")
                return lay
            if math.prod(o[:b]) > before:
                break
        raise _Unsupported(f"reshape {s} -> {o} that mixes attention heads with other axes")

    def _follows(self, node: fx.Node, written: list[Any] | None, pos: int, lay: _Layout,
                 unit: int, what: str) -> None:
        """The size at ``pos`` must follow pruning: -1, a flatten, or a module attribute."""
        if written is None or written[pos] == -1:
            return
        if isinstance(written[pos], fx.Node):
            raise _Unsupported(f"attention {what} computed at run time (would not follow "
                               "pruning); use -1 or a module attribute")
        self.hold_size(self._size_attribute(node, int(written[pos]), f"attention {what}"), lay,
                       unit)

    # ------------------------------------------------------------------ per-head ops
    def visit_heads(self, node: fx.Node) -> Any:
        """An op reading a tensor laid out by heads: per-head ops only."""
        target, op = node.target, node.op
        if op == "call_function" and target is operator.getitem:
            return self._head_getitem(node)
        if op == "call_function" and target is getattr or \
                op == "call_method" and target in _SIZE_METHODS:
            return None
        inputs = [self.layouts[a] for a in _node_args(node)
                  if isinstance(self.layouts.get(a), _Layout)]
        x = next(lay for lay in inputs if lay.head_dim)
        if op == "call_module":
            m = self.modules[target]
            if type(m) in _PASS_MODULES:
                return self._same(node, x)
            if isinstance(m, _HEAD_NORMS) and len(m.normalized_shape) == 1 and \
                    x.axis != x.ndim - 1:  # qk-norm over a head's own channels
                return self._same(node, x)
            raise _Unsupported(f"module {type(m).__name__} on attention heads")
        name = target if op == "call_method" else None
        fn = target if op == "call_function" else None
        if name in AXIS_MOVE_METHODS or fn in AXIS_MOVE_FUNCTIONS:
            return dataclasses.replace(x, **_moved(node, x))
        if name in _PASS_METHODS or fn in _PASS_FUNCTIONS:
            return self._same(node, x)
        if name in _SOFTMAX_METHODS or fn in _SOFTMAX_FUNCTIONS:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if not isinstance(dim, int) or dim % x.ndim == x.axis:
                raise _Unsupported("softmax over attention heads")
            return self._same(node, x)
        if name in _BINARY_METHODS - {"expand_as"} or fn in _BINARY_FUNCTIONS:
            return self._per_head(node, _node_args(node))
        if name == "matmul" or fn in _MATMUL_FUNCTIONS:
            return self._matmul(node)
        if fn is _SDPA:
            return self._sdpa(node)
        if _name(fn) in _MASK_RESOLVERS and _meta(node) is None:
            return None  # no mask: nothing is added
        if _name(fn) in _MASK_ADDERS:
            return self._per_head(node, _node_args(node))
        if name in _RESHAPE_METHODS or fn in _RESHAPE_FUNCTIONS:
            return self._head_reshape(node, x)
        if name == "unbind" or fn is torch.unbind:
            return self._unbind(node, x)
        raise _Unsupported(f"{_name(target)} on attention heads")

    def _same(self, node: fx.Node, x: _Layout) -> _Layout:
        out = _meta(node)
        if out is None or len(out.shape) != x.ndim or int(out.shape[x.axis]) != x.channels:
            raise _Unsupported(f"{_name(node.target)} changed the attention heads")
        return x

    def _head_getitem(self, node: fx.Node) -> Any:
        value, idx = self.layouts.get(node.args[0]), node.args[1]
        part = getitem_of_parts(value, idx)
        if part is not None:
            return part
        if not isinstance(value, _Layout):
            raise _Unsupported("indexing of attention heads")
        items = idx if isinstance(idx, tuple) else (idx,)
        if not all(isinstance(i, int) or i is Ellipsis or i is None or (
                isinstance(i, slice) and all(v is None or isinstance(v, int)
                                             for v in (i.start, i.stop, i.step)))
                   for i in items):
            raise _Unsupported("indexing of attention heads with tensors")
        sizes = [2 + i for i in range(value.ndim)]
        sizes[value.axis] = 1000 + value.channels  # a size nothing else has
        out = torch.empty(sizes, device="meta")[idx]
        where = [d for d, n in enumerate(out.shape) if n == sizes[value.axis]]
        if len(where) != 1:
            raise _Unsupported("indexing across attention heads")
        return dataclasses.replace(value, axis=where[0], ndim=out.dim())

    def _unbind(self, node: fx.Node, x: _Layout) -> tuple[_Layout, ...]:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        metas = node.meta.get("tensor_meta")
        if not isinstance(dim, int) or dim % x.ndim == x.axis or not isinstance(
                metas, (list, tuple)):
            raise _Unsupported("unbind of attention heads")
        axis = x.axis - (dim % x.ndim < x.axis)
        return tuple(dataclasses.replace(x, axis=axis, ndim=x.ndim - 1) for _ in metas)

    def _per_head(self, node: fx.Node, operands: list[fx.Node]) -> _Layout:
        """The output's head axis; every head operand on it (merged), every other tensor of
        size 1 there (shared by all heads: a scale, a mask)."""
        out = _meta(node)
        if out is None:
            raise _Unsupported("attention op of unknown shape")
        n = len(out.shape)
        heads = [dataclasses.replace(lay, axis=lay.axis + n - lay.ndim, ndim=n)
                 for lay in (self.layouts.get(a) for a in operands)
                 if isinstance(lay, _Layout) and lay.head_dim]
        base = heads[0]
        for other in heads[1:]:
            if other.axis != base.axis or other.head_dim != base.head_dim or \
                    [s.length for s in other.segs] != [s.length for s in base.segs]:
                raise _Unsupported("attention heads of different layouts combined")
            for sa, sb in zip(base.segs, other.segs, strict=True):
                self.uf.union(sa.space, sb.space)
        for a in operands:  # any other tensor must be shared by all heads
            lay, meta = self.layouts.get(a), _meta(a)
            if meta is not None and not (isinstance(lay, _Layout) and lay.head_dim):
                pos = base.axis - (n - len(meta.shape))
                if pos >= 0 and int(meta.shape[pos]) != 1:
                    raise _Unsupported("per-head tensor of unknown origin (a bias table?) "
                                       "on attention heads")
        if base.axis >= n or int(out.shape[base.axis]) != base.channels:
            raise _Unsupported("broadcasting that changes the attention heads")
        return base

    def _matmul(self, node: fx.Node) -> _Layout:
        a, b = node.args[0], node.args[1]
        out, ma, mb = _meta(node), _meta(a), _meta(b)
        if out is None or ma is None or mb is None or min(len(ma.shape), len(mb.shape)) < 3:
            raise _Unsupported("matmul of attention heads of unknown shape")
        lay = self._per_head(node, [a, b])
        if lay.axis >= len(out.shape) - 2:
            raise _Unsupported("matmul over the attention heads")
        self._charge(lay, math.prod(int(d) for d in out.shape) * int(ma.shape[-1]))
        return lay

    def _sdpa(self, node: fx.Node) -> _Layout:
        names = ("query", "key", "value", "attn_mask")
        args = {k: node.args[i] if len(node.args) > i else node.kwargs.get(k)
                for i, k in enumerate(names)}
        if node.kwargs.get("enable_gqa"):
            raise _Unsupported("grouped-query attention (heads shared by several queries)")
        q, k, v = (_meta(args[n]) for n in names[:3])
        if q is None or k is None or v is None:
            raise _Unsupported("scaled_dot_product_attention of unknown shape")
        operands = [args[n] for n in names if isinstance(args[n], fx.Node)]
        if not all(isinstance(self.layouts.get(args[n]), _Layout)
                   and self.layouts[args[n]].head_dim for n in names[:3]):
            raise _Unsupported("attention with q, k or v not laid out by heads")
        lay = self._per_head(node, operands)
        if lay.axis >= len(q.shape) - 2:
            raise _Unsupported("attention over the heads axis")
        rows = math.prod(int(d) for d in q.shape[:-1])  # batch x heads x queries
        self._charge(lay, rows * int(k.shape[-2]) * (int(q.shape[-1]) + int(v.shape[-1])))
        return lay

    def _charge(self, lay: _Layout, macs: int) -> None:
        """MACs of a per-head op, per head and sample (the cost model's term per kept unit)."""
        per = macs / max(self.batch, 1) / max(lay.channels, 1)
        space = lay.segs[0].space
        self.op_macs[space] = self.op_macs.get(space, 0.0) + per


def _moved(node: fx.Node, x: _Layout) -> dict[str, int]:
    moved = moved_layout(node, x)
    return {"axis": moved.axis, "ndim": moved.ndim}
