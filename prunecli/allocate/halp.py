"""HALP's augmented knapsack (Shen et al., NeurIPS 2022), two ways.

A group's channels are sorted by importance (best first) and cut into *neuron groups* of
``group_size`` channels (the last, least important one may be smaller). Item ``i`` of a group is
chunk ``i``: its value is the sum of its scores and its weight the marginal cost
``C(c_i) - C(c_{i-1})`` of widening the group from ``c_{i-1}`` to ``c_i`` channels (negative
where the cost curve dips, e.g. on a latency staircase). An item may be taken only if the
previous item of its group is taken, so additive marginal costs stay valid; with
``force_first`` every group keeps its first item (no layer is removed).

Because of that prefix constraint a group's choice is just a prefix length ``i``, worth
``V(c_i)`` and costing ``C(c_i)``: the problem *is* a multiple-choice knapsack over prefix
lengths, solved exactly (float costs) by :func:`prunecli.allocate.knapsack.solve_pareto`.
:func:`solve_halp_augmented` is HALP's own formulation -- a 0/1 knapsack DP over the item
sequence with integer weights and a shifted, enlarged capacity for negative weights -- kept to
cross-check the reduction (the tests assert both reach the same optimum).

HALP turns values into integers (score x 1e6); here values stay floats: only weights index the
DP table, and integer values would merely round small scores to equal numbers (ties).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from prunecli.allocate.knapsack import Allocation, allocation_of, cheapest, solve
from prunecli.allocate.knapsack_dp import DEFAULT_RESOLUTION, cost_unit, table_size
from prunecli.allocate.options import GroupOptions, as_array, sorted_cumsum

DEFAULT_GROUP_SIZE = 8


def chunk_counts(n: int, group_size: int, force_first: bool = True) -> np.ndarray:
    """Kept counts reachable by taking a prefix of the chunks: ``0`` (unless ``force_first``),
    then ``group_size, 2 * group_size, ...`` and ``n``."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    counts = np.minimum(np.arange(1, -(-n // group_size) + 1) * group_size, n)
    if not force_first or n == 0:
        counts = np.concatenate([[0], counts])
    return counts.astype(np.int64)


def halp_options(group: int, scores: Any, cost_curve: Any, group_size: int = DEFAULT_GROUP_SIZE,
                 force_first: bool = True, least: int = 0) -> GroupOptions:
    """The MCKP options of one group: one per prefix of its chunks, keeping at least ``least``
    channels (the full width is always an option)."""
    values = sorted_cumsum(scores)
    curve = as_array(cost_curve)
    n = len(values) - 1
    if len(curve) != n + 1:
        raise ValueError(f"group {group}: cost_curve needs {n + 1} entries, got {len(curve)}")
    counts = chunk_counts(n, group_size, force_first)
    counts = counts[(counts >= min(least, n)) | (counts == n)]
    return GroupOptions(group, counts, values[counts], curve[counts])


