"""Models torch.fx cannot trace as a whole: trace their pieces.

One data-dependent branch (MobileViT's patch unfolding, an ``if x.shape[-1] > ...``) stops fx for
the whole model, though the blocks below it usually trace. So each child that fx accepts is
traced on the input it received in one forward pass of the model, and its channel structure is
merged into the model's under its full module names; a child fx rejects is split further, down to
single layers. A piece's inputs and outputs stay whole (what the untraced code around it does
with them is unknown), while the channels inside it prune exactly as in any traced model, so the
result keeps prunecli's rule: never a wrong slim model.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

import torch
from torch import nn

from prunecli.structure.analyse import TraceResult, analyse, eval_mode
from prunecli.structure.trace import TraceError
from prunecli.structure.types import ChannelGroup, ModuleRole, ParamSlice, Segment, SizeAttr

log = logging.getLogger("prunecli")

_WRAP = "piece"  # the attribute a piece is traced under (a bare layer traces as a call_module)


class _Piece1(nn.Module):
    """One piece under a fixed name, with a fixed number of inputs (fx needs the arity)."""

    def __init__(self, piece: nn.Module) -> None:
        super().__init__()
        self.piece = piece

    def forward(self, a: Any) -> Any:
        return self.piece(a)


class _Piece2(_Piece1):
    def forward(self, a: Any, b: Any) -> Any:  # type: ignore[override]
        return self.piece(a, b)


class _Piece3(_Piece1):
    def forward(self, a: Any, b: Any, c: Any) -> Any:  # type: ignore[override]
        return self.piece(a, b, c)


_WRAPPERS = {1: _Piece1, 2: _Piece2, 3: _Piece3}


def _capture_calls(model: nn.Module, inputs: tuple[torch.Tensor, ...]
                   ) -> dict[str, tuple[tuple[Any, ...], dict[str, Any], int]]:
    """Each submodule's first-call arguments and its number of calls in one eval forward."""
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any], int]] = {}
    handles = []

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name in calls:
                a, k, n = calls[name]
                calls[name] = (a, k, n + 1)
            else:
                calls[name] = (args, kwargs, 1)
        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(hook(name), with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return calls


def analyse_pieces(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                   ignore: tuple[str, ...], error: TraceError) -> TraceResult:
    """The channel structure of ``model`` from its traceable pieces; ``error`` (why the whole
    model did not trace) is raised again when no piece has a prunable channel."""
    try:
        with eval_mode(model):  # the pieces' wrappers must not put the model in training mode
            calls = _capture_calls(model, inputs)
            result = _analyse_children(model, calls, ignore, _batch(inputs))
    except TraceError:
        raise
    except Exception as exc:  # the model does not even run on this input
        raise error from exc
    if not any(g.prunable for g in result.groups):
        raise error
    return result


def _batch(inputs: tuple[Any, ...]) -> int:
    first = inputs[0] if inputs else None
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


def _analyse_children(model: nn.Module, calls: dict[str, Any], ignore: tuple[str, ...],
                      batch: int) -> TraceResult:
    pieces: list[tuple[str, TraceResult, int, float]] = []
    untraceable = [type(model).__name__]

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = prefix + child_name
            if name not in calls:
                continue  # never called: nothing to trace, nothing that costs
            args, kwargs, count = calls[name]
            wrapper = _WRAPPERS.get(len(args))
            if wrapper and not kwargs and all(isinstance(a, torch.Tensor) for a in args):
                try:
                    # per model sample: MobileViT's transformer runs on patches folded
                    # into the batch, so one of its samples is a fraction of an image
                    per_sample = count * _batch(tuple(args)) / batch
                    pieces.append((name, analyse(wrapper(child), tuple(args)), count,
                                   per_sample))
                    continue
                except TraceError:
                    pass
            untraceable.append(name)
            visit(child, name + ".")

    visit(model, "")
    result = _merge(pieces, untraceable)
    _exclude(result, ignore)
    log.warning("channel structure: torch.fx cannot trace %s; traced %d pieces separately "
                "(their inputs and outputs stay whole)", ", ".join(untraceable), len(pieces))
    return result


def _merge(pieces: list[tuple[str, TraceResult, int, float]], untraceable: list[str]
           ) -> TraceResult:
    """The pieces' results under full names; a piece called ``count`` times runs its layers
    that often, and ``per_sample`` of its samples make one sample of the model."""
    out = TraceResult([], {}, [], [], {}, {}, {}, {})
    for name, res, count, per_sample in pieces:
        offset = len(out.groups)

        def rename(inner: str, name: str = name) -> str:
            return name + inner[len(_WRAP):] if inner.startswith(_WRAP) else inner

        def segments(segs: tuple[Segment, ...], offset: int = offset) -> tuple[Segment, ...]:
            return tuple(Segment(s.group + offset, s.offset, s.length, s.spatial) for s in segs)

        for g in res.groups:
            key = rename(g.key) if g.producers else f"{g.key.split(':')[0]}:{g.id + offset}"
            out.groups.append(ChannelGroup(
                id=g.id + offset, size=g.size, key=key,
                producers=[rename(n) for n in g.producers],
                consumers=[rename(n) for n in g.consumers],
                followers=[rename(n) for n in g.followers],
                params=[rename(p) for p in g.params],
                reasons=[_boundary(r, name) for r in g.reasons], droppable=g.droppable,
                unit=g.unit))
        for role in res.roles.values():
            new = ModuleRole(rename(role.name), role.kind, segments(role.in_segments),
                             segments(role.out_segments))
            out.roles[new.name] = new
        out.size_attrs += [SizeAttr(rename(sa.module), sa.attr,
                                    tuple(segments(part) for part in sa.parts), sa.unit)
                           for sa in res.size_attrs]
        for gid, macs in res.op_macs.items():
            out.op_macs[gid + offset] = macs * per_sample
        out.params += [ParamSlice(rename(p.module), p.attr, segments(p.segments))
                       for p in res.params]
        out.unknown_ops += [op for op in res.unknown_ops if op not in out.unknown_ops]
        for inner, shapes in res.shapes.items():
            out.shapes[rename(inner)] = shapes
        for inner, n in res.calls.items():  # a piece called k times runs its layers k times
            out.calls[rename(inner)] = n * count
        for inner, n in res.positions.items():
            out.positions[rename(inner)] = n * per_sample
        for inner, shapes in res.call_shapes.items():
            out.call_shapes[rename(inner)] = list(shapes) * count
    out.unknown_ops.append(f"untraceable by torch.fx: {', '.join(untraceable)} (traced piecewise)")
    return out


def _boundary(reason: str, piece: str) -> str:
    """A piece's own input/output is a boundary with untraced code, not the model's."""
    if reason == "model input":
        return f"input of {piece}, traced alone (its parent is not traceable)"
    if reason == "reaches the model output":
        return f"output of {piece}, traced alone (its parent is not traceable)"
    return reason


def _exclude(result: TraceResult, ignore: tuple[str, ...]) -> None:
    """``ignore`` patterns on full module names, as :class:`_Analysis` applies them."""
    for pattern in ignore:
        for name, role in result.roles.items():
            if fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + "."):
                reason = f"excluded by the user ({pattern})"
                ids = {s.group for s in (*role.in_segments, *role.out_segments)}
                for gid in ids:
                    if reason not in result.groups[gid].reasons:
                        result.groups[gid].reasons.append(reason)
