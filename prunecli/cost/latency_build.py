"""Measure a latency table on this device: every conv/linear/depthwise signature of a model over
a channel grid, resumably, then the whole model at a few widths (the rest the table does not
cover, see :mod:`prunecli.cost.latency_model`).

The grid of a signature: ``c`` in ``{1, step, 2*step, ...}`` plus every layer's full width
(so ``cost(full)`` is a measured point, never an interpolation) up to the largest width of any
layer of that signature, for each axis whose group is prunable; an axis whose group can never be
pruned (the image input, the classifier's classes) is measured at its full width only. Only the
points some layer can reach are measured (the union of the layers' (c_in, c_out) boxes). 1 is a
grid point so that every legal count lies inside the grid: lookups never extrapolate.

Each point times a freshly built ``nn.Conv2d``/``nn.Linear`` on a random input of the batch size,
dtype and layout, forward only under inference mode, after warm-up, median of ``repeats`` (CUDA
events with synchronisation on a GPU, cudnn.benchmark on), with the same helpers as
``prunecli bench``; then the median over ``rounds`` passes (see :func:`build_table`). The table is
saved atomically after every chunk of points, and a build started on an existing file measured
under the same conditions only measures what is missing.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunecli.bench.timing import prepare, time_interleaved
from prunecli.cost.latency_layers import LayerSpec, collect_layers, model_fingerprint
from prunecli.cost.latency_model import build_latency_cost_model
from prunecli.cost.latency_signature import Signature
from prunecli.cost.latency_table import Grid, LatencyTable, LatencyTableError, current_conditions
from prunecli.errors import ConfigError
from prunecli.structure import ChannelStructure

log = logging.getLogger("prunecli")

Point = tuple[int, ...]


# ----------------------------------------------------------------------------- the plan
def _axis(full: int, unit: int, step: int, varies: bool) -> list[int]:
    """``unit * {1, step, 2 step, ...}`` below ``full``, plus ``full``; ``[full]`` if fixed."""
    if not varies:
        return [full]
    channels = full // unit
    return sorted({unit, *range(step * unit, channels * unit, step * unit), full})


def _layer_axes(spec: LayerSpec, structure: ChannelStructure, step: int) -> list[list[int]]:
    prunable = [structure.groups[g].prunable for g, _ in spec.in_weights]
    unit = math.gcd(*[w for _, w in spec.in_weights]) if spec.in_weights else 1
    axes = [_axis(spec.c_in, max(1, unit), step, any(prunable))]
    if spec.kind != "depthwise":
        out_varies = any(structure.groups[g].prunable for g, _ in spec.out_weights)
        out_unit = math.gcd(*[w for _, w in spec.out_weights]) if spec.out_weights else 1
        axes.append(_axis(spec.c_out, max(1, out_unit), step, out_varies))
    return axes


@dataclass
class Plan:
    """Per signature: its grid axes and the points some layer can reach."""

    signatures: dict[str, Signature]
    axes: dict[str, list[np.ndarray]]
    points: dict[str, list[Point]]

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.points.values())


def plan_grid(layers: Sequence[LayerSpec], structure: ChannelStructure, step: int) -> Plan:
    """The union axes per signature and, per layer, the union-axis points inside its box."""
    if step < 1:
        raise ConfigError(f"step={step} must be a positive number of channels")
    sigs: dict[str, Signature] = {}
    own: dict[str, list[list[list[int]]]] = {}
    for spec in layers:
        key = spec.signature.key
        sigs[key] = spec.signature
        own.setdefault(key, []).append(_layer_axes(spec, structure, step))
    axes, points = {}, {}
    for key, per_layer in own.items():
        union = [np.unique(np.concatenate([la[d] for la in per_layer]))
                 for d in range(len(per_layer[0]))]
        reach: set[Point] = set()
        for la in per_layer:
            ranges = [u[(u >= min(a)) & (u <= max(a))] for u, a in zip(union, la, strict=True)]
            reach.update(tuple(int(v) for v in p) for p in np.array(
                np.meshgrid(*ranges, indexing="ij")).reshape(len(ranges), -1).T)
        axes[key] = union
        points[key] = sorted(reach)
    return Plan(sigs, axes, points)


# ----------------------------------------------------------------------------- timing
def time_layer(signature: Signature, c_in: int, c_out: int, batch: int, device: torch.device,
               dtype: str, channels_last: bool, warmup: int, repeats: int) -> float:
    """Median ms of one forward of the signature's layer at ``c_in`` -> ``c_out``."""
    layer = prepare(signature.build(c_in, c_out), device, dtype, channels_last, False)
    timing = time_interleaved({"layer": layer}, signature.input_shape(c_in), batch, device,
                              dtype, channels_last, warmup, repeats)
    return timing["layer"].median_ms


