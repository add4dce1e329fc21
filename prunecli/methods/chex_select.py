"""CHEX's selection math, apart from its bookkeeping (:mod:`prunecli.methods.chex`): the
exploration schedule, column subset selection by leverage scores (which channels to keep in a
group's matrix of filters), and the regrowth probabilities from projection residuals (which
pruned channels come back: the ones least explained by the kept ones)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from prunecli.allocate import kept_count, prune_by_ranking
from prunecli.allocate.options import Floors, group_floor
from prunecli.errors import ConfigError

SAMPLINGS = ("softmax", "proportional", "uniform")


# ---------------------------------------------------------------------- the pieces
def exploration_delta(t: float, t_max: float, d0: float) -> float:
    """``d_t = d0 * (1 + cos(pi * t / T_max)) / 2``: ``d0`` at 0, ``d0 / 2`` halfway, 0 from
    ``T_max`` on."""
    if t_max <= 0 or t >= t_max:
        return 0.0
    return float(d0) * (1.0 + math.cos(math.pi * max(0.0, float(t)) / t_max)) / 2.0


def _rank_tol(s: torch.Tensor, shape: tuple[int, ...]) -> float:
    if s.numel() == 0:
        return 0.0
    return float(s.max()) * max(shape) * torch.finfo(s.dtype).eps


def leverage_scores(x: torch.Tensor, r: int) -> torch.Tensor | None:
    """``||V_{:r}[j]||^2`` for every column ``j`` of ``x`` (d x n), ``V`` its right singular
    vectors in decreasing order of singular value; None when the columns are linearly dependent
    (rank < n, e.g. d < n), where leverage scores do not single out columns."""
    x = x.detach().double().cpu()
    d, n = x.shape
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    if d < n:
        return None
    if d > n:  # X = QR: R (n x n) has the same right singular vectors, at a fraction of the cost
        x = torch.linalg.qr(x, mode="r").R
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    if int((s > _rank_tol(s, (d, n))).sum()) < n:
        return None
    return vh[: max(0, int(r))].square().sum(0)


def css_select(x: torch.Tensor, r: int) -> np.ndarray:
    """Column subset selection: the ``r`` columns of ``x`` with the largest leverage scores
    (ascending indices); the largest L1 norms when ``x`` is rank-deficient."""
    n = x.shape[1]
    r = int(r)
    if r >= n:
        return np.arange(n)
    if r <= 0:
        return np.zeros(0, dtype=np.int64)
    score = leverage_scores(x, r)
    if score is None:
        score = x.detach().double().cpu().abs().sum(0)
    order = np.argsort(-score.numpy(), kind="stable")
    return np.sort(order[:r])


def projection_residuals(x: torch.Tensor, kept: Any, cand: Any) -> torch.Tensor:
    """``||x_j - P x_j||`` for the columns ``cand`` of ``x``, ``P`` the orthogonal projector
    onto the span of the columns ``kept``."""
    x = x.detach().double().cpu()
    kept = torch.as_tensor(np.asarray(kept, dtype=np.int64))
    xc = x[:, torch.as_tensor(np.asarray(cand, dtype=np.int64))]
    if kept.numel() == 0:
        return xc.norm(dim=0)
    xk = x[:, kept]
    u, s, _ = torch.linalg.svd(xk, full_matrices=False)
    u = u[:, s > _rank_tol(s, tuple(xk.shape))]
    return (xc - u @ (u.T @ xc)).norm(dim=0)


def regrow_probabilities(residuals: torch.Tensor, sampling: str = "softmax",
                         temperature: float = 1.0) -> torch.Tensor:
    """Sampling probabilities of the pruned channels from their projection residuals:
    ``softmax(res / temperature)`` (the paper), ``res / sum(res)`` or uniform."""
    res = residuals.detach().double().cpu()
    n = res.numel()
    if n == 0:
        return res
    if sampling == "softmax":
        return torch.softmax(res / float(temperature), 0)
    if sampling == "proportional" and float(res.sum()) > 0:
        p = res + 1e-12 * float(res.max())  # every channel stays possible
        return p / p.sum()
    if sampling not in SAMPLINGS:
        raise ConfigError(f"method.regrow_sampling={sampling} is unknown; use one of "
                          f"{', '.join(SAMPLINGS)}")
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


# ---------------------------------------------------------------------- channel counts
def ranked_counts(cost: Any, scores: dict[int, np.ndarray], removed: float,
                  sizes: dict[int, int], min_channels: Floors, droppable: Any
                  ) -> tuple[dict[int, int], bool]:
    """Channels per group at removal ratio ``removed`` of ``cost``, from one global ranking of
    all channels by ``scores``; and whether the target was reached."""
    if removed <= 0:
        return dict(sizes), True
    result = prune_by_ranking(cost, scores, (1.0 - removed) * cost.dense,
                              min_channels=min_channels, droppable=droppable)
    return {g: len(result.keep[g]) for g in sizes}, bool(result.reached)


def uniform_fraction_counts(cost: Any, removed: float, sizes: dict[int, int],
                            min_channels: Floors) -> tuple[dict[int, int], bool]:
    """The same kept fraction ``q`` in every group, the largest at which the cost is at removal
    ratio ``removed`` or under it (bisection); and whether any fraction gets there."""
    if removed <= 0:
        return dict(sizes), True
    target = (1.0 - removed) * cost.dense

    def counts(q: float) -> dict[int, int]:
        return {g: kept_count(n, q, min_channels=group_floor(min_channels, g, n))
                for g, n in sizes.items()}

    lo, hi = 0.0, 1.0
    if cost.cost(counts(lo)) > target:
        return counts(lo), False
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost.cost(counts(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return counts(lo), True
