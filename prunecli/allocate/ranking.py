"""Global ranking: remove the lowest-scoring channels of all groups, one after another, until
the model's exact cost reaches a target (Taylor's iterative removal, Network Slimming's global
threshold when the target is a cost rather than a channel count).

Scores of different groups are compared directly (one global order, no per-layer
normalisation, as the papers do). Each candidate prefix of that order is costed exactly, in one
vectorised call of the cost model, so the cut lands on the first prefix at or under the target.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunecli.allocate.options import Floors, as_array, group_floor


@dataclass
class RankingResult:
    keep: dict[int, np.ndarray]  # kept channel indices per scored group, ascending
    removed: int  # channels removed by this call
    cost: float  # exact cost after the removal
    reached: bool  # the cost is at or under the target


def prune_by_ranking(cost_model: Any, scores: Mapping[int, Any], target: float,
                     active: Mapping[int, Any] | None = None, max_remove: int | None = None,
                     min_channels: Floors = 1, priority: Mapping[int, Any] | None = None,
                     droppable: Collection[int] = ()) -> RankingResult:
    """Remove active channels in ascending score order until ``cost <= target``.

    ``active``: boolean masks of the channels still present (default: all); removed channels
    stay removed. ``max_remove`` caps how many go in this call (an iterative schedule).
    Each group keeps its ``min_channels`` best active channels (at least one; a mapping gives
    each group its own count), except the
    ``droppable`` groups, which may lose all (layer drop). ``priority`` (optional, same
    shape as ``scores``): channels with a lower priority go first whatever their score (e.g.
    the channels Optimal Thresholding marks negligible).
    """
    groups = sorted(scores)
    arrays = {g: as_array(scores[g]) for g in groups}
    masks = {g: (np.ones(len(arrays[g]), bool) if active is None or g not in active
                 else as_array(active[g], bool)) for g in groups}
    counts = cost_model.full.copy()
    for g in groups:
        counts[g] = masks[g].sum()
    cand_group, cand_index, cand_score, cand_prio = [], [], [], []
    for g in groups:
        idx = np.flatnonzero(masks[g])
        floor = 0 if g in droppable else max(group_floor(min_channels, g, len(idx)), 1)
        if len(idx) <= floor:
            continue
        s = arrays[g][idx]
        order = np.argsort(-s, kind="stable")  # the best `floor` stay
        removable = idx[order[floor:]]
        cand_group.append(np.full(len(removable), g))
        cand_index.append(removable)
        cand_score.append(arrays[g][removable])
        prio = as_array(priority[g])[removable] if priority is not None and g in priority \
            else np.zeros(len(removable))
        cand_prio.append(prio)
    keep = {g: np.flatnonzero(masks[g]) for g in groups}
    now = cost_model.cost(counts)
    if not cand_group or now <= target:
        return RankingResult(keep, 0, now, now <= target)
    cg = np.concatenate(cand_group)
    ci = np.concatenate(cand_index)
    order = np.lexsort((ci, np.concatenate(cand_score), np.concatenate(cand_prio)))
    limit = len(order) if max_remove is None else min(len(order), max(0, int(max_remove)))
    order = order[:limit]
    # counts after removing the first k candidates, k = 0..limit, costed in one batch
    steps = np.zeros((limit + 1, len(counts)))
    np.add.at(steps, (np.arange(1, limit + 1), cg[order]), 1.0)
    path = counts[None] - np.cumsum(steps, axis=0)
    costs = np.concatenate([cost_model.cost_batch(path[i: i + 4096])
                            for i in range(0, limit + 1, 4096)])
    under = np.flatnonzero(costs <= target)
    k = int(under[0]) if len(under) else limit
    removed = order[:k]
    cost = float(costs[k])
    if len(under) and k > 0:
        removed, cost = _fill_back(cost_model, path[k].copy(), cg, removed, target)
    for g, i in zip(cg[removed], ci[removed], strict=True):
        masks[int(g)][int(i)] = False
    keep = {g: np.flatnonzero(masks[g]) for g in groups}
    return RankingResult(keep, len(removed), cost, bool(cost <= target))


def _fill_back(cost_model: Any, counts: np.ndarray, cand_group: np.ndarray,
               removed: np.ndarray, target: float) -> tuple[np.ndarray, float]:
    """The channel that crossed the target may have been a costly one (a channel of a wide
    residual stream is worth several percent of a small network): give back, best first, the
    removed channels that still fit under the target, so the cut lands close to it. Groups the
    ranking emptied (layer drop) get nothing back."""
    cost = cost_model.cost(counts)
    back = np.zeros(len(removed), bool)
    marginal: dict[int, float] = {}  # cost of giving one channel back to a group, at `counts`
    for j in range(len(removed) - 1, -1, -1):  # the most important removed channel first
        g = int(cand_group[removed[j]])
        if counts[g] == 0:  # a dropped layer stays dropped: one channel would bring back its
            continue  # fixed costs (launches, norms) that a MACs or params count does not see
        if g not in marginal:
            counts[g] += 1
            marginal[g] = cost_model.cost(counts) - cost
            counts[g] -= 1
        if cost + marginal[g] <= target:
            counts[g] += 1
            back[j], cost = True, cost_model.cost(counts)
            marginal.clear()  # the other groups' marginal costs may depend on this one
    return removed[~back], cost
