"""Cost models as functions of the kept channel count of every group.

Each conv/linear costs ``coef * c_in * c_out`` (``c_in`` a weighted sum of its input groups'
counts, ``c_out`` its output group's count; a producer whose output has parts in several groups
is one term per part), each depthwise conv / norm / per-channel parameter
``coef * c``. Everything is precomputed into small arrays once, so a solver can evaluate
thousands of keep-counts without tracing or running the model again (``cost_batch``). Whatever
the structure does not model (grouped convs, ops outside known layers) is a constant measured
once with an independent counter, so ``cost(full counts)`` equals the whole model's cost.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from prunecli.cost.counting import count_macs, count_params
from prunecli.errors import ConfigError
from prunecli.registry import Registry
from prunecli.structure import ChannelStructure

if TYPE_CHECKING:
    from prunecli.cost.latency_model import LatencyCostModel


@dataclass
class _Terms:
    """cost(x) = sum(bil * (A @ x) * xo) + lin @ x + const, with xo = x[out] (1 if no out)."""

    a: np.ndarray  # (layers, groups): input channels of each layer per group count
    out: np.ndarray  # (layers,): output group index, or -1 for "1"
    bil: np.ndarray  # (layers,): coefficient of c_in * c_out
    lin: np.ndarray  # (groups,): cost per kept channel (depthwise, norms, biases, ...)
    const: float


class CountsCost(ABC):
    """What every cost model offers on top of its ``cost_batch``: the cost of one count
    mapping (groups not listed stay whole) and the fraction of the dense cost kept."""

    full: np.ndarray  # every group's full width
    dense: float

    @abstractmethod
    def cost_batch(self, x: np.ndarray) -> np.ndarray:
        """Costs of many count vectors at once: ``x`` is (batch, groups)."""

    def counts_vector(self, counts: Mapping[int, int] | None = None) -> np.ndarray:
        x = self.full.copy()
        for gid, c in (counts or {}).items():
            x[gid] = c
        return x

    def cost(self, counts: Mapping[int, int] | np.ndarray | None = None) -> float:
        """Cost with ``counts[g]`` channels kept in group ``g`` (others whole)."""
        x = counts if isinstance(counts, np.ndarray) else self.counts_vector(counts)
        return float(self.cost_batch(np.asarray(x, dtype=np.float64)[None])[0])

    def ratio(self, counts: Mapping[int, int] | np.ndarray | None = None) -> float:
        """Fraction of the dense cost kept."""
        return self.cost(counts) / self.dense if self.dense else 1.0


class CostModel(CountsCost):
    """A cost (MACs, params or memory bytes) for any kept-channel counts of a structure."""

    def __init__(self, name: str, unit: str, structure: ChannelStructure, terms: _Terms) -> None:
        self.name = name
        self.unit = unit
        self.structure = structure
        self.terms = terms
        self.full = np.array([g.size for g in structure.groups], dtype=np.float64)
        self.dense = float(self.cost_batch(self.full[None])[0])

    # ------------------------------------------------------------------ evaluation
    def cost_batch(self, x: np.ndarray) -> np.ndarray:
        """Costs of many count vectors at once: ``x`` is (batch, groups)."""
        t = self.terms
        ones = np.ones((x.shape[0], 1))
        xo = np.concatenate([x, ones], axis=1)[:, t.out]  # out == -1 picks the ones column
        return (x @ t.a.T * xo) @ t.bil + x @ t.lin + t.const

    # ------------------------------------------------------------------ for allocators
    def group_curves(self, counts: Mapping[int, int] | np.ndarray | None = None,
                     side_weight: float = 1.0) -> dict[int, np.ndarray]:
        """Additive per-group cost curves around ``counts`` (others fixed), for knapsack
        solvers: ``curve[g][c]`` for c = 0..size.

        A conv/linear's ``c_in * c_out`` cost is split between its input and output groups:
        ``side_weight`` of it is charged to the input side (the consumer view, SMCP's
        ``channel_doublesided_weight`` = 1, the default) and the rest to the output side
        (0: the producer view, as in HALP). At ``counts`` the curves add up to the exact cost
        (minus the constant); away from it they are the first-order, per-group view.
        """
        if not 0.0 <= side_weight <= 1.0:
            raise ConfigError(f"side_weight={side_weight} must be in [0, 1]")
        t = self.terms
        x = counts if isinstance(counts, np.ndarray) else self.counts_vector(counts)
        cin = t.a @ x
        cout = np.append(x, 1.0)[t.out]
        curves = {}
        for g in self.structure.groups:
            gid = g.id
            per_channel = t.lin[gid]
            # input side: layers reading g, c_in grows by a[l, g] per channel of g
            per_channel += side_weight * float(np.sum(t.bil * t.a[:, gid] * cout))
            # output side: layers writing g (depthwise-like terms have out == -1)
            writes = t.out == gid
            per_channel += (1.0 - side_weight) * float(np.sum(t.bil[writes] * cin[writes]))
            curves[gid] = per_channel * np.arange(g.size + 1, dtype=np.float64)
        return curves


# ---------------------------------------------------------------------------- building
def _layer_geometry(model: nn.Module, structure: ChannelStructure
                    ) -> list[tuple[str, str, nn.Module, float]]:
    """(name, kind, module, per-sample output positions of all calls x kernel area) for
    modeled layers."""
    modules = dict(model.named_modules())
    rows = []
    for name, role in structure.roles.items():
        m = modules[name]
        if name not in structure.shapes:
            continue
        positions = structure.positions[name]  # all calls: a shared head runs at every level
        if role.kind in ("conv", "depthwise"):
            rows.append((name, role.kind, m, positions * math.prod(m.kernel_size)))
        elif role.kind == "linear":
            rows.append((name, role.kind, m, positions))
        else:
            rows.append((name, role.kind, m, 0.0))
    return rows


def _in_matrix_row(structure: ChannelStructure, name: str, n_groups: int) -> np.ndarray:
    row = np.zeros(n_groups)
    for seg in structure.roles[name].in_segments:
        row[seg.group] += seg.spatial
    return row


def _terms(model: nn.Module, structure: ChannelStructure, what: str) -> _Terms:
    n = len(structure.groups)
    a_rows, outs, bils = [], [], []
    lin = np.zeros(n)
    for name, kind, m, geo in _layer_geometry(model, structure):
        role = structure.roles[name]
        if kind in ("conv", "linear"):
            has_bias = getattr(m, "bias", None) is not None
            k = math.prod(m.kernel_size) if kind == "conv" else 1
            row = _in_matrix_row(structure, name, n)
            for seg in role.out_segments:  # one term per part of the output (usually one)
                a_rows.append(row)
                outs.append(seg.group)
                # seg.spatial: output channels per kept unit of the segment's group
                bils.append(geo * seg.spatial if what == "macs" else float(k) * seg.spatial)
                if what == "params" and has_bias:  # weight c_in*c_out*k*k, bias c_out
                    lin[seg.group] += seg.spatial
        elif kind == "depthwise":  # per channel (a grouped conv: per unit of ``spatial``
            width = m.in_channels // m.groups  # channels, each reading ``width`` inputs)
            per = geo * width if what == "macs" else (
                math.prod(m.kernel_size) * width + (1 if m.bias is not None else 0))
            for seg in role.in_segments:  # a group may appear in several segments
                lin[seg.group] += per * seg.spatial
        elif what == "params" and kind in ("norm", "prelu", "grn"):
            per = sum(1 for p in ("weight", "bias") if getattr(m, p, None) is not None)
            for seg in role.in_segments:
                lin[seg.group] += per * seg.spatial
    if what == "macs":  # attention's matmuls, per kept head
        for gid, macs in structure.op_macs.items():
            lin[gid] += macs
    if what == "params":
        for p in structure.params:
            for seg in p.segments:
                lin[seg.group] += seg.spatial
    a = np.array(a_rows) if a_rows else np.zeros((0, n))
    return _Terms(a, np.array(outs, dtype=np.int64), np.array(bils, dtype=np.float64), lin, 0.0)


COSTS: Registry[str] = Registry("cost")
for _name, _doc in (
        ("macs", "multiply-accumulates of one image's forward pass (also: flops)"),
        ("params", "number of parameters"),
        ("memory", "bytes of weights + layer outputs at cost.batch_size (inference memory)"),
        ("latency", "ms on a device, from a `prunecli lut` table (cost.table=PATH)")):
    COSTS.register(_name, _doc)(_name)


def build_cost_model(name: str, model: nn.Module, structure: ChannelStructure,
                     example_inputs: torch.Tensor, batch_size: int = 1,
                     bytes_per_value: int = 4, table: str | None = None,
                     allow_mismatch: bool = False) -> CostModel | LatencyCostModel:
    """``macs`` (per sample), ``params``, ``memory`` (bytes of weights + output
    activations of the modeled layers at ``batch_size``), or ``latency`` (ms, from the
    ``prunecli lut`` file ``table``)."""
    if name != "flops":
        COSTS.get(name)  # unknown names: the registry's one-line error with suggestions
    if name == "latency":
        from prunecli.cost.latency_model import build_latency_cost_model

        return build_latency_cost_model(model, structure, example_inputs, table=table,
                                        allow_mismatch=allow_mismatch)
    if name in ("macs", "flops"):
        terms = _terms(model, structure, "macs")
        dense = count_macs(model, example_inputs)
        unit = "MACs"
    elif name == "params":
        terms = _terms(model, structure, "params")
        dense = count_params(model)
        unit = "params"
    elif name == "memory":
        return _memory_model(model, structure, example_inputs, batch_size, bytes_per_value)
    else:
        raise ConfigError(f"cost '{name}' has no channel cost model; use macs, params or memory")
    modeled = CostModel(name, unit, structure, terms).dense
    terms.const = float(dense) - modeled
    return CostModel(name, unit, structure, terms)


def _memory_model(model: nn.Module, structure: ChannelStructure, example: torch.Tensor,
                  batch_size: int, nbytes: int) -> CostModel:
    """Weights plus the outputs of every modeled layer (what inference must hold), in bytes."""
    params = _terms(model, structure, "params")
    n = len(structure.groups)
    act = np.zeros(n)
    const_act = 0.0
    for name, role in structure.roles.items():
        if name not in structure.shapes or role.kind not in ("conv", "linear", "depthwise"):
            continue
        _, out_shape = structure.shapes[name]
        per_channel = structure.positions[name]  # all calls
        if role.kind == "depthwise":
            for seg in role.in_segments:
                act[seg.group] += per_channel * seg.spatial
        elif not role.out_segments:
            const_act += per_channel * out_shape[1]
        for seg in role.out_segments:
            act[seg.group] += per_channel * seg.spatial
    terms = _Terms(params.a, params.out, params.bil * nbytes,
                   params.lin * nbytes + act * batch_size * nbytes, 0.0)
    dense_weights = count_params(model) * nbytes
    weights_modeled = CostModel("params", "params", structure, params).dense * nbytes
    terms.const = (dense_weights - weights_modeled) + const_act * batch_size * nbytes
    return CostModel("memory", "bytes", structure, terms)
