"""From a model to its channel groups: trace, walk the graph, collect groups and roles.

:func:`analyse` runs :mod:`prunecli.structure.trace` on a model and gathers its result into a
:class:`TraceResult`: the groups (with their producers, consumers, followers and the reasons a
group stays whole), each module's role, the parameter slices, and per-module shapes and call
counts that the cost models need.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from prunecli.structure.droppable import mark_droppable
from prunecli.structure.holders import HolderCache
from prunecli.structure.layouts import _Layout, _meta, _Seg
from prunecli.structure.trace import TraceError, _Analysis, fx_trace
from prunecli.structure.types import ChannelGroup, ModuleRole, ParamSlice, Segment, SizeAttr

log = logging.getLogger("prunecli")

# passes of the analysis at most: each may cut producers' outputs (structure.refine); a cut
# that is still asked for after the last pass leaves its spaces whole (their reasons stand)
_MAX_PASSES = 8


@dataclass
class TraceResult:
    groups: list[ChannelGroup]
    roles: dict[str, ModuleRole]
    params: list[ParamSlice]
    unknown_ops: list[str]
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # module -> (in, out) shapes
    calls: dict[str, int]  # module -> number of calls in one forward
    # module -> output positions per channel and sample, summed over its calls (a head shared
    # by pyramid levels runs at every level's size: calls x one shape would be wrong)
    positions: dict[str, float]
    call_shapes: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]  # (in, out) per call
    size_attrs: list[SizeAttr] = field(default_factory=list)  # split sizes slimming rewrites
    # group -> MACs per kept unit and sample of ops outside modules (attention's per-head
    # matmuls), which the MACs cost model adds to the layers' terms
    op_macs: dict[int, float] = field(default_factory=dict)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for a forward pass, then every module's own mode back (``train(flag)`` would
    set one flag on all of them: a frozen BN in a training model, or a piece traced alone
    inside a model in eval, would come back in the wrong mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def analyse(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
            ignore: tuple[str, ...] | list[str] = ()) -> TraceResult:
    """Trace ``model`` and return its channel groups (see :func:`trace_structure`)."""
    gm = fx_trace(model)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        with eval_mode(model), torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:
        raise TraceError(f"running the traced {type(model).__name__} on the example input "
                         f"failed: {str(exc).strip().splitlines()[0]}") from exc
    cuts: dict[str, frozenset[int]] = {}
    holders: HolderCache = {}  # size attributes confirmed (or not) by earlier passes
    for _ in range(_MAX_PASSES):  # cut producers' outputs until no new cut is asked for
        an = _Analysis(gm, set(ignore), cuts, root=model, holder_cache=holders)
        an.run()
        grown = {name: frozenset(cuts.get(name, frozenset()) | asked)
                 for name, asked in an.requests.items()}
        if all(grown[name] == cuts.get(name) for name in grown):
            break
        cuts = {**cuts, **grown}
    return _collect(an, gm)


def _collect(an: _Analysis, gm: fx.GraphModule) -> TraceResult:
    roots = sorted({an.uf.find(s) for s in range(len(an.size))})
    members: dict[int, list[int]] = defaultdict(list)
    for s in range(len(an.size)):
        members[an.uf.find(s)].append(s)
    gid = {r: i for i, r in enumerate(roots)}
    groups = []
    for r in roots:
        sizes = {an.size[s] for s in members[r]}
        reasons: list[str] = []
        for s in members[r]:
            reasons += [x for x in an.reasons.get(s, []) if x not in reasons]
        if len(sizes) != 1:
            reasons.append(f"merged spaces of different sizes {sorted(sizes)}")
        unit = math.lcm(*(an.units.get(s, 1) for s in members[r]))
        if max(sizes) % unit:  # grouped convs of incompatible widths on one group
            reasons.append(f"grouped convs need units of {unit} channels in {max(sizes)}")
            unit = 1
        groups.append(ChannelGroup(id=gid[r], size=max(sizes) // unit, key="",
                                   reasons=reasons, unit=unit))

    def seg_list(x: _Layout) -> tuple[Segment, ...]:
        out, off = [], 0
        for s in x.segs:
            g = groups[gid[an.uf.find(s.space)]]
            out.append(Segment(g.id, off, s.length // g.unit, x.spatial * g.unit))
            off += s.length * x.spatial
        return tuple(out)

    roles: dict[str, ModuleRole] = {}
    for name, role in an.roles.items():
        calls = an.role_calls[name]
        if calls:
            role.in_segments = seg_list(calls[0])
        if name in an.out_segs:
            role.out_segments = seg_list(_Layout(an.out_segs[name], 1, 2))
            for gi in role.out_groups:
                groups[gi].producers.append(name)
        for seg in role.in_segments:
            target = groups[seg.group]
            bucket = target.consumers if role.kind in ("conv", "linear") else target.followers
            if name not in bucket:
                bucket.append(name)
        roles[name] = role
    params = []
    for target, (module, attr, x) in an.params.items():
        ps = ParamSlice(module, attr, seg_list(x))
        params.append(ps)
        for seg in ps.segments:
            groups[seg.group].params.append(target)
    size_attrs = [SizeAttr(module, attr, tuple(seg_list(_as_channels(p)) for p in parts),
                           an.size_units.get((module, attr), 1))
                  for (module, attr), parts in an.size_attrs.items()]
    op_macs: dict[int, float] = defaultdict(float)
    for space, macs in an.op_macs.items():
        op_macs[gid[an.uf.find(space)]] += macs
    for g in groups:
        if g.prunable and not g.consumers:
            g.reasons.append("no layer reads it")
        if g.prunable and not g.producers:
            g.reasons.append("no layer writes it")
        g.key = _key(g, roles)
    mark_droppable(an, gm, groups, roles, lambda space: gid[an.uf.find(space)])
    for sa in size_attrs:  # a split part may not be emptied: its module's code would break
        for part in sa.parts:
            for seg in part:
                groups[seg.group].droppable = False
    for space in an.head_spaces:  # attention with no head left: not every kernel takes it
        groups[gid[an.uf.find(space)]].droppable = False
    shapes, calls = {}, defaultdict(int)
    positions, call_shapes = defaultdict(int), defaultdict(list)
    for node in gm.graph.nodes:
        if node.op == "call_module":
            name = str(node.target)
            calls[name] += 1
            src = _meta(node.args[0]) if node.args else None
            out = _meta(node)
            if src is not None and out is not None:
                shapes[name] = (tuple(src.shape), tuple(out.shape))
                call_shapes[name].append(shapes[name])
                role = roles.get(name)
                positions[name] += _positions(tuple(out.shape), role.kind if role else "")
    if an.unknown_ops:
        log.warning("channel structure: %d op kind(s) not understood, the channels they touch "
                    "are left unpruned: %s", len(an.unknown_ops), ", ".join(sorted(an.unknown_ops)))
    return TraceResult(groups, roles, params, sorted(an.unknown_ops), shapes, dict(calls),
                       dict(positions), dict(call_shapes), size_attrs, dict(op_macs))


def _as_channels(x: _Layout) -> _Layout:
    """A layout by heads as the channels it stands for (each head: ``head_dim`` channels)."""
    if not x.head_dim:
        return x
    return _Layout(tuple(_Seg(s.space, s.length * x.head_dim) for s in x.segs), 0, 1)


def _key(g: ChannelGroup, roles: dict[str, ModuleRole]) -> str:
    """A group's stable name: its first producer, with the channel range when that producer
    writes other groups too (a conv whose output a split cuts: ``conv_pw[0:8]``)."""
    if not g.producers:
        return f"input:{g.id}" if any("model input" in r for r in g.reasons) else f"space:{g.id}"
    role = roles[g.producers[0]]
    if len(role.out_groups) == 1:
        return role.name
    seg = next(s for s in role.out_segments if s.group == g.id)
    return f"{role.name}[{seg.offset}:{seg.offset + seg.length * seg.spatial}]"


def _positions(out_shape: tuple[int, ...], kind: str) -> int:
    """Output values per channel and sample of one call: H x W for a conv (channel axis 1),
    the leading axes between batch and features for a linear (channel axis last)."""
    if kind == "linear":
        return math.prod(out_shape[1:-1])
    return math.prod(out_shape[2:])
