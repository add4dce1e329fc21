"""The layers a latency cost model prices: every conv/linear/depthwise the traced structure knows,
one spec per input size, with where its channel counts come from (:class:`LayerSpec`), and the
fingerprint under which a table stores a whole model's measurements."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from torch import nn

from prunecli.cost.latency_signature import Signature, signature_of
from prunecli.structure import ChannelStructure

MODELED = ("conv", "linear", "depthwise")


# ----------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class LayerSpec:
    """One modeled layer: its signature, where its channel counts come from, its full widths."""

    name: str
    kind: str
    signature: Signature
    in_weights: tuple[tuple[int, int], ...]  # (group, input features per channel of the group)
    # (group, output channels per kept unit of the group): usually one group, several where
    # the output has parts (structure.refine); empty: c_out fixed at ``c_out`` (depthwise)
    out_weights: tuple[tuple[int, int], ...]
    c_in: int  # full input width (features)
    c_out: int  # full output width
    calls: int
    out_positions: int  # output values per channel per sample, all calls (H*W; linear: rows)


def collect_layers(model: nn.Module, structure: ChannelStructure) -> list[LayerSpec]:
    """The conv/linear/depthwise layers the traced structure knows, in trace order; a layer
    called at several input sizes (a head shared by pyramid levels) gives one spec per size,
    each timed at its own signature."""
    modules = dict(model.named_modules())
    out = []
    for name, role in structure.roles.items():
        if role.kind not in MODELED or name not in structure.shapes:
            continue
        weights: dict[int, int] = {}
        for seg in role.in_segments:
            weights[seg.group] = weights.get(seg.group, 0) + seg.spatial
        outs: dict[int, int] = {}
        for seg in role.out_segments if role.kind != "depthwise" else ():
            outs[seg.group] = outs.get(seg.group, 0) + seg.spatial
        c_in = sum(seg.length * seg.spatial for seg in role.in_segments)
        by_shape: dict[tuple, int] = {}  # (in, out) shape -> calls, in call order
        for shapes in structure.call_shapes.get(name) or [structure.shapes[name]] * int(
                structure.calls.get(name, 1)):
            by_shape[shapes] = by_shape.get(shapes, 0) + 1
        for (in_shape, out_shape), calls in by_shape.items():
            c_out = c_in if role.kind == "depthwise" else int(
                out_shape[1 if role.kind != "linear" else -1])
            positions = math.prod(out_shape[2:]) if role.kind != "linear" else math.prod(
                out_shape[1:-1])
            out.append(LayerSpec(name, role.kind,
                                 signature_of(modules[name], role.kind, in_shape),
                                 tuple(sorted(weights.items())), tuple(sorted(outs.items())),
                                 int(c_in), c_out, calls, int(positions) * calls))
    return out


def model_fingerprint(model: nn.Module, structure: ChannelStructure,
                      layers: list[LayerSpec] | None = None) -> str:
    """Readable, stable id of an architecture at an input size (per-sample): the table's
    whole-model measurements are stored under it."""
    layers = collect_layers(model, structure) if layers is None else layers
    shape = [int(s) for s in structure.input_shape[1:]]
    payload = [type(model).__name__, shape, [g.size for g in structure.groups],
               [(s.name, s.signature.key, s.c_in, s.c_out, s.calls) for s in layers]]
    digest = hashlib.sha1(json.dumps(payload).encode()).hexdigest()[:10]
    return f"{type(model).__name__}-{'x'.join(map(str, shape))}-{digest}"


