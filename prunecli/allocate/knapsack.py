"""Multiple-choice knapsack (MCKP): pick one option per group to maximise total value under a
total cost budget. This is the SMCP allocator; two exact-or-bounded solvers share one result
type: the Pareto frontier search here, and the DP over integer costs in
:mod:`prunecli.allocate.knapsack_dp`.

Both solvers first reduce every group to its *efficient* options (no other option of the group
is at most as costly and at least as valuable) and shift its costs so its cheapest option costs
0; the budget shrinks by the sum of the groups' minimum costs. Only that "free" budget is then
spent, which keeps the DP table small and makes negative option costs harmless.

Budgets are compared with a relative tolerance of 1e-9 (:func:`within_budget`) so that the
order of a float summation cannot flip feasibility.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prunecli.allocate.options import GroupOptions

RTOL = 1e-9
DEFAULT_MAX_FRONTIER = 5_000  # bounded ResNet-50-shaped frontiers measured peak near 4,000
_CHUNK = 1 << 21  # candidate pairs materialised at once by the Pareto merge


@dataclass
class Allocation:
    """Kept count per group, with the total value and cost of that choice. ``feasible`` is
    False only when even the cheapest choice exceeds the budget (that choice is returned)."""

    counts: dict[int, int]
    value: float
    cost: float
    feasible: bool


def within_budget(cost: float, budget: float) -> bool:
    """``cost <= budget`` up to float summation noise."""
    return cost <= budget + RTOL * max(1.0, abs(budget))


def allocation_of(options: Sequence[GroupOptions], choice: Sequence[int],
                  budget: float) -> Allocation:
    """The :class:`Allocation` for option index ``choice[i]`` of every group ``options[i]``,
    totals re-summed exactly from the options (not from any scaled solver state)."""
    counts = {o.group: int(o.counts[i]) for o, i in zip(options, choice, strict=True)}
    value = math.fsum(float(o.values[i]) for o, i in zip(options, choice, strict=True))
    cost = math.fsum(float(o.costs[i]) for o, i in zip(options, choice, strict=True))
    return Allocation(counts, value, cost, within_budget(cost, budget))


def cheapest_choice(options: Sequence[GroupOptions]) -> list[int]:
    """Per group the cheapest option (the most valuable among equally cheap ones)."""
    return [int(np.lexsort((-o.values, o.costs))[0]) for o in options]


def cheapest(options: Sequence[GroupOptions], budget: float) -> Allocation:
    """The cheapest choice; what every solver returns when nothing fits the budget."""
    return allocation_of(options, cheapest_choice(options), budget)


@dataclass
class _Prepared:
    """A group reduced to its efficient options: ``index`` into the original options, costs
    shifted so the cheapest is 0, both ``cost`` and ``value`` strictly increasing."""

    index: np.ndarray
    cost: np.ndarray
    value: np.ndarray
    base: float  # the group's minimum cost (the shift)


def efficient(costs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated (cost, value) pairs, by ascending cost.

    Sort by cost, keep each pair more valuable than every earlier one, then of a run of equal
    costs keep the last (most valuable) kept pair. One plain float sort (no two-key lexsort):
    this is the Pareto solver's hot spot.
    """
    order = np.argsort(costs)
    v = values[order]
    keep = np.ones(len(v), dtype=bool)
    keep[1:] = v[1:] > np.maximum.accumulate(v)[:-1]
    idx = np.flatnonzero(keep)
    c = costs[order[idx]]
    last = np.ones(len(idx), dtype=bool)
    last[:-1] = c[1:] != c[:-1]
    return order[idx[last]]


def _prepare(opt: GroupOptions) -> _Prepared:
    idx = efficient(opt.costs, opt.values)
    base = float(opt.costs[idx[0]])
    return _Prepared(idx, opt.costs[idx] - base, opt.values[idx], base)


def _original(groups: Sequence[_Prepared], choice: Sequence[int]) -> list[int]:
    """Map positions among the efficient options back to indices of the given options."""
    return [int(g.index[i]) for g, i in zip(groups, choice, strict=True)]


def _free_budget(groups: Sequence[_Prepared], budget: float) -> float:
    return budget - math.fsum(g.base for g in groups)


def _check(options: Sequence[GroupOptions], budget: float) -> None:
    if not options:
        raise ValueError("no groups to allocate")
    if not math.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget}")


# ---------------------------------------------------------------- Pareto merging (exact floats)


