"""A cost model seen through layer drop: once a group is empty, a group whose producers read
nothing else carries only constants (each producer outputs its bias), so the methods drop it
too and its cost is counted as gone. Allocators then see what dropping a bottleneck's first
width really saves: the whole branch, not one conv."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from prunecli.cost.model import CountsCost
from prunecli.structure import ChannelStructure


class DropCascade(CountsCost):
    """``inner``'s cost of the counts after the cascade; everything else is ``inner``'s."""

    def __init__(self, inner: Any, structure: ChannelStructure, droppable: Collection[int]
                 ) -> None:
        self.inner = inner
        self.full = inner.full
        allowed = set(droppable)
        self.rules = [(g, np.array(sorted(reads), dtype=np.int64))
                      for g, reads in structure.constant_rules() if g in allowed]
        self.dense = inner.dense

    def __getattr__(self, name: str) -> Any:  # name, unit, terms, group_curves, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def effective(self, x: np.ndarray) -> np.ndarray:
        """Counts with every constant-carrying group set to 0 (rows of ``x``)."""
        x = np.array(x, dtype=np.float64, ndmin=2)
        for _ in range(len(self.rules)):
            changed = False
            for g, reads in self.rules:
                hit = (x[:, reads] == 0).all(axis=1) & (x[:, g] != 0)
                if hit.any():
                    x[hit, g] = 0.0
                    changed = True
            if not changed:
                break
        return x

    def cost_batch(self, x: np.ndarray) -> np.ndarray:
        return self.inner.cost_batch(self.effective(x))
