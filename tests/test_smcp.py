"""SMCP: straight-through masks, importance, accumulator, schedule, end-to-end run and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from prunecli.config.store import register_schemas
from prunecli.engine.events import HookContext
from prunecli.engine.trainer import Trainer
from prunecli.errors import ConfigError
from prunecli.importance import Accumulator
from prunecli.methods.smcp import SMCP, SMCPSchedule, ramp_fraction
from prunecli.structure.keep import _weight, l1_scores
from tests.conftest import read_results

register_schemas()

SMALL = ["experiment=smoke", "data.train_size=64", "data.val_size=32", "data.batch_size=16",
         "data.image_size=16", "trainer.progress=false", "trainer.threads=1"]
# 3 epochs of 4 steps: warm-up until step 1, ramp until step 7, frozen from step 9 of 12
SCHEDULE = ["trainer.epochs=3", "method=smcp", "cost.ratio=0.5", "method.warmup_epochs=0.1",
            "method.ramp_epochs=0.5", "method.cooldown_epochs=0.25", "method.prune_every=2",
            "method.round_to=1"]


def make_cfg(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="prunecli.conf"):
        return compose("train", overrides=[*SMALL, *overrides])


class Tiny(nn.Module):
    """conv a (3->4) -> conv b (4->6) -> pool -> head (6->3): groups a (read by b) and b (read by
    head) are prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(x.mean((2, 3)))


def tiny_method(*overrides: str, epochs: int = 10, steps_per_epoch: int = 10
                ) -> tuple[SMCP, HookContext]:
    torch.manual_seed(0)
    model = Tiny()
    cfg = make_cfg("method=smcp", "cost.ratio=0.5", "cost=params", *overrides)
    ctx = HookContext(model=model, config=cfg, dist=None, example_inputs=torch.randn(1, 3, 8, 8),
                      epochs=epochs, steps_per_epoch=steps_per_epoch)
    method = SMCP(cfg.method)
    method.setup(ctx)
    return method, ctx


def groups_of(method: SMCP) -> tuple[int, int]:
    """Ids of the group read by conv b and of the one read by the head."""
    s = method.structure
    return s.group("a").id, s.group("b").id


def backward(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (4,), generator=g)
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("mask", ["soft", "hard"])
def test_masked_channel_gets_gradient_only_with_soft_masks(mask: str) -> None:
    method, ctx = tiny_method(f"method.mask={mask}")
    ga, _ = groups_of(method)
    method.apply(ctx, {ga: [0, 1]})  # channels 2 and 3 masked at conv b's input
    b = ctx.model.b
    assert torch.equal(b.weight[:, 2:], torch.zeros_like(b.weight[:, 2:]))  # forward: w * m
    backward(ctx.model)
    grad = _weight(b).grad
    assert grad[:, :2].abs().sum() > 0
    if mask == "soft":  # straight-through: the stored weight of a masked channel still learns
        assert grad[:, 2:].abs().sum() > 0
    else:
        assert torch.equal(grad[:, 2:], torch.zeros_like(grad[:, 2:]))


def test_a_masked_channel_comes_back_with_its_trained_weights() -> None:
    method, ctx = tiny_method("method.pruned_decay=0.01")
    ga, _ = groups_of(method)
    model = ctx.model
    method.apply(ctx, {ga: [0, 1, 2]})
    stored = _weight(model.b)
    before = stored[:, 3].detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx.optimizer = opt
    for i in range(3):
        backward(model, seed=i)
        method.before_optimizer_step(ctx)  # adds the pruned decay
        opt.step()
    trained = stored[:, 3].detach().clone()
    assert not torch.allclose(trained, before)  # it kept learning while masked
    assert not model.b.weight[:, 3].any()
    method.apply(ctx, {ga: [0, 1, 2, 3]})  # every channel of the group back
    assert bool(method.masker.channel_masks()[ga].all())
    assert torch.equal(model.b.weight[:, 3].detach(), trained)


