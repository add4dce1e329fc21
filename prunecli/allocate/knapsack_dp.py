"""The multiple-choice knapsack by dynamic programming over integer costs: a predictable run
time (``groups x resolution x options``) and memory, where :func:`prunecli.allocate.knapsack.
solve_pareto` (the default) is exact for float costs. HALP's augmented knapsack shares the
cost rounding (:func:`cost_unit`, :func:`table_size`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from prunecli.allocate.knapsack import (
    Allocation,
    _check,
    _free_budget,
    _original,
    _prepare,
    _Prepared,
    allocation_of,
    cheapest,
    efficient,
    within_budget,
)
from prunecli.allocate.options import GroupOptions

DEFAULT_RESOLUTION = 10_000
MAX_TABLE_CELLS = 50_000_000


def cost_unit(budget: float, free: float, resolution: int) -> float:
    """The DP's cost unit ``budget / resolution`` (``free / resolution`` when the budget is
    not positive, which only negative costs allow)."""
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    span = budget if budget > 0 else free
    return span / resolution if span > 0 else 1.0


def table_size(cells: int) -> int:
    """Refuse DP tables that would not fit in memory. With non-negative costs a table has at
    most ``resolution + 1`` cells; only large negative costs can make it bigger."""
    if cells > MAX_TABLE_CELLS:
        raise ValueError(f"the DP table would need {cells:,} cells (negative costs make the "
                         "capacity exceed the budget): lower the resolution or use pareto")
    return cells


def _integer_options(g: _Prepared, unit: float, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Option positions and integer weights (costs rounded UP to whole units, so a choice that
    fits in units fits in cost) that fit ``cap``, keeping only efficient ones after rounding."""
    w = np.ceil(g.cost / unit)
    fit = np.flatnonzero(w <= cap)
    keep = fit[efficient(w[fit], g.value[fit])]
    return keep, w[keep].astype(np.int64)


def solve_dp(options: Sequence[GroupOptions], budget: float,
             resolution: int = DEFAULT_RESOLUTION) -> Allocation:
    """MCKP by dynamic programming over integer costs, ``O(groups x capacity x options)``.

    Costs (shifted so each group's cheapest option is 0) are divided by ``unit = budget /
    resolution`` and rounded UP; the capacity is the free budget in units rounded DOWN. Hence:

    * the budget is never exceeded (rounded costs only overstate);
    * a choice costing at most ``budget - G * unit`` (``G`` groups) still fits after rounding,
      so the value found is at least the exact optimum at that smaller budget;
    * with integer costs and an integer budget, ``resolution = budget`` (unit 1) is exact.

    ``best[cap]`` is the best value with total weight at most ``cap``; per group it becomes
    ``max over options o of best[cap - w_o] + v_o``, one vectorised shift per option, and the
    winning option per capacity is stored (int16 when it fits) to recover the choice.
    """
    _check(options, budget)
    groups = [_prepare(o) for o in options]
    free = _free_budget(groups, budget)
    if not within_budget(0.0, free):
        return cheapest(options, budget)
    unit = cost_unit(budget, free, resolution)
    cap = table_size(max(int(math.floor(max(free, 0.0) / unit)), 0) + 1) - 1

    best = np.zeros(cap + 1)
    tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for g in groups:
        keep, w = _integer_options(g, unit, cap)
        vals = g.value[keep]
        new = np.full(cap + 1, -np.inf)
        arg = np.zeros(cap + 1, dtype=np.int16 if len(keep) < 2**15 else np.int32)
        for o in range(len(keep)):
            cand = best[:cap + 1 - w[o]] + vals[o]
            better = cand > new[w[o]:]
            np.copyto(new[w[o]:], cand, where=better)
            np.copyto(arg[w[o]:], o, where=better)
        tables.append((keep, w, arg))
        best = new

    choice, at = [], cap
    for keep, w, arg in reversed(tables):
        o = int(arg[at])
        choice.append(int(keep[o]))
        at -= int(w[o])
    choice.reverse()
    return allocation_of(options, _original(groups, choice), budget)
