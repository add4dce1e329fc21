"""Per-group choices for the allocators: which kept counts a group may take, and what each is
worth (summed importance) and costs.

Keeping ``c`` channels of a group always means keeping its ``c`` best channels, so a group's
whole trade-off is two curves over ``c``: value ``V(c)`` (sum of the ``c`` largest scores) and
cost ``C(c)``. The solvers only ever see these curves, never channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

# Channels a group keeps at least: one count for every group, or a count per group id (a
# method's ``min_channels`` raised by ``max_prune_per_group``; groups not named keep >= 1).
Floors = Union[int, Mapping[int, int]]


def as_array(x: Any, dtype: type = np.float64) -> np.ndarray:
    """A numpy copy of ``x`` (torch tensors included, on any device) as a 1-D array."""
    if hasattr(x, "detach"):  # torch tensor: avoid importing torch here
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=dtype).reshape(-1)


@dataclass
class GroupOptions:
    """The allowed kept counts of one channel group with the value and cost of each.

    ``counts`` is ascending; ``values[i]`` and ``costs[i]`` belong to ``counts[i]``.
    """

    group: int
    counts: np.ndarray
    values: np.ndarray
    costs: np.ndarray

    def __post_init__(self) -> None:
        self.counts = as_array(self.counts, np.int64)
        self.values = as_array(self.values)
        self.costs = as_array(self.costs)
        k = len(self.counts)
        if k == 0 or len(self.values) != k or len(self.costs) != k:
            raise ValueError(f"group {self.group}: counts, values and costs need the same "
                             f"non-zero length (got {k}, {len(self.values)}, {len(self.costs)})")
        if np.any(np.diff(self.counts) <= 0):
            raise ValueError(f"group {self.group}: counts must be strictly ascending")
        if not (np.all(np.isfinite(self.values)) and np.all(np.isfinite(self.costs))):
            raise ValueError(f"group {self.group}: values and costs must be finite")

    def __len__(self) -> int:
        return len(self.counts)


def allowed_counts(n: int, min_channels: int = 1, round_to: int = 1,
                   allowed: Any = None, drop: bool = False) -> np.ndarray:
    """Kept counts a group of width ``n`` may take, ascending.

    Counts lie in ``[min_channels, n]``; with ``round_to > 1`` (and ``n >= round_to``) only
    multiples of ``round_to`` are offered, because hardware runs such widths faster. ``allowed``
    (e.g. a latency table's channel grid) replaces the ``round_to`` rule when given. The full
    width ``n`` is always offered so that "do not prune" is never impossible; ``drop`` adds
    ``0`` (the whole group goes: a layer drop, for groups the graph allows it on).
    """
    if n < 0 or round_to < 1:
        raise ValueError(f"need n >= 0 and round_to >= 1 (got n={n}, round_to={round_to})")
    lo = min(max(int(min_channels), 0), n)
    if allowed is not None:
        counts = as_array(allowed, np.int64)
    else:
        counts = np.arange(lo, n + 1)
        if round_to > 1 and n >= round_to:
            counts = counts[counts % round_to == 0]
    counts = counts[(counts >= lo) & (counts <= n)]
    return np.union1d(counts, [n, 0] if drop else [n]).astype(np.int64)


def group_floor(floors: Floors, group: int, size: int) -> int:
    """The least count ``group`` (of ``size`` channels) may keep under ``floors``, in [0, size]."""
    value = floors.get(group, 1) if isinstance(floors, Mapping) else floors
    return min(max(int(value), 0), size)


def kept_count(size: int, keep_ratio: float, round_to: int = 1, min_channels: int = 1) -> int:
    """Channels to keep of ``size`` at ``keep_ratio``: the allowed count (see
    :func:`allowed_counts`: a multiple of ``round_to`` when the width allows, at least
    ``min_channels``) nearest ``keep_ratio * size``; a tie goes to the larger count, keeping
    rather than losing a channel."""
    counts = allowed_counts(size, max(min_channels, 1), round_to)
    gap = np.abs(counts - keep_ratio * size)
    return int(counts[len(counts) - 1 - int(np.argmin(gap[::-1]))])


def sorted_cumsum(scores: Any) -> np.ndarray:
    """``V(c)`` for ``c = 0..n``: the sum of the ``c`` largest scores."""
    s = as_array(scores)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (NaN/Inf would make the ranking arbitrary)")
    return np.concatenate([[0.0], np.cumsum(np.sort(s)[::-1])])


def make_options(group: int, scores: Any, cost_curve: Any, min_channels: int = 1,
                 round_to: int = 1, allowed: Any = None, drop: bool = False) -> GroupOptions:
    """Options of one group from its per-channel ``scores`` and ``cost_curve`` (``n + 1`` costs,
    at ``c = 0..n``); see :func:`allowed_counts` for which counts are offered."""
    values = sorted_cumsum(scores)
    n = len(values) - 1
    curve = as_array(cost_curve)
    if len(curve) != n + 1:
        raise ValueError(f"group {group}: cost_curve needs {n + 1} entries (c = 0..{n}), "
                         f"got {len(curve)}")
    counts = allowed_counts(n, min_channels, round_to, allowed, drop)
    return GroupOptions(group, counts, values[counts], curve[counts])


def fixed_options(group: int, n: int, cost: float, value: float = 0.0) -> GroupOptions:
    """A group that must not be pruned: its only option is its full width ``n``. Its value is a
    constant of the problem, so it defaults to 0."""
    return GroupOptions(group, np.array([n]), np.array([value]), np.array([cost]))


def top_channels(scores: Any, count: int) -> np.ndarray:
    """Indices of the ``count`` highest scores, ascending. Ties go to the lower index (a stable
    sort), so the same scores always give the same channels."""
    s = as_array(scores)
    count = int(min(max(count, 0), len(s)))
    return np.sort(np.argsort(-s, kind="stable")[:count])
