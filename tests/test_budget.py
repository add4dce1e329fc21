"""A cost budget is met on the real network: allocation, slimming, independent counting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from prunecli.allocate import allocate_to_budget
from prunecli.cost import build_cost_model, count_macs, count_params
from prunecli.models import build_model
from prunecli.structure import l1_scores, slim, trace_structure


def _setup(name: str):
    torch.manual_seed(0)
    if name == "mobilenet_v2":
        model, x = torchvision.models.mobilenet_v2().eval(), torch.randn(1, 3, 96, 96)
    else:
        model, x = build_model({"name": name}, num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    s = trace_structure(model, x)
    scores = {g: v.numpy() for g, v in l1_scores(model, s).items()}
    return model, x, s, scores


@pytest.mark.parametrize("name", ["resnet56", "mobilenet_v2"])
@pytest.mark.parametrize("cost", ["macs", "params"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_budget_is_met_within_two_percent(name: str, cost: str, ratio: float) -> None:
    model, x, s, scores = _setup(name)
    cm = build_cost_model(cost, model, s, x)
    result = allocate_to_budget(cm, scores, ratio, round_to=8)
    small = slim(model, s, result.keep)
    counted = count_macs(small, x) if cost == "macs" else count_params(small)
    kept = counted / cm.dense
    assert counted == result.cost  # the model's prediction is what the slim network costs
    assert 1 - ratio - 0.02 <= kept <= 1 - ratio + 1e-9
    for g, idx in result.keep.items():
        n = s.groups[g].size
        assert len(idx) == n or len(idx) % 8 == 0 or n < 8


def test_unreachable_budget_returns_the_smallest_network() -> None:
    model, x, s, scores = _setup("resnet20")
    cm = build_cost_model("macs", model, s, x)
    result = allocate_to_budget(cm, scores, 0.999)
    assert not result.feasible
    assert all(c == 1 for c in result.counts.values())


def test_bad_ratio_is_a_clear_error() -> None:
    from prunecli.errors import ConfigError

    model, x, s, scores = _setup("resnet20")
    with pytest.raises(ConfigError, match="cost.ratio"):
        allocate_to_budget(build_cost_model("macs", model, s, x), scores, 1.2)


def test_coarse_options_land_closer_to_the_budget_by_filling_the_slack(monkeypatch) -> None:
    """HALP's 32-channel chunks with layer drop: whole-layer steps leave the bisection far
    under the target; widening groups while the exact cost fits gets closer."""
    import prunecli.allocate.budget as budget

    model = build_model({"name": "resnet20"}, num_classes=10, in_chans=3)
    x = torch.randn(1, 3, 32, 32)
    s = trace_structure(model, x)
    cm = build_cost_model("macs", model, s, x)
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in s.prunable_groups}
    drop = [g.id for g in s.droppable_groups]
    filled = allocate_to_budget(cm, scores, 0.7, group_size=32, droppable=drop)
    monkeypatch.setattr(budget, "_fill_slack", lambda cm_, opts, counts, cost, t: (cost, counts))
    plain = allocate_to_budget(cm, scores, 0.7, group_size=32, droppable=drop)
    assert plain.ratio < filled.ratio <= 0.3 + 1e-12
    assert filled.ratio == pytest.approx(cm.ratio(filled.counts))
    assert all(c == 0 or c % 32 == 0 or c == s.groups[g].size for g, c in filled.counts.items())


@pytest.mark.parametrize("group_size", [None, 4])
def test_per_group_floors_hold_in_the_knapsack_and_halp_options(group_size) -> None:
    """A floor per group (``max_prune_per_group``'s form): every group keeps at least its own
    count, under the budget, for SMCP's options and HALP's chunk prefixes alike."""
    model, x, s, scores = _setup("resnet56")
    cm = build_cost_model("macs", model, s, x)
    free = allocate_to_budget(cm, scores, 0.6, group_size=group_size)
    lowest = min(len(free.keep[g]) / s.groups[g].size for g in free.keep)
    assert lowest < 0.5  # uncapped, some group goes below half
    floors = {g: -(-s.groups[g].size // 2) for g in scores}
    capped = allocate_to_budget(cm, scores, 0.6, group_size=group_size, min_channels=floors)
    assert capped.cost <= 0.4 * cm.dense
    assert all(len(capped.keep[g]) >= floors[g] for g in scores)
