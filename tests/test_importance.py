"""Importance math, accumulators, the ranking allocator and schedules, against hand
computations and finite differences on tiny nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunecli.allocate import allocate_to_budget, global_threshold, prune_by_ranking
from prunecli.cost import build_cost_model
from prunecli.cost.channels import ChannelCountCost
from prunecli.importance import (
    Accumulator,
    ActivationTaylor,
    BNTaylor,
    WeightTaylor,
    bn_scale,
    norm_slices,
)
from prunecli.methods.schedule import geometric_target, removal_count
from prunecli.methods.slimming import optimal_threshold_mask
from prunecli.models import build_model
from prunecli.structure import ChannelMasker, trace_structure


class Tiny(nn.Module):
    """conv-bn-relu -> conv-bn-relu -> flatten -> linear: a norm group and a flatten group."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 5, 3, stride=2), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.flatten(1))


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = Tiny().double()
    for b in (model.b1, model.b2):  # non-trivial affine parameters
        nn.init.uniform_(b.weight, 0.5, 1.5)
        nn.init.uniform_(b.bias, -0.3, 0.3)
    x = torch.randn(8, 3, 7, 7, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    s = trace_structure(model, x[:1])
    return model, x, y, s


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def test_bn_taylor_is_the_gate_derivative_by_finite_differences() -> None:
    model, x, y, s = _setup()
    model.train()
    _loss(model, x, y).backward()
    scores = BNTaylor(model, s, norm_slices(model, s))()
    g1 = s.group("c1").id
    eps = 1e-6
    base = _loss(model, x, y).item()
    for c in range(6):
        with torch.no_grad():  # a gate (1 - eps) on channel c of b1's output
            w, b = model.b1.weight[c].item(), model.b1.bias[c].item()
            model.b1.weight[c] *= 1 - eps
            model.b1.bias[c] *= 1 - eps
            moved = _loss(model, x, y).item()
            model.b1.weight[c] = w
            model.b1.bias[c] = b
        assert scores[g1][c].item() == pytest.approx((base - moved) / eps, rel=1e-3, abs=1e-9)


def test_weight_taylor_is_the_masking_derivative_with_flatten_segments() -> None:
    model, x, y, s = _setup(1)
    masker = ChannelMasker(model, s)
    _loss(model, x, y).backward()
    scores = WeightTaylor(model, s)()
    g2 = s.group("c2").id  # read by fc through a flatten: 9 features per channel
    eps = 2.0 ** -16  # exact in the float32 mask buffer
    base = _loss(model, x, y).item()
    mask = masker.masks["fc"]
    mask.full = False  # the buffer is edited directly below, behind the masker's back
    for c in range(5):
        with torch.no_grad():
            mask.mask[c * 9:(c + 1) * 9] = 1 - eps
            moved = _loss(model, x, y).item()
            mask.mask.fill_(1.0)
        assert scores[g2][c].item() == pytest.approx((base - moved) / eps, rel=1e-3, abs=1e-9)


def _kept_output(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s next output, with its gradient kept (under key "a")."""
    acts: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        acts["a"] = out

    module.register_forward_hook(keep)
    return acts


def test_activation_taylor_matches_a_per_sample_computation() -> None:
    model, x, y, s = _setup(2)
    hooks = ActivationTaylor(model, s)
    hooks.attach()
    acts = _kept_output(model.b1)
    _loss(model, x, y).backward()
    got = hooks.pop()[s.group("c1").id]
    a = acts["a"]
    expected = (a * a.grad).flatten(2).mean(2).abs().mean(0)
    torch.testing.assert_close(got, expected.float())
    hooks.detach()
    _loss(model, x, y).backward()
    assert hooks.pop() == {}


def test_activation_taylor_reads_a_linear_output_on_its_last_axis() -> None:
    """ConvNeXt-style MLP: fc1's output is (N, H, W, C); the score is per C."""
    from tests.structure_nets import ChannelsLastMLP

    torch.manual_seed(0)
    model = ChannelsLastMLP()
    x = torch.randn(3, 3, 6, 6)
    s = trace_structure(model, x)
    hooks = ActivationTaylor(model, s)
    hooks.attach()
    acts = _kept_output(model.fc1)
    model(x).square().sum().backward()
    got = hooks.pop()[s.group("fc1").id]
    a = acts["a"]
    expected = (a * a.grad).flatten(1, 2).mean(1).abs().mean(0)  # mean over H*W per channel
    assert got.shape == (12,)
    torch.testing.assert_close(got, expected.float())
    hooks.detach()


def test_bn_scale_averages_the_norms_of_a_residual_stream() -> None:
    model = build_model({"name": "resnet20"}, num_classes=10)
    s = trace_structure(model, torch.randn(1, 3, 32, 32))
    slices = norm_slices(model, s)
    stream = max(slices, key=lambda g: len(slices[g]))
    assert len(slices[stream]) > 1  # stage 1's residual stream: one BN per block + the stem
    for p in slices[stream]:
        nn.init.uniform_(p.module.weight, -1, 1)
    expected = sum(p.module.weight.abs() for p in slices[stream]) / len(slices[stream])
    torch.testing.assert_close(bn_scale(slices)[stream], expected.detach())


def test_accumulators() -> None:
    a = Accumulator("average")
    a.update({0: torch.tensor([2.0, 4.0])})  # works from the very first call
    assert a.value()[0].tolist() == [2.0, 4.0]
    a.update({0: torch.tensor([4.0, 0.0])})
    a.update({0: torch.tensor([float("nan"), 1.0])})  # skipped as a whole
    assert a.value()[0].tolist() == [3.0, 2.0] and a.steps() == 2
    m = Accumulator("momentum", momentum=0.9)
    m.update({0: torch.tensor([10.0])})
    m.update({0: torch.tensor([0.0])})
    assert m.value()[0].item() == pytest.approx(9.0)
    restored = Accumulator("average")
    restored.load_state_dict(a.state_dict())
    assert restored.value()[0].tolist() == [3.0, 2.0]
    a.reset()
    assert a.value() == {} and a.steps() == 0
    with pytest.raises(ValueError, match="unknown"):
        Accumulator("median")


def test_optimal_threshold_prunes_the_negligible_energy() -> None:
    scale = np.array([1.0, 1e-3, 0.8, 2e-3, 1.2, 1e-4])
    assert optimal_threshold_mask(scale, 1e-3).tolist() == [False, True, False, True, False,
                                                             True]
    assert not optimal_threshold_mask(np.ones(4), 1e-3).any()
    assert optimal_threshold_mask(np.zeros(3) + 1e-9, 0.999).sum() == 2  # never all


def _resnet20():
    torch.manual_seed(0)
    model = build_model({"name": "resnet20"}, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    s = trace_structure(model, x)
    return model, x, s


def test_ranking_lands_on_the_first_prefix_under_the_target() -> None:
    model, x, s = _resnet20()
    cm = build_cost_model("macs", model, s, x)
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in s.prunable_groups}
    target = 0.6 * cm.dense
    r = prune_by_ranking(cm, scores, target)
    assert r.reached and r.cost <= target
    counts = cm.counts_vector({g: len(k) for g, k in r.keep.items()})
    assert cm.cost(counts) == pytest.approx(r.cost)
    # putting back the best removed channel goes over the target: the cut is the first prefix
    removed = [(scores[g][i], g) for g in scores for i in set(range(len(scores[g]))) -
               set(r.keep[g].tolist())]
    best_g = max(removed)[1]
    counts[best_g] += 1
    assert cm.cost(counts) > target
    # globally lowest first: every removed score is below every kept one (min_channels aside)
    kept_scores = np.concatenate([scores[g][k[:-1]] if len(k) == 1 else scores[g][k]
                                  for g, k in r.keep.items() if len(k) > 1])
    assert max(removed)[0] <= kept_scores.max()


def test_ranking_respects_active_min_channels_cap_and_priority() -> None:
    model, x, s = _resnet20()
    cm = build_cost_model("macs", model, s, x)
    scores = {g.id: np.arange(g.size, dtype=float) for g in s.prunable_groups}
    active = {g: np.arange(len(v)) % 2 == 0 for g, v in scores.items()}
    r = prune_by_ranking(cm, scores, 0.0, active, min_channels=2)
    assert not r.reached
    for g, k in r.keep.items():
        assert len(k) == 2 and active[g][k].all()
    capped = prune_by_ranking(cm, scores, 0.0, max_remove=7)
    assert capped.removed == 7
    g0 = s.prunable_groups[0].id
    prio = {g: np.ones(len(v)) for g, v in scores.items()}
    prio[g0][-2] = 0.0  # the second best channel of g0 (the best is protected), goes first
    first = prune_by_ranking(cm, scores, 0.0, max_remove=1, priority=prio)
    assert first.keep[g0].tolist() == [i for i in range(scores[g0].size)
                                       if i != scores[g0].size - 2]


def test_ranking_with_a_channel_count_is_the_global_threshold() -> None:
    model, x, s = _resnet20()
    rng = np.random.default_rng(3)
    scores = {g.id: rng.random(g.size) for g in s.prunable_groups}
    cost = ChannelCountCost(s, scores)
    r = prune_by_ranking(cost, scores, cost.dense - 134)
    ref = global_threshold(scores, 134 / cost.dense)
    assert {g: k.tolist() for g, k in r.keep.items()} == {g: k.tolist() for g, k in ref.items()}


def test_budget_with_active_sets_and_neuron_groups() -> None:
    model, x, s = _resnet20()
    cm = build_cost_model("macs", model, s, x)
    rng = np.random.default_rng(1)
    scores = {g.id: rng.random(g.size) for g in s.prunable_groups}
    active = {g: rng.random(len(v)) < 0.8 for g, v in scores.items()}
    r = allocate_to_budget(cm, scores, 0.5, active=active, group_size=4)
    assert r.feasible and 0.495 <= r.ratio <= 0.5
    for g, k in r.keep.items():
        assert active[g][k].all()  # pruned channels never return
        assert len(k) % 4 == 0 or len(k) == active[g].sum()
        # the kept ones are the best active ones
        act = np.flatnonzero(active[g])
        best = act[np.argsort(-scores[g][act], kind="stable")[:len(k)]]
        assert sorted(best.tolist()) == k.tolist()


def test_schedules() -> None:
    assert geometric_target(100.0, 25.0, 0, 4) == pytest.approx(100.0)
    assert geometric_target(100.0, 25.0, 2, 4) == pytest.approx(50.0)
    assert geometric_target(100.0, 25.0, 4, 4) == 25.0
    assert removal_count(0.02, 1000) == 20 and removal_count(100, 1000) == 100
    assert removal_count(0.0001, 10) == 1


def test_ranking_and_threshold_take_a_floor_per_group() -> None:
    from prunecli.allocate import global_threshold
    from prunecli.allocate.options import group_floor

    model, x, s = _resnet20()
    cm = build_cost_model("macs", model, s, x)
    scores = {g.id: np.arange(g.size, dtype=float) for g in s.prunable_groups}
    floors = {g: 3 + i % 4 for i, g in enumerate(scores)}
    r = prune_by_ranking(cm, scores, 0.0, min_channels=floors)
    assert {g: len(k) for g, k in r.keep.items()} == floors
    keep = global_threshold(scores, 1.0, min_channels=floors)
    assert {g: len(k) for g, k in keep.items()} == floors
    assert group_floor(floors, -1, 10) == 1 and group_floor(50, 0, 10) == 10
