"""Reach a cost budget on the real (non-additive) cost of a network.

A conv's cost depends on the widths of two groups (its input and its output), so additive
per-group cost curves are exact only at the point they were taken at. Relinearising at each
answer oscillates (a heavily pruned point makes every channel look cheap), so this takes the
curves once, at the uniformly pruned point that has the target cost (every group at
``sqrt(keep)`` of its width when costs are bilinear), and then searches the knapsack budget by
bisection until the answer's *exact* cost is at most the target and within ``tolerance``.
Where coarse options (neuron groups, dropping a whole layer) leave it further under, groups are
widened to their next option while the exact cost fits.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunecli.allocate.halp import halp_options
from prunecli.allocate.knapsack import solve
from prunecli.allocate.options import (
    Floors,
    GroupOptions,
    as_array,
    fixed_options,
    group_floor,
    make_options,
    top_channels,
)
from prunecli.errors import ConfigError


@dataclass
class BudgetResult:
    counts: dict[int, int]  # kept channels per prunable group
    keep: dict[int, np.ndarray]  # kept channel indices (the top-scoring ones)
    cost: float  # exact cost of the result
    target: float
    dense: float
    iterations: int
    feasible: bool  # False: even the smallest allowed widths cost more than the target

    @property
    def ratio(self) -> float:
        """Fraction of the dense cost kept."""
        return self.cost / self.dense if self.dense else 1.0


def _uniform_point(cost_model: Any, groups: list[int], target: float,
                   upper: np.ndarray) -> np.ndarray:
    """All scored groups scaled by one factor of their ``upper`` widths so the exact cost is
    the target (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        x = upper.copy()
        x[groups] = np.maximum(1, np.round(upper[groups] * mid))
        if cost_model.cost(x) > target:
            hi = mid
        else:
            lo = mid
    x = upper.copy()
    x[groups] = np.maximum(1, np.round(upper[groups] * max(lo, 1e-6)))
    return x


def allocate_to_budget(cost_model: Any, scores: Mapping[int, Any], prune_ratio: float,
                       min_channels: Floors = 1, round_to: int = 1, side_weight: float = 1.0,
                       method: str = "auto", tolerance: float = 0.005,
                       max_iterations: int = 30, active: Mapping[int, Any] | None = None,
                       group_size: int | None = None,
                       droppable: Collection[int] = ()) -> BudgetResult:
    """Keep-counts for every scored group so the model's exact cost is at most
    ``(1 - prune_ratio) * dense`` and, when reachable, within ``tolerance * dense`` of it.

    ``cost_model``: a :class:`prunecli.cost.CostModel` (or the latency model); ``scores``:
    per-channel importance of each prunable group (higher = keep). ``active``: boolean masks of
    the channels that may be kept (pruned channels never return, as in HALP); the result keeps
    a subset of them. ``group_size``: HALP's neuron groups -- each group keeps a prefix of its
    importance-sorted chunks of that many channels (at least one chunk) instead of any count.
    ``droppable``: groups that may also keep nothing (layer drop; see
    ``ChannelGroup.droppable``). ``min_channels``: the least count of every group, or a mapping
    with one per group (see :func:`prunecli.allocate.options.group_floor`).
    """
    if not 0.0 <= prune_ratio < 1.0:
        raise ConfigError(f"cost.ratio={prune_ratio} must be in [0, 1): the fraction of the dense "
                          "cost to remove")
    full_scores = {g: as_array(s) for g, s in scores.items()}
    index = {g: (np.arange(len(s)) if active is None or g not in active
                 else np.flatnonzero(as_array(active[g], bool))) for g, s in full_scores.items()}
    scores = {g: full_scores[g][index[g]] for g in full_scores}
    upper = cost_model.full.copy()
    for g, idx in index.items():
        upper[g] = len(idx)
    dense = cost_model.dense
    target = (1.0 - prune_ratio) * dense
    point = _uniform_point(cost_model, sorted(scores), target, upper)
    curves = cost_model.group_curves(point, side_weight=side_weight)
    const = cost_model.cost(point) - math.fsum(curves[g][int(point[g])] for g in curves)

    structure = getattr(cost_model, "structure", None)

    def in_units(g: int, channels: int) -> int:
        """A channel multiple as a count of the group's units (a grouped conv's unit is several
        channels: round_to=8 on units of 4 channels keeps multiples of 2 units)."""
        unit = structure.groups[g].unit if structure is not None else 1
        return channels // math.gcd(channels, unit)

    def group_options(g: int, curve: np.ndarray) -> GroupOptions:
        if g not in scores:
            return fixed_options(g, int(point[g]), float(curve[int(point[g])]))
        part = curve[: len(scores[g]) + 1]
        floor = group_floor(min_channels, g, len(scores[g]))
        if group_size:
            return halp_options(g, scores[g], part, in_units(g, group_size),
                                force_first=g not in droppable,
                                least=0 if g in droppable else floor)
        return make_options(g, scores[g], part, floor, in_units(g, round_to),
                            drop=g in droppable)

    options = [group_options(g, c) for g, c in curves.items()]

    def attempt(budget: float) -> tuple[float, dict[int, int]]:
        alloc = solve(options, budget - const, method=method)
        counts = {g: c for g, c in alloc.counts.items() if g in scores}
        return cost_model.cost(cost_model.counts_vector(counts)), counts

    best: tuple[float, dict[int, int]] | None = None
    lowest = attempt(const)  # the smallest widths allowed
    lo, hi = const, 2.0 * dense
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        exact, counts = attempt((lo + hi) / 2)
        if exact <= target:
            lo = (lo + hi) / 2
            if best is None or exact > best[0]:
                best = (exact, counts)
            if target - exact <= tolerance * dense:
                break
        else:
            hi = (lo + hi) / 2
    cost, counts = best or lowest
    if best is not None and target - cost > tolerance * dense:
        by_group = {o.group: o for o in options if o.group in scores}
        cost, counts = _fill_slack(cost_model, by_group, dict(counts), cost, target)
    keep = {g: index[g][top_channels(scores[g], c)] for g, c in counts.items()}
    return BudgetResult(counts, keep, cost, target, dense, iterations, best is not None)


def _fill_slack(cost_model: Any, options: dict[int, GroupOptions], counts: dict[int, int],
                cost: float, target: float) -> tuple[float, dict[int, int]]:
    """Coarse options (HALP's neuron groups, a layer-drop option) can leave the bisection well
    under the target, because the curves are linear and the real cost is not. Widen groups to
    their next option, the best value per exact cost first, while the exact cost fits."""
    for _ in range(4 * sum(len(o) for o in options.values())):
        moves = []
        for g, o in options.items():
            i = int(np.searchsorted(o.counts, counts[g], side="right"))
            if i < len(o.counts):
                moves.append((g, int(o.counts[i]), float(o.values[i] - o.values[i - 1])
                              if i > 0 else float(o.values[i])))
        if not moves:
            break
        rows = np.repeat(cost_model.counts_vector(counts)[None], len(moves), axis=0)
        for r, (g, c, _) in enumerate(moves):
            rows[r, g] = c
        costs = np.asarray(cost_model.cost_batch(rows), dtype=np.float64)
        fits = np.flatnonzero(costs <= target)
        if not len(fits):
            break
        gain = np.array([moves[r][2] for r in fits])
        extra = np.maximum(costs[fits] - cost, 1e-12 * max(abs(target), 1.0))
        r = int(fits[int(np.argmax(gain / extra))])
        counts[moves[r][0]] = moves[r][1]
        cost = float(costs[r])
    return cost, counts
