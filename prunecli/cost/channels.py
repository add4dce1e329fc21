"""The number of channels kept in a set of groups, as a cost model: Network Slimming's
"prune P% of the channels" target expressed so the same allocators serve it."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from prunecli.cost.model import CountsCost
from prunecli.structure import ChannelStructure


class ChannelCountCost(CountsCost):
    """cost(x) = the sum of the kept counts of ``groups`` (default: the prunable ones)."""

    name = "channels"
    unit = "channels"

    def __init__(self, structure: ChannelStructure, groups: Iterable[int] | None = None) -> None:
        self.structure = structure
        self.full = np.array([g.size for g in structure.groups], dtype=np.float64)
        ids = [g.id for g in structure.prunable_groups] if groups is None else list(groups)
        self.weights = np.zeros(len(self.full))
        units = np.array([g.unit for g in structure.groups], dtype=np.float64)
        self.weights[ids] = units[ids]  # a grouped conv's unit is several channels
        self.dense = float(self.full @ self.weights)

    def cost_batch(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weights
