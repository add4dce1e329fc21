"""``cost=latency``: a model's latency for any kept-channel counts, from a measured table.

    latency(counts) = sum over modeled layers of calls * L_sig(c_in(counts), c_out(counts))
                      + rest_const + rest_per_activation * V(counts)

``L_sig`` is the table's interpolated per-layer latency (:mod:`prunecli.cost.latency_table`),
``c_in`` the weighted sum of the layer's input groups' counts (a flatten -> linear reads
``spatial`` features per channel), ``c_out`` likewise of its output groups' counts (one group,
or several where its output has parts; depthwise: its input's).

The *rest* is what the table does not cover: norms, activations, residual adds, pooling, grouped
convs left whole, per-op framework overhead. On a CPU it is large (about half of CIFAR
ResNet-20's time at batch 32) and it shrinks with pruning, because those ops are memory-bound
passes over the layers' outputs. So it is not one constant but ``a + b * V``, with ``V(counts)``
the number of output values of the modeled layers per sample (``sum calls * positions *
c_out``), which is linear in the counts. ``a`` and ``b`` are measured, not guessed: ``prunecli
lut`` times the whole model dense and at uniform widths 75/50/25% (interleaved), subtracts the
table's share and fits ``b`` by least squares through the dense point, so ``cost(full) ==
dense`` is exactly the measured dense latency. (A single constant, dense minus the table at full
width, predicted a slimmed ResNet-20 at 30% channels at 3x its measured latency on this
project's CPU.) The fit is stored in the table file per model fingerprint rather than timed when
the cost model is built: the cost model is usually built on a training machine that is not the
device the table describes, and building it must stay fast and deterministic.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunecli.cost.latency_layers import LayerSpec, collect_layers, model_fingerprint
from prunecli.cost.latency_table import (
    LatencyTable,
    LatencyTableError,
    interpolate,
)
from prunecli.cost.model import CountsCost
from prunecli.errors import ConfigError
from prunecli.structure import ChannelStructure


# ----------------------------------------------------------------------------- the model
@dataclass
class _SigBlock:
    """The layers of one signature, evaluated together (vectorised)."""

    key: str
    axes: tuple[np.ndarray, ...]
    ms: np.ndarray
    a: np.ndarray  # (layers, groups): c_in = x @ a.T
    o: np.ndarray  # (layers, groups): c_out = x @ o.T where the row is not all zero
    fixed_out: np.ndarray  # (layers,): c_out of layers whose row of ``o`` is zero
    calls: np.ndarray  # (layers,)
    layer_ids: np.ndarray  # (layers,): index into LatencyCostModel.layers
    depthwise: bool

    def latency(self, cin: np.ndarray, cout: np.ndarray, names: list[str]) -> np.ndarray:
        """Per-call ms; cin/cout (..., layers) with ``names`` the layers (or one name for any
        shape). Errors name the layer and its signature."""
        coords = (cin,) if self.depthwise else (cin, cout)
        name = names[0]
        if len(names) > 1:  # find the first layer (column) outside the grid, if any
            for axis, c in zip(self.axes, coords, strict=True):
                bad = (c != 0) & ((c < axis[0]) | (c > axis[-1]))
                if bad.any():
                    name = names[int(np.argwhere(bad)[0][-1])]
                    break
        return interpolate(self.axes, self.ms, coords, f"{name} ('{self.key}')")


@dataclass
class _Terms:
    """Duck-typing aid for code written against CostModel (``cm.terms.const``)."""

    const: float


class LatencyCostModel(CountsCost):
    """Milliseconds of one forward pass at the table's batch size, for any kept counts; the
    interface of :class:`prunecli.cost.CostModel`."""

    name = "latency"
    unit = "ms"

    def __init__(self, structure: ChannelStructure, table: LatencyTable, layers: list[LayerSpec],
                 rest_const: float = 0.0, rest_per_activation: float = 0.0) -> None:
        self.structure = structure
        self.table = table
        self.layers = layers
        self.full = np.array([g.size for g in structure.groups], dtype=np.float64)
        self.rest = (float(rest_const), float(rest_per_activation))
        self.act_per_channel, self.act_fixed = self._activations()
        # the rest, split like CostModel's terms: per kept channel (lin) and a constant
        self.lin = self.rest[1] * self.act_per_channel
        self.const = self.rest[0] + self.rest[1] * self.act_fixed
        self.terms = _Terms(self.const)
        self._names = [s.name for s in layers]
        self._blocks = self._make_blocks()
        self.dense = float(self.cost_batch(self.full[None])[0])

    def _activations(self) -> tuple[np.ndarray, float]:
        """Output values per sample of the modeled layers: per kept channel of each group,
        and the part no group changes (layers with a fixed output width)."""
        per = np.zeros(len(self.structure.groups))
        fixed = 0.0
        for s in self.layers:
            values = s.out_positions
            if s.kind == "depthwise":
                for gid, w in s.in_weights:
                    per[gid] += values * w
            elif s.out_weights:
                for gid, w in s.out_weights:
                    per[gid] += values * w
            else:
                fixed += values * s.c_out
        return per, fixed

    def activations(self, counts: Mapping[int, int] | np.ndarray | None = None) -> float:
        """``V(counts)``: output values per sample of the modeled layers."""
        x = counts if isinstance(counts, np.ndarray) else self.counts_vector(counts)
        return float(np.asarray(x, dtype=np.float64) @ self.act_per_channel + self.act_fixed)

    def _make_blocks(self) -> list[_SigBlock]:
        n = len(self.structure.groups)
        by_key: dict[str, list[int]] = {}
        for i, s in enumerate(self.layers):
            by_key.setdefault(s.signature.key, []).append(i)
        blocks = []
        for key, ids in by_key.items():
            grid = self.table.grid(key)
            a, o = np.zeros((len(ids), n)), np.zeros((len(ids), n))
            for row, i in enumerate(ids):
                for gid, w in self.layers[i].in_weights:
                    a[row, gid] += w
                for gid, w in self.layers[i].out_weights:
                    o[row, gid] += w
            blocks.append(_SigBlock(
                key, grid.axes, grid.ms, a, o,
                np.array([self.layers[i].c_out for i in ids], dtype=np.float64),
                np.array([self.layers[i].calls for i in ids], dtype=np.float64),
                np.array(ids, dtype=np.int64), grid.signature.kind == "depthwise"))
        return blocks

    # ------------------------------------------------------------------ evaluation
    def _io(self, b: _SigBlock, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cin = x @ b.a.T
        cout = np.where(b.o.any(axis=1), x @ b.o.T, b.fixed_out)
        return cin, cout

    def cost_batch(self, x: np.ndarray) -> np.ndarray:
        """Latencies of many count vectors at once: ``x`` is (batch, groups)."""
        x = np.asarray(x, dtype=np.float64)
        total = self.const + x @ self.lin
        for b in self._blocks:
            cin, cout = self._io(b, x)
            total += b.latency(cin, cout, [self._names[i] for i in b.layer_ids]) @ b.calls
        return total

    def layer_costs(self, counts: Mapping[int, int] | np.ndarray | None = None
                    ) -> dict[str, float]:
        """ms per modeled layer (all its calls) at ``counts``: where the time goes."""
        x = counts if isinstance(counts, np.ndarray) else self.counts_vector(counts)
        x = np.asarray(x, dtype=np.float64)[None]
        out = {}
        for b in self._blocks:
            cin, cout = self._io(b, x)
            ms = b.latency(cin, cout, [self._names[i] for i in b.layer_ids])[0] * b.calls
            for i, v in zip(b.layer_ids, ms, strict=True):  # a layer at several sizes: summed
                out[self._names[i]] = out.get(self._names[i], 0.0) + float(v)
        return out

    def channel_grid(self, group: int) -> np.ndarray:
        """Counts of ``group`` that are measured grid points of every layer whose width it sets
        alone (its producers' c_out, its sole-input consumers' c_in, depthwise followers):
        an allocator's natural options ("allowed" counts)."""
        size = int(self.full[group])
        unit = self.structure.groups[group].unit  # grid axes count channels, counts units
        allowed = np.arange(1, size + 1)
        for b in self._blocks:
            for row in range(len(b.layer_ids)):
                axis, w = None, 0
                if np.count_nonzero(b.o[row]) == 1 and b.o[row, group] and not b.depthwise:
                    axis, w = b.axes[1], int(b.o[row, group])  # c_out = w * count
                elif np.count_nonzero(b.a[row]) == 1 and b.a[row, group] == unit:
                    axis, w = b.axes[0], unit
                if axis is not None:
                    allowed = np.intersect1d(allowed, axis[axis % w == 0] // w)
        return np.union1d(allowed, [size]).astype(np.int64)

    # ------------------------------------------------------------------ for allocators
    def group_curves(self, counts: Mapping[int, int] | np.ndarray | None = None,
                     side_weight: float = 1.0) -> dict[int, np.ndarray]:
        """Additive per-group latency curves around ``counts`` (others fixed): ``curve[g][c]``
        for c = 0..size, mirroring :meth:`CostModel.group_curves`.

        With ``x`` = counts and ``L_l`` a conv/linear's table latency (times its calls):

        * output side, charged to the group ``l`` writes:
          ``(1 - w) * (L_l(c_in(x), c) - L_l(c_in(x), 0))``
        * input side, charged to each group ``g`` ``l`` reads:
          ``w * s_l * (L_l(c_in(x; g=c), c_out(x)) - L_l(c_in(x; g=0), c_out(x)))``
        * depthwise layers: the input side with ``w = 1``; a layer with a fixed output width
          (no output group) also charges everything to its input side.

        * the rest's activation part ``b * V``: ``b`` times the output values per channel of
          the group, times ``c`` (linear, like CostModel's per-channel terms).

        ``L(.., 0) = 0`` (a layer with no channels is removed). ``s_l = L_l(x) / sum over g of
        the brackets at x``, which is 1 when the layer reads one group (the usual case) and
        for any table that is linear in c_in; it makes the curves add up, at ``counts``, to
        ``cost(counts) - terms.const`` exactly, as CostModel's do. Away from ``counts`` they are the
        per-group, others-fixed view. Groups the table holds only at full width (unprunable:
        the input, the classifier's outputs) get a proportional curve ``c / size`` of their
        charge at full width (only that value is ever used for them).
        """
        if not 0.0 <= side_weight <= 1.0:
            raise ConfigError(f"side_weight={side_weight} must be in [0, 1]")
        x = counts if isinstance(counts, np.ndarray) else self.counts_vector(counts)
        x = np.asarray(x, dtype=np.float64)
        parts: dict[int, list[tuple[np.ndarray, float]]] = {g.id: [] for g in
                                                            self.structure.groups}
        for b in self._blocks:
            for row in range(len(b.layer_ids)):
                self._layer_curves(b, row, x, side_weight, parts)
        return {gid: self._combine(gid, x, items) for gid, items in parts.items()}

    def _layer_curves(self, b: _SigBlock, row: int, x: np.ndarray, w: float,
                      parts: dict[int, list[tuple[np.ndarray, float]]]) -> None:
        """Append (curve over c = 0..size, value at x) per group this layer charges."""
        name = [self._names[b.layer_ids[row]]]
        a, calls = b.a[row], float(b.calls[row])
        o = b.o[row] if not b.depthwise else np.zeros_like(a)
        cin = float(a @ x)
        writers = [int(g) for g in np.flatnonzero(o)]
        cout = float(o @ x) if writers else float(b.fixed_out[row])
        readers = [int(g) for g in np.flatnonzero(a)]
        w_in = (w if writers else 1.0) if readers else 0.0
        here = calls * float(b.latency(np.array([cin]), np.array([cout]), name)[0])
        if w_in > 0:
            self._side_curves(b, name, a, x, cin, cout, True, w_in * here, parts)
        if writers and w_in < 1:
            self._side_curves(b, name, o, x, cin, cout, False, (1 - w_in) * here, parts)

    def _side_curves(self, b: _SigBlock, name: list[str], weights: np.ndarray, x: np.ndarray,
                     cin: float, cout: float, input_side: bool, share: float,
                     parts: dict[int, list[tuple[np.ndarray, float]]]) -> None:
        """Charge ``share`` of a layer's latency at ``x`` to the groups of one side (its
        inputs, or its outputs' parts): each group's curve sweeps that group's count with the
        others fixed, scaled so the curves add up to ``share`` at ``x``."""
        groups = [int(v) for v in np.flatnonzero(weights)]
        if not any(self.structure.groups[g].prunable for g in groups):
            # the table holds this side only at full width: split by share of the width
            width = sum(weights[g] * x[g] for g in groups)
            for g in groups:
                parts[g].append((None, share * weights[g] * x[g] / width if width else 0.0))
            return
        deltas = {}
        for g in groups:
            c = np.arange(int(self.full[g]) + 1, dtype=np.float64)
            moved = (cin if input_side else cout) + weights[g] * (c - x[g])
            base = (cin if input_side else cout) - weights[g] * x[g]
            sweep_in = moved if input_side else np.full_like(c, cin)
            sweep_out = np.full_like(c, cout) if input_side else moved
            lat = self._sweep(b, g, sweep_in, sweep_out, name)
            lat0 = float(b.latency(np.array([base if input_side else cin]),
                                   np.array([cout if input_side else base]), name)[0])
            at_x = float(b.latency(np.array([cin]), np.array([cout]), name)[0]) - lat0
            deltas[g] = (None if lat is None else lat - lat0, at_x)
        total = sum(d[1] for d in deltas.values())
        scale = share / total if total > 0 else 1.0
        for g, (curve, at_x) in deltas.items():
            parts[g].append((None if curve is None else scale * curve, scale * at_x))

    def _sweep(self, b: _SigBlock, group: int, cin: np.ndarray, cout: np.ndarray,
               name: list[str]) -> np.ndarray | None:
        """A layer's latency over the counts of ``group``, or None for an unprunable group
        the table holds only at full width (a proportional curve is used instead)."""
        try:
            return b.latency(cin, cout, name)
        except LatencyTableError:
            if self.structure.groups[group].prunable:
                raise
            return None

    def _combine(self, gid: int, x: np.ndarray, items: list[tuple[np.ndarray | None, float]]
                 ) -> np.ndarray:
        size = int(self.full[gid])
        c = np.arange(size + 1, dtype=np.float64)
        curve = self.lin[gid] * c  # the rest's activation part
        for part, at_x in items:
            if part is None:  # only the full width is measured: proportional around x
                part = at_x * c / x[gid] if x[gid] > 0 else np.zeros_like(c)
            curve += part
        return curve


# ----------------------------------------------------------------------------- building
def check_coverage(table: LatencyTable, layers: list[LayerSpec]) -> None:
    """Every layer's signature is in the table and its full widths are measured, with one
    clear error otherwise (the table was built for another model or input size)."""
    missing = sorted({s.signature.key for s in layers} - set(table.grids))
    if missing:
        raise LatencyTableError(
            f"latency table {table.path or ''} lacks {len(missing)} layer kind(s) of this model "
            f"(e.g. '{missing[0]}'); build it for this model and input size with `prunecli lut "
            f"model=... input_size=[C,H,W] out={table.path or 'PATH'}` (it adds to the table)")


def build_latency_cost_model(model: nn.Module, structure: ChannelStructure,
                             example_inputs: torch.Tensor | None = None, *,
                             table: str | os.PathLike[str] | LatencyTable | None,
                             device: torch.device | str | None = None, dtype: str | None = None,
                             batch_size: int | None = None, channels_last: bool | None = None,
                             threads: int | None = None, allow_mismatch: bool = False,
                             rest: tuple[float, float] | None = None) -> LatencyCostModel:
    """The latency cost model of ``model`` from a ``prunecli lut`` table file.

    Conditions: the table must describe hardware present here (``device`` None: this
    machine's device of the table's type: its GPU, or its CPU model) with this torch/cuDNN;
    ``dtype``/``batch_size``/``channels_last``/``threads`` are checked when given. A mismatch
    is refused unless ``allow_mismatch`` (``cost.allow_mismatch=true``), e.g. to train on a
    GPU box for a table measured on the deployment device.
    ``rest``: ``(a, b)`` of the part outside the table (see the module docstring), overriding
    the whole-model measurements ``prunecli lut`` stored in the table for this model.
    """
    if table is None:
        raise ConfigError("cost=latency needs a latency table: measure one with `prunecli "
                          "lut model=... out=PATH`, then pass cost.table=PATH")
    lut = table if isinstance(table, LatencyTable) else LatencyTable.load(Path(table))
    if device is None:
        dev_type = lut.conditions.get("device_type", "cpu")
        if dev_type == "cuda" and not torch.cuda.is_available():
            device = "cpu"  # reported as a device mismatch
        else:
            device = "cuda" if dev_type == "cuda" else "cpu"
    lut.check_conditions(device, dtype, batch_size, channels_last, allow_mismatch,
                         threads=threads)
    layers = collect_layers(model, structure)
    check_coverage(lut, layers)
    if rest is None:
        rest = _stored_rest(lut, model, structure, layers)
    return LatencyCostModel(structure, lut, layers, *rest)


def _stored_rest(table: LatencyTable, model: nn.Module, structure: ChannelStructure,
                 layers: list[LayerSpec]) -> tuple[float, float]:
    fp = model_fingerprint(model, structure, layers)
    entry = table.models.get(fp) or {}
    rest = (entry.get("rest_const_ms"), entry.get("rest_ms_per_activation"))
    if rest[0] is None or rest[1] is None:
        shape = ",".join(str(s) for s in structure.input_shape[1:])
        has = ", ".join(sorted(table.models)) or "none"
        raise LatencyTableError(
            f"latency table {table.path or ''} has no whole-model measurement of this model "
            f"({fp}; it has: {has}); the class count, model.kwargs and input size must be the "
            "run's: run `prunecli lut ckpt=<the run this one starts from>` or `prunecli lut "
            f"model=... num_classes=<the data's class count> input_size=[{shape}]`, with "
            f"out={table.path or 'PATH'} (measured layers are reused)")
    if not all(math.isfinite(float(v)) for v in rest):
        raise LatencyTableError(f"latency table {table.path or ''}: bad rest terms for {fp}")
    return float(rest[0]), float(rest[1])
