"""Allocators: optimality against brute force, budget guarantees, HALP's two formulations,
option building and the threshold baselines."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunecli.allocate import (
    Allocation,
    GroupOptions,
    allowed_counts,
    chunk_counts,
    fixed_options,
    global_threshold,
    halp_items,
    halp_options,
    make_options,
    per_group_ratio,
    solve,
    solve_dp,
    solve_halp,
    solve_halp_augmented,
    solve_pareto,
    top_channels,
    within_budget,
)

# ----------------------------------------------------------------------------- helpers


def brute_force(options: list[GroupOptions], budget: float) -> float | None:
    """Best total value over every combination within the budget (None if none fits)."""
    best = None
    for choice in itertools.product(*(range(len(o)) for o in options)):
        cost = math.fsum(o.costs[i] for o, i in zip(options, choice, strict=True))
        if within_budget(cost, budget):
            value = math.fsum(o.values[i] for o, i in zip(options, choice, strict=True))
            best = value if best is None else max(best, value)
    return best


def combo_costs(options: list[GroupOptions]) -> list[float]:
    return [math.fsum(o.costs[i] for o, i in zip(options, c, strict=True))
            for c in itertools.product(*(range(len(o)) for o in options))]


def random_options(rng: np.random.Generator, integer: bool = False,
                   negative: bool = False) -> list[GroupOptions]:
    """2-5 groups of 1-6 options with arbitrary (not monotone) float values and costs."""
    options = []
    for g in range(int(rng.integers(2, 6))):
        k = int(rng.integers(1, 7))
        low = -5 if negative else 0
        costs = rng.integers(low, 20, k).astype(float) if integer else rng.uniform(low, 20, k)
        options.append(GroupOptions(g, np.arange(k) + 1, rng.normal(1.0, 1.0, k), costs))
    return options


def random_budget(rng: np.random.Generator, options: list[GroupOptions]) -> float:
    """Mostly the exact cost of some combination (ties at the budget), sometimes in between."""
    b = float(rng.choice(combo_costs(options)))
    return b if rng.random() < 0.5 else b + float(rng.uniform(0, 3))


def check(alloc: Allocation, options: list[GroupOptions], budget: float) -> None:
    """The allocation is internally consistent: counts are options, totals add up."""
    by_group = {o.group: o for o in options}
    assert set(alloc.counts) == set(by_group)
    idx = {g: int(np.flatnonzero(by_group[g].counts == c)[0]) for g, c in alloc.counts.items()}
    assert alloc.value == pytest.approx(sum(by_group[g].values[i] for g, i in idx.items()))
    assert alloc.cost == pytest.approx(sum(by_group[g].costs[i] for g, i in idx.items()))
    assert alloc.feasible == within_budget(alloc.cost, budget)


# ------------------------------------------------------------------ MCKP vs brute force


@pytest.mark.parametrize("negative", [False, True])
def test_pareto_matches_brute_force(negative: bool) -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        options = random_options(rng, negative=negative)
        budget = random_budget(rng, options)
        opt = brute_force(options, budget)
        for kwargs in ({}, {"bound": False}, {"max_frontier": None}):
            alloc = solve_pareto(options, budget, **kwargs)
            check(alloc, options, budget)
            if opt is None:
                assert not alloc.feasible
            else:
                assert alloc.feasible
                assert alloc.value == pytest.approx(opt, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(0, 100), st.floats(-10, 10)), min_size=1,
                         max_size=5), min_size=1, max_size=4),
       st.floats(0, 1))
def test_pareto_matches_brute_force_hypothesis(groups: list[list[tuple[float, float]]],
                                               frac: float) -> None:
    options = [GroupOptions(g, np.arange(len(opts)), [v for _, v in opts], [c for c, _ in opts])
               for g, opts in enumerate(groups)]
    costs = combo_costs(options)
    budget = min(costs) + frac * (max(costs) - min(costs))
    opt = brute_force(options, budget)
    alloc = solve_pareto(options, budget)
    check(alloc, options, budget)
    assert opt is not None and alloc.feasible
    assert alloc.value == pytest.approx(opt, abs=1e-9)


def test_pareto_bound_on_larger_instances() -> None:
    """8 groups of up to 12 options, too many to enumerate: the LP-bounded merge, the plain
    merge and the exact integer DP agree. On tiny instances the bounded merge's first feasible
    guess is nearly always optimal; here about a quarter are not, so the merge must find it."""
    rng = np.random.default_rng(10)
    for _ in range(60):
        options = [GroupOptions(g, np.arange(k) + 1, rng.normal(1.0, 1.0, k),
                                rng.integers(0, 50, k).astype(float))
                   for g, k in enumerate(rng.integers(4, 13, 8))]
        budget = sum(o.costs.min() for o in options) + float(rng.integers(0, 150))
        bounded = solve_pareto(options, budget)
        plain = solve_pareto(options, budget, bound=False, max_frontier=None)
        dp = solve_dp(options, budget, resolution=int(budget))
        check(bounded, options, budget)
        assert bounded.feasible and plain.feasible and dp.feasible
        assert bounded.value == pytest.approx(plain.value, abs=1e-9)
        assert bounded.value == pytest.approx(dp.value, abs=1e-9)


def test_dp_exact_for_integer_costs_at_unit_resolution() -> None:
    """Integer costs and budget with resolution = budget: the unit is 1, rounding is a no-op."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        options = random_options(rng, integer=True, negative=bool(rng.random() < 0.3))
        budget = float(rng.choice(combo_costs(options)) + rng.integers(0, 3))
        if budget <= 0:
            continue
        opt = brute_force(options, budget)
        alloc = solve_dp(options, budget, resolution=int(budget))
        check(alloc, options, budget)
        assert alloc.feasible == (opt is not None)
        if opt is not None:
            assert alloc.value == pytest.approx(opt, abs=1e-9)


