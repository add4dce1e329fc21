"""Space refinement: a producer's output found to be made of parts, and channel splits.

GhostNet adds ``cat([x1, cheap(x1)])`` to a shortcut conv's output, so that conv's output is
really two spaces, one per half (both copies of the ``x1`` channels). MixNet splits a pointwise
conv's output into pieces that separate depthwise convs read, with the sizes held by a module
(``MixedConv2d.splits``). The tracer first sees such a producer's output as one space. When an
elementwise op meets two layouts cut at different places, or a split cuts a space, it asks for
the producer's output to be cut there (``requests``); :func:`prunecli.structure.analyse.analyse`
traces again with the cuts until none is new. A cut producer writes several spaces
(``ModuleRole.out_segments``): each is pruned as its own group, or they form one group when
they merge (GhostNet's halves).

Splits are exact only where slimming can rewrite the sizes: ``chunk`` (equal parts, kept equal
by pruning the parts as one group), ``split`` with sizes that are an attribute of the module
running it (MixNet's list, rewritten at slim time, see ``ChannelStructure.size_attrs``) and
``split`` with one size held by an attribute (Res2Net's ``width``: equal parts, one group, the
attribute rewritten). A size written as a
number in the code stays whole, with the reason.

A mixin of :class:`prunecli.structure.trace._Analysis`.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from prunecli.structure.holders import HolderCache, size_holder
from prunecli.structure.layouts import _Layout, _Seg, _Unsupported

SPLIT_FUNCTIONS = {torch.split: "split", torch.chunk: "chunk", torch.tensor_split: "other"}
SPLIT_METHODS = {"split": "split", "chunk": "chunk", "tensor_split": "other",
                 "split_with_sizes": "split"}


def _bounds(x: _Layout) -> list[int]:
    """Positions along the channel axis where one space ends and the next begins."""
    return list(itertools.accumulate(s.length for s in x.segs))[:-1]


class RefineOps:
    """Cut requests and split rules (state from ``_Analysis``: ``cuts``, ``requests``,
    ``origin``, ``out_segs``, ``size_attrs``, ``modules``, ``uf``, ``new_space``, ``bad``)."""

    cuts: dict[str, frozenset[int]]
    requests: dict[str, set[int]]
    origin: dict[int, tuple[str, int]]
    out_segs: dict[str, tuple[_Seg, ...]]
    size_attrs: dict[tuple[str, str], list[_Layout]]
    root_modules: dict[str, nn.Module]
    holder_cache: HolderCache

    if TYPE_CHECKING:  # provided by _Analysis and the other mixins
        def new_space(self, size: int, reason: str | None = None) -> int: ...
        def union_layouts(self, a: _Layout, b: _Layout, what: str) -> bool: ...

    # ------------------------------------------------------------------ producers
    def producer_layout(self, name: str, size: int, axis: int, ndim: int) -> _Layout:
        """A producer's output: one space, or one per part where earlier passes cut it."""
        if name not in self.out_segs:
            bounds = [0, *sorted(c for c in self.cuts.get(name, ()) if 0 < c < size), size]
            segs = []
            for a, b in itertools.pairwise(bounds):
                space = self.new_space(b - a)
                self.origin[space] = (name, a)
                segs.append(_Seg(space, b - a))
            self.out_segs[name] = tuple(segs)
        return _Layout(self.out_segs[name], axis, ndim)

    def request_cuts(self, x: _Layout, bounds: set[int], apply: bool = True) -> bool:
        """Ask for every space of ``x`` that ``bounds`` (positions along its channel axis) fall
        inside to be cut there. False when a space needs a cut no producer can make (the model
        input, the output of an op not understood); then nothing is requested."""
        wanted: list[tuple[str, list[int]]] = []
        start = 0
        for seg in x.segs:
            inner = sorted(b - start for b in bounds if start < b < start + seg.length)
            if inner:
                origin = self.origin.get(seg.space)
                if origin is None:
                    return False
                name, at = origin
                wanted.append((name, [at + c for c in inner]))
            start += seg.length
        if apply:
            for name, cuts in wanted:
                self.requests.setdefault(name, set()).update(cuts)
        return True

    def refine(self, a: _Layout, b: _Layout) -> bool:
        """Two layouts of one width, cut at different places: request the cuts that make them
        line up; True when both sides can be cut (the next pass merges them part by part)."""
        if a.channels != b.channels or a.spatial != 1 or b.spatial != 1:
            return False
        bounds = set(_bounds(a)) | set(_bounds(b))
        if not (self.request_cuts(a, bounds, apply=False)
                and self.request_cuts(b, bounds, apply=False)):
            return False
        return self.request_cuts(a, bounds) and self.request_cuts(b, bounds)

    # ------------------------------------------------------------------ splits
    def split(self, node: fx.Node, x: _Layout, how: str) -> tuple[_Layout, ...]:
        """``torch.split``/``chunk`` (function or method): the parts' layouts."""
        metas = node.meta.get("tensor_meta")
        if not isinstance(metas, (list, tuple)) or not all(hasattr(m, "shape") for m in metas):
            raise _Unsupported(f"{how} of unknown shape")
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        if not isinstance(dim, int):
            raise _Unsupported(f"{how} along a dim computed at run time")
        if dim % x.ndim != x.axis:  # along batch or space: every part has every channel
            return tuple(_Layout(x.segs, x.axis, len(m.shape), x.spatial, x.guessed)
                         for m in metas)
        if how == "other" or x.spatial != 1:
            raise _Unsupported(f"{_op(node)} across channels")
        sizes = [int(m.shape[x.axis]) for m in metas]
        given = node.args[1] if len(node.args) > 1 else next(iter(
            v for k, v in node.kwargs.items() if k.startswith("split_size")), None)
        equal = how == "chunk" or isinstance(given, int)  # one size for every part
        if equal and len(set(sizes)) != 1:
            raise _Unsupported(f"{how} into unequal parts {sizes}")
        attr = None if how == "chunk" else self._size_attribute(
            node, sizes[0] if isinstance(given, int) else sizes)
        bounds = set(itertools.accumulate(sizes[:-1]))
        if not bounds <= set(_bounds(x)):
            if self.request_cuts(x, bounds):
                raise _Unsupported(f"{how} inside a channel space (cut on the next pass)")
            raise _Unsupported(f"{how} of channels no layer writes as separate parts")
        parts, i = [], 0
        for size in sizes:
            segs, got = [], 0
            while got < size:
                segs.append(x.segs[i])
                got += x.segs[i].length
                i += 1
            parts.append(_Layout(tuple(segs), x.axis, x.ndim, 1, x.guessed))
        if equal:  # equal parts stay equal only if pruned alike: one group
            for part in parts[1:]:
                self.union_layouts(parts[0], part, how)
        if attr is not None:
            self.size_attrs[attr] = parts
        return tuple(parts)

    def _size_attribute(self, node: fx.Node, sizes: list[int] | int,
                        what: str = "split with sizes") -> tuple[str, str]:
        """The module attribute holding a split's sizes (MixedConv2d's ``splits``), or its one
        size for equal parts (Res2Net's ``width``), or a head count: slimming rewrites it.
        Sizes written as numbers in the code would break once channels go."""
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path = (stack[-1][0] if isinstance(stack[-1], tuple) else str(stack[-1])) if stack else ""
        module = self.root_modules.get(path)  # "" is the traced model itself
        found = size_holder(node, path, module, sizes, self.holder_cache) \
            if module is not None else []
        if len(found) != 1:
            owner = type(module).__name__ if module is not None else "its module"
            raise _Unsupported(f"{what} {sizes} not held by one attribute of {owner} "
                               "(sizes written in the code cannot follow pruning)")
        return path, found[0]


def getitem_of_parts(value: Any, idx: Any) -> Any:
    """An element (or slice) of a split's parts, or None when ``value`` holds no parts."""
    if isinstance(value, tuple) and value and isinstance(idx, (int, slice)) and all(
            isinstance(v, _Layout) for v in value):
        return value[idx]
    return None


def _op(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "op")
