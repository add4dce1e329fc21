"""Allocators: turn per-channel importance scores and per-group cost curves into how many
channels every group keeps, under a cost budget.

    options = [make_options(g, scores[g], cost_curves[g], round_to=8) for g in scores]
    alloc = solve(options, budget)                  # SMCP: multiple-choice knapsack
    keep = {g: top_channels(scores[g], c) for g, c in alloc.counts.items()}

    alloc = solve_halp(scores, cost_curves, budget, group_size=8)   # HALP
    keep = global_threshold(scores, prune_ratio=0.5)                # Network Slimming
"""

from prunecli.allocate.budget import BudgetResult, allocate_to_budget
from prunecli.allocate.halp import (
    chunk_counts,
    halp_items,
    halp_options,
    solve_halp,
    solve_halp_augmented,
)
from prunecli.allocate.knapsack import (
    Allocation,
    cheapest,
    efficient,
    pick_method,
    solve,
    solve_pareto,
    within_budget,
)
from prunecli.allocate.knapsack_dp import solve_dp
from prunecli.allocate.options import (
    GroupOptions,
    allowed_counts,
    fixed_options,
    kept_count,
    make_options,
    top_channels,
)
from prunecli.allocate.ranking import RankingResult, prune_by_ranking
from prunecli.allocate.threshold import global_threshold, per_group_ratio

__all__ = [
    "Allocation", "BudgetResult", "GroupOptions", "allocate_to_budget", "allowed_counts",
    "cheapest", "chunk_counts", "efficient",
    "fixed_options", "global_threshold", "halp_items", "halp_options", "kept_count",
    "make_options", "per_group_ratio", "pick_method", "prune_by_ranking", "RankingResult",
    "solve", "solve_dp", "solve_halp",
    "solve_halp_augmented", "solve_pareto", "top_channels", "within_budget",
]
