"""Allocation without a cost model: Network Slimming's one global threshold, and the same
pruning ratio in every group (the usual uniform baseline)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from prunecli.allocate.options import Floors, as_array, group_floor, kept_count, top_channels


def _check_ratio(prune_ratio: float) -> None:
    if not 0.0 <= prune_ratio <= 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1], got {prune_ratio}")


def _finite(scores: Mapping[int, Any]) -> dict[int, np.ndarray]:
    arrays = {g: as_array(s) for g, s in scores.items()}
    for g, s in arrays.items():
        if not np.all(np.isfinite(s)):
            raise ValueError(f"group {g}: scores must be finite")
    return arrays


def global_threshold(scores: Mapping[int, Any], prune_ratio: float,
                     min_channels: Floors = 1, droppable: Collection[int] = ()
                     ) -> dict[int, np.ndarray]:
    """Network Slimming: one threshold over the channels of all groups; keep the channels
    scoring strictly above it. Returns the kept channel indices per group, ascending.

    The threshold is the ``k``-th smallest score, ``k = round(prune_ratio * N)`` (``N``
    channels in all), so exactly ``k`` channels go when the scores around it are distinct;
    channels tying with it go too. Scores are used as given (Network Slimming passes
    ``|gamma|``). A group left with fewer than ``min_channels`` keeps its ``min_channels`` best
    instead (at least 1 by default), so no layer is ever emptied by the global cut -- except
    the ``droppable`` groups (layer drop), which keep whatever passes the threshold.
    """
    _check_ratio(prune_ratio)
    arrays = _finite(scores)
    every = np.concatenate([np.zeros(0), *arrays.values()])
    k = int(round(prune_ratio * len(every)))
    threshold = np.partition(every, k - 1)[k - 1] if k > 0 else -np.inf
    keep = {}
    for g, s in arrays.items():
        kept = np.flatnonzero(s > threshold)
        floor = 0 if g in droppable else group_floor(min_channels, g, len(s))
        keep[g] = kept if len(kept) >= floor else top_channels(s, floor)
    return keep


def per_group_ratio(scores: Mapping[int, Any], prune_ratio: float, min_channels: int = 1,
                    round_to: int = 1) -> dict[int, np.ndarray]:
    """Prune the same fraction of every group (its lowest scores), the count rounded to a
    multiple of ``round_to`` and at least ``min_channels``; kept indices per group, ascending."""
    _check_ratio(prune_ratio)
    return {g: top_channels(s, kept_count(len(s), 1.0 - prune_ratio, round_to, min_channels))
            for g, s in _finite(scores).items()}