def time_models(models: dict[str, nn.Module], input_shape: Sequence[int], batch: int,
                device: torch.device, dtype: str, channels_last: bool, warmup: int,
                repeats: int) -> dict[str, float]:
    """Median ms of whole models, timed interleaved (copies: ``prepare`` converts in place)."""
    runners = {k: prepare(copy.deepcopy(m), device, dtype, channels_last, False)
               for k, m in models.items()}
    timings = time_interleaved(runners, input_shape, batch, device, dtype, channels_last,
                               warmup, repeats)
    return {k: t.median_ms for k, t in timings.items()}


@contextmanager
def _timing_setup(device: torch.device, threads: int | None) -> Iterator[None]:
    """cudnn.benchmark on CUDA (as deployment would run), the thread count on the CPU;
    both restored afterwards."""
    bench, old_threads = torch.backends.cudnn.benchmark, torch.get_num_threads()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = bench
        torch.set_num_threads(old_threads)


def _rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


# ----------------------------------------------------------------------------- building
def _start_table(path: Path | None, resume: bool, conditions: dict[str, Any]) -> LatencyTable:
    if path is not None and path.exists() and resume:
        table = LatencyTable.load(path)
        wrong = table.mismatches(conditions)
        if wrong:
            raise LatencyTableError(
                f"{path} holds a table measured under other conditions ({'; '.join(wrong)}); "
                "pass resume=false to start it over, or write to another out=")
        return table
    return LatencyTable(dict(conditions), path=path)


def _merge_plan(table: LatencyTable, plan: Plan) -> list[tuple[str, Point]]:
    """Put the plan's axes into the table's grids; the points still to measure, in order."""
    todo = []
    for key, axes in plan.axes.items():
        old = table.grids.get(key)
        grid = old.merged(axes) if old is not None else Grid.empty(plan.signatures[key], axes)
        table.grids[key] = grid
        todo += [(key, p) for p in plan.points[key] if math.isnan(grid.get(p))]
    return todo


@dataclass(frozen=True)
class Settings:
    """How each grid point is timed."""

    batch: int
    device: torch.device
    dtype: str
    channels_last: bool
    warmup: int
    repeats: int
    rounds: int  # passes over each chunk of points; the point's value is their median

    def time(self, signature: Signature, point: Point) -> float:
        ms = time_layer(signature, point[0], point[-1], self.batch, self.device, self.dtype,
                        self.channels_last, self.warmup, self.repeats)
        if not (math.isfinite(ms) and ms > 0):
            raise RuntimeError(f"timing {signature.key} at {point} gave {ms} ms")
        return ms


def build_table(model: nn.Module, structure: ChannelStructure, *, step: int = 16,
                batch_size: int = 1, device: torch.device | str = "cpu", dtype: str = "fp32",
                channels_last: bool = False, warmup: int = 5, repeats: int = 20,
                rounds: int = 3, path: str | os.PathLike[str] | None = None, resume: bool = True,
                progress: bool = True, threads: int | None = None,
                max_points: int | None = None, save_every: int = 100,
                chunk_seconds: float = 10.0, model_name: str | None = None) -> LatencyTable:
    """Measure (or complete) the latency table of ``model``'s layers, then the whole model.

    Points are measured in chunks (up to ``save_every`` points or ``chunk_seconds`` of the
    first pass), each chunk ``rounds`` times over, and a point's value is the median of its
    rounds: a burst of load from other processes on a shared machine then spoils one round of
    a point, not the point. The table is saved after every chunk. ``max_points`` stops after
    that many new points (saved; the next call resumes), for jobs with a time limit and for
    tests. The whole model is timed once every point of this model is measured. Returns the
    table (also saved at ``path`` when given).
    """
    device = torch.device(device)
    target = Path(path) if path is not None else None
    if rounds < 1 or repeats < 1:
        raise ConfigError(f"rounds={rounds} and repeats={repeats} must be at least 1")
    settings = Settings(int(batch_size), device, dtype, bool(channels_last), int(warmup),
                        int(repeats), int(rounds))
    with _timing_setup(device, threads):
        conditions = current_conditions(device, dtype, batch_size, channels_last)
        table = _start_table(target, resume, conditions)
        table.meta.update({"step": int(step), "warmup": int(warmup), "repeats": int(repeats),
                           "rounds": int(rounds)})
        layers = collect_layers(model, structure)
        plan = plan_grid(layers, structure, step)
        todo = _merge_plan(table, plan)
        if max_points is not None:
            todo = todo[:max(0, int(max_points))]
        _measure(table, todo, settings, target, progress, save_every, chunk_seconds)
        table.remaining = sum(math.isnan(table.grids[k].get(p)) for k, pts in
                              plan.points.items() for p in pts)
        if table.remaining == 0:
            _measure_model(table, model, structure, layers, settings, model_name)
        if target is not None:
            table.save(target)
    return table