def _upper_hull(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of the upper concave hull of efficient points (cost and value increasing);
    collinear points are dropped so hull slopes strictly decrease."""
    hull: list[int] = []
    for i in range(len(cost)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (cost[b] - cost[a]) * (value[i] - value[a]) \
                - (value[b] - value[a]) * (cost[i] - cost[a])
            if cross < 0:
                break
            hull.pop()
        hull.append(i)
    return np.asarray(hull, dtype=np.int64)


@dataclass
class _Relaxation:
    """The LP relaxation of the MCKP over a set of groups: their hull steps sorted by slope
    (most value per cost first). ``bound(cap)`` is its optimum, an upper bound on any choice of
    cost ``<= cap``; taking the steps that fit whole (``rounded``) is a feasible choice."""

    base: float
    x: np.ndarray  # cumulative cost of the sorted steps, starting at 0
    y: np.ndarray  # cumulative value gain
    owner: np.ndarray  # group position of each step

    def bound(self, cap: np.ndarray) -> np.ndarray:
        return self.base + np.interp(cap, self.x, self.y)

    def rounded(self, cap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Value of the whole steps that fit ``cap``, and how many steps that is."""
        taken = np.searchsorted(self.x, cap, side="right") - 1
        return self.base + self.y[taken], taken


def _relaxation(groups: Sequence[_Prepared], hulls: Sequence[np.ndarray],
                positions: Sequence[int]) -> _Relaxation:
    dc, dv, owner = [np.zeros(0)], [np.zeros(0)], [np.zeros(0, dtype=np.int64)]
    for p in positions:
        h = hulls[p]
        dc.append(np.diff(groups[p].cost[h]))
        dv.append(np.diff(groups[p].value[h]))
        owner.append(np.full(len(h) - 1, p, dtype=np.int64))
    c, v, who = np.concatenate(dc), np.concatenate(dv), np.concatenate(owner)
    with np.errstate(over="ignore"):  # a tiny cost step may have an infinite slope: still first
        order = np.argsort(-(v / c), kind="stable")  # within a group slopes already decrease
    base = math.fsum(float(groups[p].value[0]) for p in positions)
    x = np.concatenate([[0.0], np.cumsum(c[order])])
    y = np.concatenate([[0.0], np.cumsum(v[order])])
    return _Relaxation(base, x, y, who[order])


def _fill(groups: Sequence[_Prepared], choice: list[int], free: float) -> list[int]:
    """Improve a feasible choice by spending its leftover budget: repeatedly move the one group
    whose best affordable upgrade gains most (any efficient option, not only hull points)."""
    choice = list(choice)
    for _ in range(4 * len(groups)):
        left = free - math.fsum(float(g.cost[i]) for g, i in zip(groups, choice, strict=True))
        gains = []
        for g, i in zip(groups, choice, strict=True):
            j = int(np.searchsorted(g.cost, g.cost[i] + left, side="right")) - 1
            gains.append((float(g.value[j] - g.value[i]), j))
        p = int(np.argmax([gain for gain, _ in gains]))
        if gains[p][0] <= 0:
            break
        choice[p] = gains[p][1]
    return choice


class _Incumbent:
    """The best feasible choice found so far; its value is the cut below which a partial
    choice whose LP bound cannot reach it is dropped."""

    def __init__(self, groups: Sequence[_Prepared], choice: list[int], free: float) -> None:
        self.groups, self.free = groups, free
        self.slack = RTOL * (1.0 + math.fsum(float(np.abs(g.value).max()) for g in groups))
        self.choice: list[int] = []
        self.value = -math.inf
        self.offer(choice)

    @property
    def cut(self) -> float:
        return self.value - self.slack

    def offer(self, choice: list[int]) -> None:
        choice = _fill(self.groups, choice, self.free)
        value = math.fsum(float(g.value[i]) for g, i in zip(self.groups, choice, strict=True))
        if value > self.value:
            self.choice, self.value = choice, value


def _complete(prefix: list[int], rest: _Relaxation, taken: int, hulls: Sequence[np.ndarray],
              n_groups: int) -> list[int]:
    """A full choice: ``prefix`` for the merged groups, the rest from ``taken`` LP steps."""
    steps = np.bincount(rest.owner[:taken], minlength=n_groups)
    return prefix + [int(hulls[p][steps[p]]) for p in range(len(prefix), n_groups)]


def _thin(c: np.ndarray, width: float) -> np.ndarray:
    """Keep one pair per cost bucket of ``width``: the last, i.e. the most valuable one (the
    input is a frontier sorted by cost with increasing value)."""
    b = np.floor(c / width)
    keep = np.ones(len(c), dtype=bool)
    keep[:-1] = b[1:] != b[:-1]
    return np.flatnonzero(keep)


def _merge(fc: np.ndarray, fv: np.ndarray, g: _Prepared, free: float, cut: float,
           rest: _Relaxation | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (frontier pair + option) sums that fit ``free`` and whose LP bound on completing them
    reaches ``cut``; returns their costs, values and flat indices ``row * k + option``."""
    k = len(g.cost)
    rows = max(1, _CHUNK // k)
    cs, vs, ids = [], [], []
    for r0 in range(0, len(fc), rows):
        # option-major: k runs sorted by cost, which the later sort handles fastest
        c = (g.cost[:, None] + fc[None, r0:r0 + rows]).ravel()
        v = (g.value[:, None] + fv[None, r0:r0 + rows]).ravel()
        ok = c <= free
        if rest is not None:
            ok &= v + rest.bound(free - c) >= cut
        flat = np.flatnonzero(ok)
        flat = flat[efficient(c[flat], v[flat])]  # bounds memory: the chunk's own frontier
        width = min(rows, len(fc) - r0)
        cs.append(c[flat])
        vs.append(v[flat])
        ids.append((r0 + flat % width) * k + flat // width)
    return np.concatenate(cs), np.concatenate(vs), np.concatenate(ids)


def _backtrack(steps: Sequence[tuple[np.ndarray, np.ndarray]], row: int) -> list[int]:
    choice = []
    for parent, option in reversed(steps):
        choice.append(int(option[row]))
        row = int(parent[row])
    return choice[::-1]


def solve_pareto(options: Sequence[GroupOptions], budget: float,
                 max_frontier: int | None = DEFAULT_MAX_FRONTIER, bound: bool = True) -> Allocation:
    """Exact MCKP for float costs by merging Pareto frontiers group by group.

    The frontier after ``j`` groups holds every non-dominated (cost, value) of a choice for those
    groups that fits the budget, with back-pointers to recover the choice. Two devices keep it
    small on ResNet-50-sized problems (40 groups, up to 2048 options each):

    * ``bound`` (exact, branch and bound): a partial choice is dropped when even the LP
      relaxation of the remaining groups (greedy over their concave hulls) cannot lift it to
      the value of the best feasible choice known. That incumbent starts as the rounded-down LP
      optimum, improved by spending its leftover budget, and is improved after every merge by
      completing the frontier's most promising pair the same way; it is returned if nothing
      beats it.
    * ``max_frontier`` (approximate): whenever a frontier grows past it, only the most valuable
      pair of every cost bucket of width ``delta = free / max_frontier`` is kept (``free`` is
      the budget minus the groups' minimum costs). A dropped pair is replaced by one at least
      as valuable and at most ``delta`` dearer, so after ``T`` thinned merges the result is at
      least the exact optimum for budget ``budget - T * delta`` (``T <= number of groups``), and
      the budget itself is always met. ``None`` never thins (exact, but may blow up).

    Run time is ``sum over groups of frontier size x options``. On ResNet-50-shaped instances
    the bounded frontier stays in the hundreds to low thousands (exact, tens of ms); the
    worst case is a near-degenerate instance (every channel worth about the same per unit
    cost), where it saturates ``max_frontier``: 0.2-0.4 s at the default 5,000 on 2 CPU
    cores, linear in it (``benchmarks/allocate_speed.py``).
    """
    _check(options, budget)
    groups = [_prepare(o) for o in options]
    free = _free_budget(groups, budget)
    if not within_budget(0.0, free):
        return cheapest(options, budget)
    free = max(free, 0.0) + RTOL * max(1.0, abs(budget))  # as within_budget allows
    n = len(groups)
    hulls = [_upper_hull(g.cost, g.value) for g in groups]
    rests = [_relaxation(groups, hulls, range(j + 1, n)) for j in range(n)]
    whole = _relaxation(groups, hulls, range(n))
    best = _Incumbent(groups, _complete([], whole, int(whole.rounded(free)[1]), hulls, n), free)
    width = free / max_frontier if max_frontier else 0.0

    fc, fv = np.zeros(1), np.zeros(1)
    steps: list[tuple[np.ndarray, np.ndarray]] = []  # (parent row, option) per merged group
    for g, rest in zip(groups, rests, strict=True):
        c, v, flat = _merge(fc, fv, g, free, best.cut, rest if bound else None)
        if len(c) == 0:  # only float noise can prune the incumbent's own path
            break
        keep = efficient(c, v)
        if max_frontier and len(keep) > max_frontier and width > 0:
            keep = keep[_thin(c[keep], width)]
        fc, fv, flat = c[keep], v[keep], flat[keep]
        steps.append((flat // len(g.cost), flat % len(g.cost)))
        done, taken = rest.rounded(free - fc)
        row = int(np.argmax(fv + done))
        best.offer(_complete(_backtrack(steps, row), rest, int(taken[row]), hulls, n))
    return allocation_of(options, _original(groups, best.choice), budget)


# ------------------------------------------------------------------------------- dispatch


def solve(options: Sequence[GroupOptions], budget: float, method: str = "auto",
          **kwargs: object) -> Allocation:
    """Solve with ``method`` = ``"pareto"``, ``"dp"`` or ``"auto"`` (see :func:`pick_method`);
    extra keyword arguments go to the solver."""
    if method == "auto":
        method = pick_method(options)
    if method == "pareto":
        return solve_pareto(options, budget, **kwargs)  # type: ignore[arg-type]
    if method == "dp":
        from prunecli.allocate.knapsack_dp import solve_dp  # it builds on this module

        return solve_dp(options, budget, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown knapsack method {method!r} (expected 'auto', 'pareto' or 'dp')")


def pick_method(options: Sequence[GroupOptions]) -> str:
    """The solver ``method="auto"`` uses: always ``"pareto"``.

    It is exact for float costs and, thanks to its LP bound, fastest on every instance measured
    (``benchmarks/allocate_speed.py``: ResNet-50 at single-channel granularity in well under a
    second). The DP's appeal is a predictable run time (``groups x resolution x options``) and
    memory; choose it explicitly for that. ``options`` is taken so the rule may grow.
    """
    del options
    return "pareto"