def halp_items(scores: Any, cost_curve: Any,
               group_size: int = DEFAULT_GROUP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """HALP's items of one group, most important first: (values, marginal costs) per chunk."""
    values = sorted_cumsum(scores)
    curve = as_array(cost_curve)
    counts = chunk_counts(len(values) - 1, group_size, force_first=False)
    return np.diff(values[counts]), np.diff(curve[counts])


def _options(scores: Mapping[int, Any], cost_curves: Mapping[int, Any], group_size: int,
             force_first: bool) -> list[GroupOptions]:
    if set(scores) != set(cost_curves):
        raise ValueError("scores and cost_curves must have the same groups")
    return [halp_options(g, scores[g], cost_curves[g], group_size, force_first) for g in scores]


def solve_halp(scores: Mapping[int, Any], cost_curves: Mapping[int, Any], budget: float,
               group_size: int = DEFAULT_GROUP_SIZE, force_first: bool = True,
               method: str = "auto", **kwargs: Any) -> Allocation:
    """HALP allocation: keep a prefix of every group's importance-sorted chunks, maximising
    kept importance with total cost ``sum_g C_g(c_g) <= budget``.

    ``method``: ``"auto"``/``"pareto"``/``"dp"`` solve the equivalent MCKP over prefix lengths
    (pareto is exact for float costs); ``"augmented"`` runs HALP's item-sequence DP
    (:func:`solve_halp_augmented`). ``kwargs`` go to the solver (e.g. ``resolution``).
    """
    if method == "augmented":
        return solve_halp_augmented(scores, cost_curves, budget, group_size, force_first,
                                    **kwargs)
    return solve(_options(scores, cost_curves, group_size, force_first), budget, method, **kwargs)


def solve_halp_augmented(scores: Mapping[int, Any], cost_curves: Mapping[int, Any],
                         budget: float, group_size: int = DEFAULT_GROUP_SIZE,
                         force_first: bool = True,
                         resolution: int = DEFAULT_RESOLUTION) -> Allocation:
    """HALP's augmented knapsack DP over the item sequence, with integer weights.

    Weights: the cost curve at the chunk boundaries is divided by ``unit = budget /
    resolution`` and rounded UP, and an item weighs the difference of two such rounded
    cumulative costs. The rounding telescopes, so a prefix's weight is its rounded cost: the
    budget is never exceeded, and with integer costs and ``resolution = budget`` the DP is
    exact (the same guarantees as :func:`prunecli.allocate.knapsack_dp.solve_dp`). The empty
    groups' costs ``sum_g C_g(0)`` are paid up front (taken off the capacity).

    State: ``table[s]`` is the best value of the items taken so far whose weights sum to exactly
    ``s``. Per group two tables run along its items: ``chain`` (exactly the first ``i`` items
    taken, so item ``i + 1`` may follow: the prefix constraint) and ``done`` (the best over the
    prefix lengths allowed so far, ``i >= 1`` with ``force_first``); ``done`` starts the next
    group. Negative weights let partial sums dip below 0, or rise above the capacity and come
    back, so the table is shifted to start at the lowest reachable sum and the capacity is
    enlarged by the largest drop still possible (HALP's capacity shift); states beyond that can
    never end under the budget and are dropped.
    """
    allowed = _options(scores, cost_curves, group_size, force_first)
    full = _options(scores, cost_curves, group_size, force_first=False)
    unit = cost_unit(budget, budget - sum(float(o.costs.min()) for o in allowed), resolution)
    rounded = [np.ceil(o.costs / unit).astype(np.int64) for o in full]
    prefix = [r - r[0] for r in rounded]  # item-sum weight of each prefix length
    # first allowed prefix length per group (1 when the first item is forced)
    starts = [len(f) - len(a) for f, a in zip(full, allowed, strict=True)]
    cap = math.floor(budget / unit) - int(sum(int(r[0]) for r in rounded))
    if sum(int(p[s:].min()) for p, s in zip(prefix, starts, strict=True)) > cap:
        return cheapest(allowed, budget)

    low = sum(min(0, int(p.min())) for p in prefix)
    high = cap + max(_largest_drop(p) for p in prefix) + sum(max(0, -int(p.min())) for p in prefix)
    table = np.full(table_size(high - low + 1), -np.inf)
    table[-low] = 0.0
    args = []
    for f, p, s in zip(full, prefix, starts, strict=True):
        table, arg = _group_pass(table, np.diff(p), np.diff(f.values), s)
        args.append(arg)

    at = int(np.argmax(table[:cap - low + 1]))
    choice = []
    for p, arg in zip(reversed(prefix), reversed(args), strict=True):
        i = int(arg[at])
        choice.append(i)
        at -= int(p[i])
    return allocation_of(full, choice[::-1], budget)


def _largest_drop(prefix: np.ndarray) -> int:
    """How far a group's partial sum can still fall after some prefix: ``max_{i<=j} P_i - P_j``."""
    return int(np.max(np.maximum.accumulate(prefix) - prefix))


def _shift(a: np.ndarray, w: int) -> np.ndarray:
    """``out[s] = a[s - w]``: add weight ``w`` to every state; states pushed off either end of
    the table are dropped (unreachable or beyond the enlarged capacity)."""
    out = np.full_like(a, -np.inf)
    if w >= 0:
        if w < len(a):
            out[w:] = a[:len(a) - w]
    elif -w < len(a):
        out[:w] = a[-w:]
    return out


def _group_pass(table: np.ndarray, weights: np.ndarray, values: np.ndarray,
                start: int) -> tuple[np.ndarray, np.ndarray]:
    """Run one group's items over ``table``; returns the new table and, per state, the prefix
    length that produced it."""
    chain = table
    done = table.copy() if start == 0 else np.full_like(table, -np.inf)
    arg = np.zeros(len(table), dtype=np.int16 if len(weights) < 2**15 else np.int32)
    for i, (w, v) in enumerate(zip(weights, values, strict=True), start=1):
        chain = _shift(chain, int(w)) + v
        if i >= start:
            better = chain > done
            np.copyto(done, chain, where=better)
            np.copyto(arg, i, where=better)
    return done, arg