def _measure(table: LatencyTable, todo: list[tuple[str, Point]], settings: Settings,
             path: Path | None, progress: bool, save_every: int, chunk_seconds: float) -> None:
    from prunecli.engine.progress import make_progress

    bar = make_progress(progress and _rank_zero())
    task = bar.add_task("latency table", total=len(todo) * settings.rounds, info="") \
        if bar else None
    if bar:
        bar.start()
    done = 0
    try:
        while done < len(todo):
            samples = _measure_chunk(table, todo, done, settings, save_every, chunk_seconds,
                                     lambda info: bar.update(task, advance=1, info=info)
                                     if bar else None)
            for (key, point), values in samples.items():
                table.grids[key].set(point, float(np.median(values)))
            done += len(samples)
            if path is not None:
                table.save(path)
                if bar is None:
                    log.info("latency table: %d/%d points measured, saved to %s", done,
                             len(todo), path)
    finally:
        if bar:
            bar.stop()


def _measure_chunk(table: LatencyTable, todo: list[tuple[str, Point]], start: int,
                   settings: Settings, max_points: int, seconds: float,
                   advance: Callable[[str], object]) -> dict[tuple[str, Point], list[float]]:
    """Round 1 grows the chunk from ``todo[start]`` until ``max_points`` or ``seconds``;
    the other rounds repeat it in the same order. Returns the samples per point."""
    samples: dict[tuple[str, Point], list[float]] = {}
    t0 = time.perf_counter()
    for item in todo[start:start + max(1, max_points)]:
        if samples and time.perf_counter() - t0 > seconds:
            break
        samples[item] = [settings.time(table.grids[item[0]].signature, item[1])]
        advance(f"{item[0]} {'x'.join(map(str, item[1]))}")
    for _ in range(settings.rounds - 1):
        for key, point in samples:
            samples[(key, point)].append(settings.time(table.grids[key].signature, point))
            advance(f"{key} {'x'.join(map(str, point))}")
    return samples


CALIBRATION_WIDTHS = (1.0, 0.75, 0.5, 0.25)


def uniform_keep(structure: ChannelStructure, fraction: float) -> dict[int, list[int]]:
    """The first ``fraction`` of every prunable group (which channels does not matter for
    latency, only how many)."""
    from prunecli.structure import kept_count

    return {g.id: list(range(kept_count(g.size, fraction))) for g in structure.prunable_groups}


def fit_rest(table_ms: Sequence[float], measured_ms: Sequence[float],
             activations: Sequence[float]) -> tuple[float, float]:
    """``(a, b)`` with ``measured - table = a + b * activations``, least squares through the
    first (dense) point so the dense latency is reproduced exactly. Both terms are kept
    non-negative when the dense rest is (a fixed overhead or a per-value time below zero is
    measurement noise): ``b`` is clipped to ``[0, rest / V]`` at the dense point."""
    rest = np.asarray(measured_ms, dtype=np.float64) - np.asarray(table_ms, dtype=np.float64)
    v = np.asarray(activations, dtype=np.float64)
    dv, dr = v[1:] - v[0], rest[1:] - rest[0]
    b = float(dv @ dr / (dv @ dv)) if dv.size and dv @ dv > 0 else 0.0
    b = min(max(0.0, b), max(0.0, rest[0]) / v[0] if v[0] > 0 else 0.0)
    return float(rest[0] - b * v[0]), b