@pytest.mark.parametrize("resolution", [7, 50, 1000])
def test_dp_rounding_guarantee(resolution: int) -> None:
    """Float costs: the budget is never exceeded, and the value is at least the exact optimum
    at budget - G * unit (unit = budget / resolution; each of the G rounded-up costs overstates
    by less than one unit)."""
    rng = np.random.default_rng(2)
    for _ in range(200):
        options = random_options(rng)
        budget = random_budget(rng, options)
        if budget <= 0:
            continue
        alloc = solve_dp(options, budget, resolution=resolution)
        check(alloc, options, budget)
        exact = brute_force(options, budget)
        assert alloc.feasible == (exact is not None)
        if alloc.feasible:
            assert alloc.cost <= budget * (1 + 1e-12)
            assert alloc.value <= exact + 1e-9
            smaller = brute_force(options, budget - len(options) * budget / resolution - 1e-9)
            if smaller is not None:
                assert alloc.value >= smaller - 1e-9


def test_thinned_pareto_keeps_its_bound() -> None:
    """With a tiny max_frontier the result is still within budget and at least the optimum
    at budget - G * delta (delta = free budget / max_frontier)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        options = random_options(rng)
        budget = random_budget(rng, options)
        for bound in (True, False):
            alloc = solve_pareto(options, budget, max_frontier=3, bound=bound)
            check(alloc, options, budget)
            exact = brute_force(options, budget)
            assert alloc.feasible == (exact is not None)
            if not alloc.feasible:
                continue
            free = budget - sum(o.costs.min() for o in options)
            smaller = brute_force(options, budget - len(options) * free / 3 - 1e-9)
            assert alloc.value <= exact + 1e-9
            if smaller is not None:
                assert alloc.value >= smaller - 1e-9


@pytest.mark.parametrize("method", ["pareto", "dp", "auto"])
def test_infeasible_returns_cheapest_flagged(method: str) -> None:
    options = [GroupOptions(0, [1, 2, 3], [1.0, 2.0, 3.0], [5.0, 6.0, 7.0]),
               GroupOptions(1, [4, 8], [1.0, 1.5], [3.0, 2.0])]  # cheaper at the larger count
    alloc = solve(options, 6.9, method)
    assert not alloc.feasible
    assert alloc.counts == {0: 1, 1: 8}
    assert alloc.cost == 7.0 and alloc.value == 2.5


@pytest.mark.parametrize("method", ["pareto", "dp"])
def test_budget_edge_and_fixed_groups(method: str) -> None:
    options = [fixed_options(7, 64, 10.0),
               make_options(3, [3.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0], min_channels=1)]
    kwargs = {"resolution": 12} if method == "dp" else {}  # unit 1: the DP is exact
    exact = solve(options, 12.0, method, **kwargs)  # exactly affordable: 10 + 2 channels
    assert exact.feasible and exact.counts == {7: 64, 3: 2} and exact.cost == 12.0
    assert exact.value == 5.0
    everything = solve(options, 1e9, method)
    assert everything.counts == {7: 64, 3: 3}


def test_solve_dispatch() -> None:
    options = [make_options(0, [1.0, 2.0], [0.0, 1.0, 2.0])]
    assert solve(options, 1.0, "pareto") == solve(options, 1.0, "dp") == solve(options, 1.0)
    with pytest.raises(ValueError, match="unknown knapsack method"):
        solve(options, 1.0, "greedy")
    with pytest.raises(ValueError, match="no groups"):
        solve([], 1.0)


# ------------------------------------------------------------------------------- options


def test_make_options_rounding_and_min_channels() -> None:
    scores = np.arange(30, dtype=float)
    curve = np.arange(31) * 2.0
    assert make_options(0, scores, curve, round_to=8).counts.tolist() == [8, 16, 24, 30]
    assert make_options(0, scores, curve, min_channels=10, round_to=8).counts.tolist() \
        == [16, 24, 30]
    assert make_options(0, scores[:5], curve[:6], round_to=8).counts.tolist() == [1, 2, 3, 4, 5]
    assert make_options(0, scores[:5], curve[:6], min_channels=0).counts.tolist() \
        == [0, 1, 2, 3, 4, 5]
    assert make_options(0, scores, curve, min_channels=40).counts.tolist() == [30]
    assert allowed_counts(30, 4, allowed=[2, 6, 12, 99]).tolist() == [6, 12, 30]
    opt = make_options(5, scores, curve, round_to=8)
    assert opt.values.tolist() == [sum(range(22, 30)), sum(range(14, 30)), sum(range(6, 30)),
                                   sum(range(30))]
    assert opt.costs.tolist() == [16.0, 32.0, 48.0, 60.0]
    for c in opt.counts:  # every option keeps a multiple of 8 or the full width
        assert c % 8 == 0 or c == 30


def test_make_options_accepts_torch_and_validates() -> None:
    opt = make_options(1, torch.tensor([0.5, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert opt.values.tolist() == [2.0, 3.0, 3.5] and opt.counts.dtype == np.int64
    with pytest.raises(ValueError, match="cost_curve"):
        make_options(0, [1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        make_options(0, [1.0, float("nan")], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="ascending"):
        GroupOptions(0, [2, 1], [0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="length"):
        GroupOptions(0, [1, 2], [0.0], [0.0, 1.0])


def test_fixed_options_and_top_channels() -> None:
    fixed = fixed_options(4, 256, 123.0)
    assert fixed.counts.tolist() == [256] and fixed.costs.tolist() == [123.0]
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0])
    assert top_channels(scores, 3).tolist() == [1, 2, 3]
    assert top_channels(scores, 1).tolist() == [1]  # tie: the lower index wins
    assert top_channels(scores, 0).tolist() == []
    assert top_channels(scores, 10).tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------- HALP


def random_halp(rng: np.random.Generator, integer: bool
                ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """1-3 groups of 1-7 channels; cost curves are random walks with negative steps."""
    scores, curves = {}, {}
    for g in range(int(rng.integers(1, 4))):
        n = int(rng.integers(1, 8))
        scores[g] = rng.random(n)
        steps = rng.integers(-3, 8, n + 1) if integer else rng.uniform(-3, 8, n + 1)
        curves[g] = np.abs(steps[:1]) + np.concatenate([[0], np.cumsum(steps[1:])])
    return scores, curves


def prefix_brute_force(scores: dict, curves: dict, budget: float, group_size: int,
                       force_first: bool) -> float | None:
    """Brute force over every item subset that respects the prefix constraint."""
    items = {g: halp_items(scores[g], curves[g], group_size) for g in scores}
    best = None
    lengths = [range(0 if not force_first else 1, len(items[g][0]) + 1) for g in scores]
    for choice in itertools.product(*lengths):
        cost = math.fsum(curves[g][0] + items[g][1][:i].sum()
                         for g, i in zip(scores, choice, strict=True))
        if within_budget(cost, budget):
            value = math.fsum(items[g][0][:i].sum() for g, i in zip(scores, choice, strict=True))
            best = value if best is None else max(best, value)
    return best


def test_chunks_and_items() -> None:
    assert chunk_counts(20, 8).tolist() == [8, 16, 20]
    assert chunk_counts(20, 8, force_first=False).tolist() == [0, 8, 16, 20]
    assert chunk_counts(3, 8).tolist() == [3]
    scores = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    curve = np.array([1.0, 4.0, 3.0, 6.0, 5.0, 9.0])
    values, weights = halp_items(scores, curve, 2)
    assert values.tolist() == [9.0, 5.0, 1.0]  # chunks of the sorted scores, best first
    assert weights.tolist() == [2.0, 2.0, 4.0]  # C(2)-C(0), C(4)-C(2), C(5)-C(4)
    opt = halp_options(0, scores, curve, 2)
    assert opt.counts.tolist() == [2, 4, 5] and opt.costs.tolist() == [3.0, 5.0, 9.0]
    alloc = solve_halp({3: torch.tensor(scores)}, {3: torch.tensor(curve)}, 5.0, group_size=2)
    assert alloc.counts == {3: 4} and alloc.value == 14.0  # torch input, dict keys kept


@pytest.mark.parametrize("force_first", [True, False])
def test_halp_matches_prefix_brute_force(force_first: bool) -> None:
    """Float costs with negative marginals: the MCKP reduction is exact and respects the
    prefix constraint (kept counts are chunk boundaries)."""
    rng = np.random.default_rng(4)
    for _ in range(200):
        scores, curves = random_halp(rng, integer=False)
        gs = int(rng.integers(1, 4))
        opts = [halp_options(g, scores[g], curves[g], gs, force_first) for g in scores]
        budget = random_budget(rng, opts)
        opt = prefix_brute_force(scores, curves, budget, gs, force_first)
        alloc = solve_halp(scores, curves, budget, gs, force_first)
        check(alloc, opts, budget)
        assert alloc.feasible == (opt is not None)
        if opt is not None:
            assert alloc.value == pytest.approx(opt, abs=1e-9)
        for g, c in alloc.counts.items():
            assert c in chunk_counts(len(scores[g]), gs, force_first)
            if force_first:
                assert c >= 1


@pytest.mark.parametrize("force_first", [True, False])
def test_halp_augmented_dp_agrees_with_reduction(force_first: bool) -> None:
    """Integer costs (negative marginals included), resolution = budget: HALP's item-sequence
    DP, the MCKP DP and Pareto merging all reach the brute-force optimum."""
    rng = np.random.default_rng(5)
    compared = 0
    for _ in range(300):
        scores, curves = random_halp(rng, integer=True)
        gs = int(rng.integers(1, 4))
        opts = [halp_options(g, scores[g], curves[g], gs, force_first) for g in scores]
        budget = float(rng.choice(combo_costs(opts)) + rng.integers(0, 2))
        if budget <= 0:
            continue
        opt = prefix_brute_force(scores, curves, budget, gs, force_first)
        aug = solve_halp_augmented(scores, curves, budget, gs, force_first,
                                   resolution=int(budget))
        pareto = solve_halp(scores, curves, budget, gs, force_first, method="pareto")
        dp = solve_halp(scores, curves, budget, gs, force_first, method="dp",
                        resolution=int(budget))
        check(aug, opts, budget)
        assert aug.feasible == pareto.feasible == dp.feasible == (opt is not None)
        if opt is not None:
            compared += 1
            assert aug.value == pytest.approx(opt, abs=1e-9)
            assert pareto.value == pytest.approx(opt, abs=1e-9)
            assert dp.value == pytest.approx(opt, abs=1e-9)
    assert compared > 200


def test_halp_negative_marginal_cost_is_used() -> None:
    """Widening from 2 to 4 channels makes the layer cheaper (a latency staircase): the
    optimum takes the prefix through the dip, which needs the enlarged capacity."""
    scores = {0: np.array([4.0, 3.0, 2.0, 1.0])}
    curves = {0: np.array([0.0, 5.0, 10.0, 9.0, 6.0])}
    for method in ("pareto", "dp", "augmented"):
        kwargs = {"resolution": 8} if method != "pareto" else {}
        alloc = solve_halp(scores, curves, 8.0, group_size=1, method=method, **kwargs)
        assert alloc.counts == {0: 4} and alloc.cost == 6.0 and alloc.feasible


def test_halp_augmented_float_costs_never_exceed_budget() -> None:
    rng = np.random.default_rng(6)
    for _ in range(100):
        scores, curves = random_halp(rng, integer=False)
        opts = [halp_options(g, scores[g], curves[g], 2) for g in scores]
        budget = random_budget(rng, opts)
        if budget <= 0:
            continue
        alloc = solve_halp_augmented(scores, curves, budget, 2, resolution=20)
        exact = solve_halp(scores, curves, budget, 2)
        assert alloc.feasible == exact.feasible
        if alloc.feasible:
            assert alloc.cost <= budget * (1 + 1e-12) and alloc.value <= exact.value + 1e-9


def test_halp_infeasible() -> None:
    scores = {0: np.ones(4), 1: np.ones(4)}
    curves = {0: np.arange(5.0) + 10, 1: np.arange(5.0) + 10}
    for method in ("auto", "augmented"):
        alloc = solve_halp(scores, curves, 5.0, group_size=2, method=method)
        assert not alloc.feasible and alloc.counts == {0: 2, 1: 2}


# ----------------------------------------------------------------------------- threshold


def test_global_threshold_removes_requested_fraction() -> None:
    rng = np.random.default_rng(7)
    scores = {g: rng.random(n) + 0.5 for g, n in enumerate([16, 32, 64])}
    total = 112
    for ratio in (0.0, 0.1, 0.25, 0.5, 0.7):
        keep = global_threshold(scores, ratio)
        removed = total - sum(len(k) for k in keep.values())
        assert removed == round(ratio * total)
        every = np.sort(np.concatenate(list(scores.values())))
        for g, k in keep.items():  # the kept channels are the globally best ones
            assert np.all(scores[g][k] > every[removed - 1] if removed else True)
            assert np.all(np.diff(k) > 0)


def test_global_threshold_never_empties_a_group() -> None:
    scores = {0: torch.tensor([0.01, 0.02, 0.03]), 1: torch.tensor([5.0, 6.0, 7.0, 8.0])}
    keep = global_threshold(scores, 0.5)
    assert keep[0].tolist() == [2]  # its best channel survives the global cut
    assert keep[1].tolist() == [1, 2, 3]
    keep = global_threshold(scores, 1.0, min_channels=2)
    assert keep[0].tolist() == [1, 2] and keep[1].tolist() == [2, 3]


def test_global_threshold_ties_go_together() -> None:
    scores = {0: np.array([1.0, 1.0, 1.0, 2.0]), 1: np.array([3.0, 1.0])}
    keep = global_threshold(scores, 2 / 6)  # threshold 1.0: all four 1.0s go
    assert keep[0].tolist() == [3] and keep[1].tolist() == [0]
    with pytest.raises(ValueError, match="prune_ratio"):
        global_threshold(scores, 1.5)


def test_per_group_ratio() -> None:
    rng = np.random.default_rng(8)
    scores = {0: rng.random(64), 1: rng.random(30), 2: rng.random(5)}
    keep = per_group_ratio(scores, 0.5, round_to=8)
    assert [len(keep[g]) for g in range(3)] == [32, 16, 3]
    assert keep[0].tolist() == sorted(top_channels(scores[0], 32).tolist())
    keep = per_group_ratio(scores, 0.99, min_channels=2)
    assert [len(keep[g]) for g in range(3)] == [2, 2, 2]
    assert [len(k) for k in per_group_ratio(scores, 0.0).values()] == [64, 30, 5]


# --------------------------------------------------------------------------------- scale

RESNET50_WIDTHS = [64] + [64] * 6 + [128] * 8 + [256] * 12 + [512] * 6 \
    + [256, 512, 1024, 2048] + [1024, 2048, 2048]


def resnet50_instance(round_to: int) -> tuple[list[GroupOptions], dict, dict, float]:
    rng = np.random.default_rng(9)
    options, scores, curves = [], {}, {}
    for g, n in enumerate(RESNET50_WIDTHS):
        scores[g] = rng.exponential(1.0, n) * rng.uniform(0.2, 2.0)
        curves[g] = np.arange(n + 1) * rng.lognormal(0.0, 0.7) * 1e6 / n
        options.append(make_options(g, scores[g], curves[g], round_to=round_to))
    return options, scores, curves, 0.5 * sum(o.costs[-1] for o in options)


@pytest.mark.parametrize("round_to", [1, 8])
def test_resnet50_sized_instance(round_to: int) -> None:
    """40 groups of 64..2048 channels: every solver meets the budget (no timing asserted)."""
    options, scores, curves, budget = resnet50_instance(round_to)
    assert len(options) == 40
    for method in ("pareto", "dp"):
        alloc = solve(options, budget, method)
        check(alloc, options, budget)
        assert alloc.feasible and alloc.cost <= budget * (1 + 1e-9)
    for method in ("auto", "augmented"):
        alloc = solve_halp(scores, curves, budget, group_size=8 * round_to, method=method)
        assert alloc.feasible and alloc.cost <= budget * (1 + 1e-9)