def test_pruned_decay_is_added_to_masked_weights_only() -> None:
    method, ctx = tiny_method("method.pruned_decay=0.5")
    ga, _ = groups_of(method)
    method.apply(ctx, {ga: [0, 1, 2]})
    backward(ctx.model)
    w = _weight(ctx.model.b)
    plain = w.grad.clone()
    method.before_optimizer_step(ctx)
    assert torch.equal(w.grad[:, :3], plain[:, :3])
    assert torch.allclose(w.grad[:, 3], plain[:, 3] + 0.5 * w.detach()[:, 3])


def test_resolve_counts_the_channels_that_come_back() -> None:
    method, ctx = tiny_method("method.round_to=1", "cost.ratio=0.3")
    ga, gb = groups_of(method)
    method.apply(ctx, {ga: [0, 1], gb: [0, 1, 2]})
    before = method.active()
    # the masked channels now look the most important: the knapsack brings them back
    method.scores.update({ga: torch.tensor([0.1, 0.1, 5.0, 5.0]),
                          gb: torch.tensor([0.1, 0.1, 0.1, 5.0, 5.0, 5.0])})
    ctx.step = method.schedule.freeze
    method.resolve(ctx, last=True)
    after = method.active()
    came_back = sum(int((after[g] & ~before[g]).sum()) for g in (ga, gb))
    assert came_back >= 2 and method.returns == [came_back]
    assert method.history[-1]["returned"] == came_back
    assert method.frozen and method.current_ratio == 0.3
    assert method.kept_cost_ratio() <= 0.7 + 1e-9
    assert not method.scores.value()  # reset after the re-solve


# ---------------------------------------------------------------- importance
def _hand(method: SMCP, ctx: HookContext, elem, optimizer=None) -> dict[int, torch.Tensor]:
    """The importance of every channel by explicit loops over the weights."""
    ga, gb = groups_of(method)
    masks = method.masker.channel_masks()
    out = {}
    for gid, layer, rows in ((ga, ctx.model.b, masks[gb]), (gb, ctx.model.head, None)):
        w = _weight(layer)
        state = optimizer.state[w] if optimizer is not None else {}
        scores = []
        for c in range(w.shape[1]):
            total = 0.0
            for o in range(w.shape[0]):
                if rows is not None and not rows[o]:
                    continue
                for k in range(w[o, c].numel()):
                    total += elem(w, state, (o, c), k)
            scores.append(abs(total))
        out[gid] = torch.tensor(scores)
    return out


def _at(t: torch.Tensor, oc: tuple[int, int], k: int) -> float:
    return float(t.detach()[oc].reshape(-1)[k])


def _fo(w, state, oc, k):
    return -_at(w, oc, k) * _at(w.grad, oc, k)


def _so(w, state, oc, k):
    g = _at(w.grad, oc, k)
    return -_at(w, oc, k) * g + 0.5 * _at(w, oc, k) ** 2 * g * g