def _measure_model(table: LatencyTable, model: nn.Module, structure: ChannelStructure,
                   layers: list[LayerSpec], settings: Settings, model_name: str | None) -> None:
    """Time the whole model dense and at uniform widths; fit and store the rest's terms."""
    from prunecli.cost.latency_model import LatencyCostModel
    from prunecli.structure import slim

    fp = model_fingerprint(model, structure, layers)
    if table.models.get(fp, {}).get("rest_ms_per_activation") is not None:
        return
    shape = tuple(int(s) for s in structure.input_shape[1:])
    table_only = LatencyCostModel(structure, table, layers)
    keeps = {f: uniform_keep(structure, f) for f in CALIBRATION_WIDTHS}
    models = {f"{round(100 * f)}%": model if f == 1.0 else slim(model, structure, keeps[f])
              for f in CALIBRATION_WIDTHS}
    st = settings
    measured = time_models(models, shape, st.batch, st.device, st.dtype, st.channels_last,
                           st.warmup, max(st.repeats, 10) * st.rounds)
    counts = [structure.keep_counts(keeps[f]) for f in CALIBRATION_WIDTHS]
    rows = [{"width": f, "measured_ms": measured[name], "table_ms": table_only.cost(c),
             "activations": table_only.activations(c)}
            for f, name, c in zip(CALIBRATION_WIDTHS, models, counts, strict=True)]
    a, b = fit_rest([r["table_ms"] for r in rows], [r["measured_ms"] for r in rows],
                    [r["activations"] for r in rows])
    dense = rows[0]
    table.models[fp] = {"model": model_name or type(model).__name__, "input_shape": list(shape),
                        "layers": len(layers), "dense_ms": dense["measured_ms"],
                        "table_ms": dense["table_ms"],
                        "rest_ms": dense["measured_ms"] - dense["table_ms"],
                        "rest_const_ms": a, "rest_ms_per_activation": b, "calibration": rows}
    log.info("%s: dense %.3f ms = table %.3f ms + rest %.3f ms (%.3f + %.3g per activation)",
             fp, dense["measured_ms"], dense["table_ms"], dense["measured_ms"] -
             dense["table_ms"], a, b)


# ----------------------------------------------------------------------------- checking
def check_table(model: nn.Module, structure: ChannelStructure, table: LatencyTable, *,
                keep_ratios: Sequence[float] = (0.3, 0.5, 0.7), seed: int = 0,
                warmup: int = 5, repeats: int = 20) -> list[dict[str, Any]]:
    """How well the table predicts whole slimmed models: per keep ratio a random keep-set,
    slimmed and timed (interleaved with the dense model, under the table's conditions), against
    the cost model's prediction. The rows are also stored in the table's model entry."""
    from prunecli.cost.counting import count_macs
    from prunecli.structure import random_keep, slim

    c = table.conditions
    device = torch.device("cuda" if c["device_type"] == "cuda" else "cpu")
    cm = build_latency_cost_model(model, structure, table=table, allow_mismatch=True)
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, *structure.input_shape[1:])
    dense_macs = count_macs(model, x)
    models: dict[str, nn.Module] = {"dense": model}
    counts: dict[str, dict[int, int] | None] = {"dense": None}
    ratios: dict[str, float] = {"dense": 1.0}
    for r in keep_ratios:
        keep = random_keep(structure, float(r), gen)
        name = f"keep {round(100 * r)}%"
        models[name] = slim(model, structure, keep)
        counts[name] = structure.keep_counts(keep)
        ratios[name] = float(r)
    with _timing_setup(device, c.get("threads")):
        timings = time_models(models, structure.input_shape[1:], c["batch_size"], device,
                              c["dtype"], c["channels_last"], warmup, repeats)
    rows = []
    for k, m in models.items():
        predicted, measured = cm.cost(counts[k]), timings[k]
        rows.append({"name": k, "keep": ratios[k], "macs_ratio": count_macs(m, x) / dense_macs,
                     "predicted_ms": predicted, "measured_ms": measured,
                     "error_pct": 100.0 * (predicted - measured) / measured})
    fp = model_fingerprint(model, structure)
    table.models.setdefault(fp, {})["check"] = rows
    slim_errors = [abs(r["error_pct"]) for r in rows if r["name"] != "dense"]
    if slim_errors:
        table.models[fp]["check_mean_abs_error_pct"] = float(np.mean(slim_errors))
        table.models[fp]["check_max_abs_error_pct"] = float(np.max(slim_errors))
    return rows
