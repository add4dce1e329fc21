"""Allocator speed benchmark: how long does allocating a ResNet-50-sized network take?

Run on demand (not a test)::

    python benchmarks/allocate_speed.py [--repeats 5] [--out benchmarks/results]

The project's goal: "allocating ResNet-50 at single-channel granularity must take well under a
second". The instance is random but shaped like ResNet-50: 40 channel groups (its 37 prunable
widths -- stem 64, 16 bottlenecks x 2 inner widths, 4 residual streams -- plus 1024, 2048 and
2048 to reach 40), scores exponential with a random scale per group, budget half the full
cost. Two cost models:

* **MACs** -- ``C_g(c) = a_g * c`` (other widths fixed), ``a_g`` log-normal;
* **latency** -- a staircase in steps of 32 channels plus noise, so marginal costs can be
  negative (what HALP's capacity shift exists for).

At single-channel granularity (``round_to=1``; HALP ``group_size=1``) and at multiples of 8 it
times, with the solvers' default settings unless named:

* ``pareto`` -- :func:`solve_pareto` (LP-bounded Pareto merging; what ``solve`` uses);
* ``pareto, never thinned`` -- the same with ``max_frontier=None``: provably exact, the
  reference for *Gap* (on the degenerate instance ``max_frontier=20000`` instead, as the
  unthinned frontier does not fit in memory);
* ``pareto, no bound`` -- the plain merge (thinned at the default ``max_frontier``), to show
  what the bound buys;
* ``dp`` / ``dp, res 1e5`` -- :func:`solve_dp` at resolution 10,000 (default) and 100,000;
* ``halp`` / ``halp augmented`` -- :func:`solve_halp` through the MCKP reduction, and HALP's
  own item-sequence DP.

A last, adversarial instance (all channels of a group equal, per-channel value/cost ratios
within 0.1% of each other across groups) shows the Pareto solver's worst case: nearly every
partial choice is within the LP bound of the optimum, so the frontier saturates
``max_frontier`` and the result is only guaranteed up to the thinning bound.

Each (instance, solver) is run ``--repeats`` times, solvers interleaved so they see the same
machine load; the median is reported. *Gap* is how far the value falls short of the best value
any solver found on that instance, relative to it. Writes ``allocate_speed.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunecli.allocate import (
    Allocation,
    GroupOptions,
    make_options,
    solve_dp,
    solve_halp,
    solve_pareto,
)

WIDTHS = [64] + [64] * 6 + [128] * 8 + [256] * 12 + [512] * 6 + [256, 512, 1024, 2048] \
    + [1024, 2048, 2048]
BUDGET_RATIO = 0.5
GOAL_S = 1.0
NOTES = [
    "Notes:", "",
    "- *pareto, never thinned* (`max_frontier=None`) is provably exact; where *pareto* matches "
    "it, the default thinning cost nothing.",
    "- *dp* rounds every group's cost up to a unit of budget/resolution, so it leaves up to "
    "groups x unit of the budget unspent (the cost/budget column) and loses that much value; "
    "a 10x finer resolution narrows the gap several-fold at 10-20x the time.",
    "- *halp* is HALP's problem (keep a prefix of the importance-sorted chunks; group size 1 or "
    "8) solved through the MCKP reduction by *pareto*; *halp augmented* is HALP's own "
    "item-sequence DP with the same rounding as *dp*.",
    "- The degenerate instance has no exact reference: its frontier saturates even at "
    "`max_frontier=20000`, so that row is itself thinned (approximate), and *Gap* is relative "
    "to it.",
]


@dataclass
class Instance:
    name: str
    round_to: int
    scores: dict[int, np.ndarray]
    curves: dict[int, np.ndarray]
    options: list[GroupOptions]
    budget: float


@dataclass
class Row:
    instance: str
    solver: str
    times: list[float] = field(default_factory=list)
    alloc: Allocation | None = None


def make_instance(cost: str, round_to: int, seed: int = 0) -> Instance:
    """A ResNet-50-shaped random instance (see the module docstring)."""
    rng = np.random.default_rng(seed)
    scores, curves, options = {}, {}, []
    for g, n in enumerate(WIDTHS):
        c = np.arange(n + 1)
        per_channel = rng.lognormal(0.0, 0.7) * 1e6 / n
        if cost == "MACs":
            s = rng.exponential(1.0, n) * rng.uniform(0.2, 2.0)
            curve = per_channel * c
        elif cost == "latency":
            s = rng.exponential(1.0, n) * rng.uniform(0.2, 2.0)
            curve = per_channel * (np.ceil(c / 32) * 32 + 0.05 * c)
            curve = curve + rng.normal(0.0, 0.5 * per_channel, n + 1)
        else:  # degenerate: equal scores, nearly equal value per cost everywhere
            s = np.full(n, 1.0 + 1e-3 * rng.random())
            curve = c * (1.0 + 1e-3 * rng.random()) * 1000.0
        scores[g], curves[g] = s, curve
        options.append(make_options(g, s, curve, round_to=round_to))
    budget = BUDGET_RATIO * sum(float(o.costs[-1]) for o in options)
    granularity = "1 channel" if round_to == 1 else f"x{round_to}"
    return Instance(f"{cost}, {granularity}", round_to, scores, curves, options, budget)


def solvers(inst: Instance) -> dict[str, Callable[[], Allocation]]:
    o, b, gs = inst.options, inst.budget, inst.round_to
    degenerate = inst.name.startswith("degenerate")
    out = {
        "pareto": lambda: solve_pareto(o, b),
        # the reference: never thinned (exact); the degenerate frontier would not fit in memory
        "pareto, max_frontier 20000" if degenerate else "pareto, never thinned":
            lambda: solve_pareto(o, b, max_frontier=20_000 if degenerate else None),
        "pareto, no bound": lambda: solve_pareto(o, b, bound=False),
        "dp": lambda: solve_dp(o, b),
        "dp, res 1e5": lambda: solve_dp(o, b, resolution=100_000),
        "halp": lambda: solve_halp(inst.scores, inst.curves, b, group_size=gs),
        "halp augmented": lambda: solve_halp(inst.scores, inst.curves, b, group_size=gs,
                                             method="augmented"),
    }
    if degenerate:
        out.pop("pareto, no bound")  # the unbounded merge only repeats the saturated case
    return out


def run(instances: list[Instance], repeats: int) -> list[Row]:
    rows = []
    for inst in instances:
        table = {name: (Row(inst.name, name), f) for name, f in solvers(inst).items()}
        for _ in range(repeats):
            for row, f in table.values():
                t = time.perf_counter()
                row.alloc = f()
                row.times.append(time.perf_counter() - t)
        rows.extend(row for row, _ in table.values())
        print(f"{inst.name}: done", flush=True)
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(rows: list[Row], instances: list[Instance], repeats: int, out: Path) -> Path:
    budgets = {i.name: i.budget for i in instances}
    best = {}
    for r in rows:
        best[r.instance] = max(best.get(r.instance, -np.inf), r.alloc.value)
    lines = [
        "# Allocator speed", "",
        f"{dt.datetime.now():%Y-%m-%d %H:%M} · numpy {np.__version__} · Python "
        f"{platform.python_version()} · {cpu_name()} ({os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end: a shared machine, so times are noisy) · median "
        f"of {repeats}, solvers interleaved", "",
        f"ResNet-50-shaped random instance: {len(WIDTHS)} groups of "
        f"{min(WIDTHS)}..{max(WIDTHS)} channels ({sum(WIDTHS):,} channels), budget "
        f"{BUDGET_RATIO:.0%} of the full cost. *Gap*: value short of the best value found on "
        "the instance, relative. *Goal*: median under 1 s. Generated by "
        "`python benchmarks/allocate_speed.py` (see its docstring for the instances).", "",
        "| Instance | Solver | Median s | Min s | Value | Gap | Cost / budget | Goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        med = statistics.median(r.times)
        gap = (best[r.instance] - r.alloc.value) / abs(best[r.instance])
        lines.append(
            f"| {r.instance} | {r.solver} | {med:.3f} | {min(r.times):.3f} | "
            f"{r.alloc.value:,.3f} | {gap:.1e} | {r.alloc.cost / budgets[r.instance]:.6f} | "
            f"{'yes' if med < GOAL_S else 'no'} |")
    lines += ["", *summary(rows), "", *NOTES, ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "allocate_speed.md"
    path.write_text("\n".join(lines))
    return path


def summary(rows: list[Row]) -> list[str]:
    """One line per solver: its worst median over the realistic (non-degenerate) instances."""
    worst: dict[str, float] = {}
    for r in rows:
        if not r.instance.startswith("degenerate"):
            worst[r.solver] = max(worst.get(r.solver, 0.0), statistics.median(r.times))
    return ["Worst median over the MACs and latency instances:", "",
            *(f"- {s}: {t:.3f} s ({'meets' if t < GOAL_S else 'misses'} the 1 s goal)"
              for s, t in worst.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    instances = [make_instance(cost, r) for cost in ("MACs", "latency") for r in (1, 8)]
    instances.append(make_instance("degenerate", 1))
    rows = run(instances, args.repeats)
    print(write_report(rows, instances, args.repeats, args.out).read_text())


if __name__ == "__main__":
    main()