def _check(got: dict[int, torch.Tensor], want: dict[int, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for g in want:
        torch.testing.assert_close(got[g].float(), want[g].float(), rtol=1e-4, atol=1e-7)


def test_magnitude_importance_by_hand_and_masked_rows_do_not_count() -> None:
    method, ctx = tiny_method()
    assert method.importance.kind == "magnitude"
    _check(method.importance(), _hand(method, ctx, lambda w, s, oc, k: abs(_at(w, oc, k))))
    _check(method.importance(), l1_scores(ctx.model, method.structure))
    ga, gb = groups_of(method)
    method.apply(ctx, {gb: [0, 2, 4], ga: [1, 2, 3]})
    got = method.importance()
    _check(got, _hand(method, ctx, lambda w, s, oc, k: abs(_at(w, oc, k))))
    assert got[ga][0] > 0  # a masked channel is still scored, on its stored weights


def test_taylor_first_and_second_order_by_hand() -> None:
    fo, ctx = tiny_method("method.importance=taylor_fo")
    backward(ctx.model)
    _check(fo.importance(), _hand(fo, ctx, _fo))
    so, ctx2 = tiny_method("method.importance=taylor_so")
    assert so.importance.kind == "taylor_so"  # second order can be selected
    backward(ctx2.model)
    got = so.importance()
    _check(got, _hand(so, ctx2, _so))
    assert any(not torch.allclose(got[g], fo.importance()[g]) for g in got)


def test_taylor_from_the_optimizer_state() -> None:
    # SGD: g = the momentum buffer
    method, ctx = tiny_method("method.importance=taylor_fo", "method.grad_source=momentum")
    opt = torch.optim.SGD(ctx.model.parameters(), lr=0.01, momentum=0.9)
    for i in range(2):
        backward(ctx.model, seed=i)
        opt.step()

    def fo_buf(w, state, oc, k):
        return -_at(w, oc, k) * _at(state["momentum_buffer"], oc, k)

    _check(method.importance(opt), _hand(method, ctx, fo_buf, opt))
    # Adam: g = exp_avg, H = exp_avg_sq
    method, ctx = tiny_method("method.importance=taylor_so", "method.grad_source=momentum")
    opt = torch.optim.AdamW(ctx.model.parameters(), lr=0.01)
    for i in range(2):
        backward(ctx.model, seed=i)
        opt.step()

    def so_adam(w, state, oc, k):
        a = _at(w, oc, k)
        return -a * _at(state["exp_avg"], oc, k) + 0.5 * a * a * _at(state["exp_avg_sq"], oc, k)

    _check(method.importance(opt), _hand(method, ctx, so_adam, opt))


# ---------------------------------------------------------------- accumulator
def test_average_accumulator_works_from_the_first_call() -> None:
    acc = Accumulator("average")
    acc.update({0: torch.tensor([1.0, 3.0])})
    torch.testing.assert_close(acc.value()[0], torch.tensor([1.0, 3.0]))
    acc.update({0: torch.tensor([3.0, 5.0])})
    torch.testing.assert_close(acc.value()[0], torch.tensor([2.0, 4.0]))
    method, ctx = tiny_method("method.accumulator=average", "method.prune_every=80")
    ctx.step = 1  # the first optimizer step, not a re-solve point
    assert not method.schedule.due(1)
    method.after_optimizer_step(ctx)
    _check(method.scores.value(), l1_scores(ctx.model, method.structure))


def test_momentum_accumulator_across_steps() -> None:
    acc = Accumulator("momentum", momentum=0.9)
    acc.update({0: torch.tensor([1.0])})
    acc.update({0: torch.tensor([2.0])})
    torch.testing.assert_close(acc.value()[0], torch.tensor([1.1]))


# ---------------------------------------------------------------- schedule
def test_ramp_shapes() -> None:
    r = 0.5
    assert ramp_fraction("linear", 0.5, r) == 0.5
    assert ramp_fraction("power", 0.5, r, power=3) == pytest.approx(1 - 0.5 ** 3)
    # exponential: the kept cost shrinks geometrically, sqrt(0.5) of dense half-way
    assert 1 - r * ramp_fraction("exponential", 0.5, r) == pytest.approx(math.sqrt(0.5))
    for kind in ("linear", "power", "exponential"):
        assert ramp_fraction(kind, 0.0, r) == 0.0
        assert ramp_fraction(kind, 1.0, r) == 1.0  # exactly the target, not 0.997 of it
        values = [ramp_fraction(kind, u / 20, r) for u in range(21)]
        assert values == sorted(values)
    with pytest.raises(ConfigError, match="ramp"):
        ramp_fraction("cubic", 0.5, r)


def test_schedule_phases_and_re_solve_points() -> None:
    s = SMCPSchedule(warmup=10, ramp_end=60, freeze=80, prune_every=5, ratio=0.4, kind="linear")
    assert s.target(0) == s.target(10) == 0.0  # warm-up
    assert s.target(35) == pytest.approx(0.2)  # half-way up the ramp
    assert s.target(60) == s.target(70) == s.target(90) == 0.4  # end of ramp, hold, cool-down
    assert [s.phase(t) for t in (5, 30, 65, 85)] == ["warmup", "ramp", "hold", "cooldown"]
    assert s.due(15) and s.due(20) and not s.due(16) and s.due(80)
    odd = SMCPSchedule(warmup=3, ramp_end=11, freeze=12, prune_every=5, ratio=0.4)
    assert odd.due(11) and not odd.due(10)  # the end of the ramp is always re-solved


def test_schedule_from_fractions_and_epochs() -> None:
    method, _ = tiny_method(epochs=90, steps_per_epoch=10)  # defaults: 0.11 / 0.61 / 0.28
    s = method.schedule
    assert (s.warmup, s.ramp_end, s.freeze) == (99, 648, 648)
    method, _ = tiny_method("method.warmup_epochs=10", "method.ramp_epochs=55",
                            "method.cooldown_epochs=25", epochs=90, steps_per_epoch=10)
    s = method.schedule
    assert (s.warmup, s.ramp_end, s.freeze) == (100, 650, 650)
    assert s.target(650) == 0.5 and s.kind == "exponential"
    with pytest.raises(ConfigError, match="longer than the run"):
        tiny_method("method.warmup_epochs=10", "method.ramp_epochs=70", epochs=90)


def test_bad_choices_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="method.mask"):
        tiny_method("method.mask=gate")
    with pytest.raises(ConfigError, match="method.importance"):
        tiny_method("method.importance=taylor")


# ---------------------------------------------------------------- end to end
def test_cli_run_reaches_the_budget_and_reports_returns(run_cli) -> None:
    run = run_cli("train", *SMALL, *SCHEDULE)
    res = read_results(run)
    assert res["method"] == "smcp" and res["cost_target"] == 0.5
    assert 0.49 <= res["cost_kept"] <= 0.5 + 1e-6  # within 2% of the target, never over it
    assert res["smcp_final_ratio"] == 0.5
    assert (run / "slim.pt").exists() and res["slim_max_diff"] < 1e-3
    assert res["smcp_resolves"] == 4 == len(res["returns_per_resolve"])  # steps 3, 5, 7, 9
    assert res["channels_returned"] == sum(res["returns_per_resolve"]) >= 0


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def test_resumed_run_ends_with_the_same_masks(tmp_path: Path) -> None:
    common = (*SCHEDULE, "trainer.deterministic=true", "method.importance=taylor_so",
              "method.grad_source=momentum", "method.save_slim=false")
    full = Trainer(make_cfg(*common), tmp_path / "full").fit()
    part = Trainer(make_cfg(*common, "trainer.stop_after_epoch=1"), tmp_path / "part").fit()
    assert part["stopped_early"] and 0 < part["smcp_resolves"] < full["smcp_resolves"]
    resumed = Trainer(make_cfg(*common, f"resume={tmp_path / 'part'}"), tmp_path / "res").fit()
    a, b = _final(tmp_path / "full"), _final(tmp_path / "res")
    masks = [k for k in a if k.endswith(".mask")]
    assert masks and a.keys() == b.keys()
    assert any(not bool(a[k].all()) for k in masks)  # something was pruned
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for key in ("cost_kept", "channels_kept", "returns_per_resolve", "smcp_resolves", "top1"):
        assert resumed[key] == full[key], key


@pytest.mark.parametrize(("epochs", "steps", "every"), [
    (4, 40, 3),  # a 160-step fine-tune: the ramp's 97 steps get 32 re-solves (80 gave one)
    (90, 5000, 80),  # the paper's ImageNet run: its 80
])
def test_an_unset_prune_every_resolves_often_enough_in_short_runs(epochs: int, steps: int,
                                                                   every: int) -> None:
    from prunecli.methods.pruner import Pruner
    from tests import structure_nets as nets

    model = nets.Residual().eval()
    pruner = Pruner(model, torch.randn(2, 3, 8, 8), "smcp", ratio=0.5, epochs=epochs,
                    steps_per_epoch=steps)
    schedule = pruner.method.schedule
    assert schedule.prune_every == every
    assert (schedule.ramp_end - schedule.warmup) // schedule.prune_every >= 30


def test_a_cap_is_checked_against_the_widths_round_to_allows() -> None:
    """SMCP keeps multiples of ``round_to``: a cap's floors are raised to them, so a cap that
    fits at ``round_to=1`` can be out of reach at 8, and that is said before training."""
    from prunecli.errors import ConfigError
    from prunecli.methods.pruner import Pruner
    from prunecli.models import build_model

    def start(round_to: int) -> None:
        model = build_model({"name": "resnet20"}, num_classes=10)
        Pruner(model, torch.randn(2, 3, 16, 16), "smcp", ratio=0.8, round_to=round_to,
               max_prune_per_group=0.6).start()

    start(1)  # 40% of every group: under the 20% budget
    with pytest.raises(ConfigError, match="max_prune_per_group=0.6 keeps at least"):
        start(8)  # every group keeps 50% (8 of 16, not 7): over it


@pytest.mark.parametrize("method", ["taylor", "halp", "smcp", "gator", "chex", "slimming"])
def test_a_budget_below_the_models_floor_is_said_before_training(method: str, caplog) -> None:
    """Every group at its floor still costs more than the budget: the run used to prune to the
    floor step by step (HALP warned at its ninth step, after cutting 87% of the channels) and
    miss the target. Now it is said at the start, with the largest cost.ratio that can be met
    (a warning: one point of a sweep over budgets must not stop the sweep)."""
    import logging
    import re

    from prunecli.methods.pruner import Pruner
    from prunecli.models import build_model

    def start(ratio: float) -> str:
        caplog.clear()
        model = build_model({"name": "resnet20"}, num_classes=10)
        with caplog.at_level(logging.WARNING, logger="prunecli"):
            Pruner(model, torch.randn(2, 3, 16, 16), method, ratio=ratio, min_channels=8).start()
        return " ".join(r.getMessage() for r in caplog.records if "out of reach" in
                        r.getMessage())

    said = start(0.95)
    assert f"{method}: cost.ratio=0.95 is out of reach: with every prunable group at its floor" \
        in said and "method.min_channels=8" in said and "prunes to that floor" in said
    reachable = float(re.search(r"cost.ratio=([0-9.]+) or lower can be met", said)[1])
    assert 0.5 < reachable < 0.95
    assert start(reachable) == ""  # the ratio it names is within reach
    assert "out of reach" in start(reachable + 0.02)


def test_halps_floor_is_one_neuron_group_per_layer(caplog) -> None:
    """HALP keeps at least one group of method.group_size channels in every layer: a budget one
    channel per layer would reach is out of its reach, and said so before training (on a
    latency table with a large fixed part, ssd_tiny's HALP run cut to 13% of its channels
    before warning)."""
    import logging

    from prunecli.methods.pruner import Pruner
    from prunecli.models import build_model

    def start(method: str, **hyper) -> bool:
        caplog.clear()
        model = build_model({"name": "resnet20"}, num_classes=10)
        with caplog.at_level(logging.WARNING, logger="prunecli"):
            Pruner(model, torch.randn(2, 3, 16, 16), method, ratio=0.95, **hyper).start()
        return "floor (one neuron group of method.group_size=8 per layer and " \
            "method.min_channels=1)" in caplog.text

    start("taylor")  # one channel per layer: 5% of the MACs is within reach
    assert "out of reach" not in caplog.text
    start("halp", group_size=1)
    assert "out of reach" not in caplog.text
    assert start("halp")
