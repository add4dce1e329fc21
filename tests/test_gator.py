"""Gator: straight-through per-sample gates on consumer inputs, deterministic eval equal to the
masks, cost weights from the cost model, the gradient multiplier, budget and lambda-only runs
from the CLI, and a run resumed mid-gating."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunecli.engine.checkpoint import load_checkpoint
from prunecli.methods.gator import GATES_ATTR, cost_weights
from prunecli.methods.pruner import Pruner
from prunecli.structure.from_checkpoint import load_masked_model
from tests.conftest import read_results

SMALL = ("experiment=smoke", "data.train_size=96", "data.val_size=32", "data.batch_size=16",
         "data.image_size=16", "trainer.progress=false", "trainer.epochs=4")
# 6 optimizer steps per epoch, 24 in all: gating steps 0-12, then fine-tuning


class Net(nn.Module):
    """conv1 (3->8, 8x8) -> conv2 (8->16, stride 2: 4x4) -> 2x2 max pool -> flatten -> fc
    (64->10): group conv1 (read by conv2) and group conv2 (read by fc, 4 features a channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def gator(ratio: float = 0.0, steps: int = 100, **hyper):
    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    pruner = Pruner(model, x, "gator", cost="macs", ratio=ratio, epochs=1,
                    steps_per_epoch=steps, **hyper)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner.start(opt)
    return pruner, model, x, y


def _gid(pruner, key: str) -> int:
    return pruner.method.structure.group(key).id


def _slice(pruner, key: str) -> slice:
    m = pruner.method
    g = _gid(pruner, key)
    return slice(m.offsets[g], m.offsets[g] + m.structure.groups[g].size)


# ------------------------------------------------------------------ gates
def test_gates_are_hard_with_a_straight_through_gradient() -> None:
    pruner, model, x, y = gator()
    gates = pruner.method.gates
    assert getattr(model, GATES_ATTR) is gates  # optimized with model.parameters() ...
    assert not any("prunecli_gates" in k for k in model.state_dict())  # ... not in checkpoints
    model.train()
    out = model(x)
    sample = pruner.method._sample
    assert sample.shape == (16, gates.theta.numel())
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    nn.functional.cross_entropy(out, y).backward(retain_graph=True)  # the task loss alone ...
    assert gates.theta.grad is not None and gates.theta.grad.abs().sum() > 0  # reaches theta
    gates.theta.grad = None
    pruner.method._sample = sample
    pruner.extra_loss(out, y).backward()  # the cost loss: the sigmoid's gradient, always > 0
    assert bool((gates.theta.grad > 0).all())


def test_eval_is_deterministic_and_equals_the_masked_model() -> None:
    pruner, model, x, _ = gator()
    method = pruner.method
    with torch.no_grad():
        method.gates.theta.copy_(torch.linspace(-3, 3, method.n_gates)[
            torch.randperm(method.n_gates, generator=torch.Generator().manual_seed(1))])
        for key in ("conv1", "conv2"):  # the best channel of a group is protected: keep it > 0
            part = method.gates.theta[_slice(pruner, key)]
            part[part.argmax()] = 3.0
    method._update_protected()  # as every host sync does
    model.eval()
    a, b = model(x), model(x)
    assert torch.equal(a, b)
    theta = method.gates.theta.detach()
    masks = {_gid(pruner, k): theta[_slice(pruner, k)] > 0 for k in ("conv1", "conv2")}
    assert all(not bool(m.all()) and bool(m.any()) for m in masks.values())
    method.detach()
    ungated = model(x)
    assert not torch.allclose(ungated, a)
    method.masker.set_masks(masks)
    torch.testing.assert_close(model(x), a, rtol=1e-5, atol=1e-6)


def test_gates_are_sampled_per_sample_on_the_consumer_inputs() -> None:
    pruner, model, x, _ = gator()
    with torch.no_grad():
        pruner.method.gates.theta.zero_()  # gate probability 0.5
    seen = {}
    model.conv2.register_forward_pre_hook(lambda m, args: seen.update(conv2=args[0]))
    model.fc.register_forward_pre_hook(lambda m, args: seen.update(fc=args[0]))
    model.train()
    model(x)
    g = pruner.method._sample.detach()
    g1, g2 = g[:, _slice(pruner, "conv1")], g[:, _slice(pruner, "conv2")]
    assert not all(torch.equal(g1[0], g1[n]) for n in range(1, 16))  # samples differ
    off = seen["conv2"].abs().sum((2, 3)) == 0  # (N, 8): channel maps zeroed by the gates
    assert bool(off[g1 == 0].all())
    fc_off = seen["fc"].view(16, 16, 4).abs().sum(2) == 0  # flatten: 4 features a channel
    assert bool(fc_off[g2 == 0].all())


# ------------------------------------------------------------------ cost weights, multiplier
def test_cost_weights_are_the_marginal_macs_of_a_channel() -> None:
    pruner, _, _, _ = gator(sync_every=1)
    m = pruner.method
    dense = m.cost_model.dense
    a, b = _gid(pruner, "conv1"), _gid(pruner, "conv2")
    # one channel of conv1: its row of conv1 (3 inputs x 9 x 8x8) + its column of conv2
    # (16 outputs x 9 x 4x4); one of conv2: its row of conv2 (8 x 9 x 4x4) + fc (4 x 10)
    w_a, w_b = 3 * 9 * 64 + 16 * 9 * 16, 8 * 9 * 16 + 4 * 10
    order = m.groups
    np.testing.assert_allclose(m.w[order.index(a)], w_a / dense, rtol=1e-9)
    np.testing.assert_allclose(m.w[order.index(b)], w_b / dense, rtol=1e-9)
    counts = m.cost_model.full.copy()
    counts[b] = 13
    w = cost_weights(m.cost_model, counts, order)
    np.testing.assert_allclose(w[order.index(a)], (3 * 9 * 64 + 13 * 9 * 16) / dense, rtol=1e-9)
    # four channels of conv1 cross theta < 0: off for good, masked, and the weights follow
    with torch.no_grad():
        m.gates.theta[_slice(pruner, "conv1")][:4] = -1.0
    pruner.after_step()  # sync_every=1: the host syncs now
    assert int(m.masker.channel_masks()[a].sum()) == 4
    assert m.history and m.gates.active[_slice(pruner, "conv1")][:4].sum() == 0
    np.testing.assert_allclose(m.w[order.index(b)], (4 * 9 * 16 + 40) / dense, rtol=1e-9)
    np.testing.assert_allclose(m.w[order.index(a)], w_a / dense, rtol=1e-9)


def test_the_gradient_multiplier_scales_gate_gradients_by_one_over_the_weight() -> None:
    pruner, model, x, y = gator(gradient_multiplier=0.2)
    m = pruner.method
    model.train()
    out = model(x)
    (nn.functional.cross_entropy(out, y) + pruner.extra_loss(out, y)).backward()
    raw = m.gates.theta.grad.clone()
    pruner.before_step()
    for key in ("conv1", "conv2"):
        w = m.w[m.groups.index(_gid(pruner, key))]
        torch.testing.assert_close(m.gates.theta.grad[_slice(pruner, key)],
                                   raw[_slice(pruner, key)] * (0.2 / w))


# ------------------------------------------------------------------ end to end
def test_lambda_only_run_keeps_the_channels_with_non_negative_logits(run_cli) -> None:
    run = run_cli("train", *SMALL, "method=gator", "cost=params", "cost.ratio=0",
                  "method.gate_init_prob=0.6", "method.criteria_weight=50",
                  "method.sync_every=2")
    r = read_results(run)
    assert r["cost"] == "params" and r["gator_channels_off"] > 0 and r["cost_kept"] < 1.0
    assert r["gator_ended_at_step"] == 12 and r["gator_criteria_weight"] == 50
    assert r["slim_top1"] == r["top1"] and (run / "slim.pt").exists()
    state = load_checkpoint(run / "last.pt")
    theta = state["method"]["theta"]
    keep = (theta >= 0) | state["method"]["protected"]
    masked = load_masked_model(run / "last.pt")
    n = 0
    for g in masked.structure.prunable_groups:
        kept = torch.zeros(g.size, dtype=torch.bool)
        kept[masked.keep.get(g.id, torch.arange(g.size))] = True
        assert torch.equal(kept, keep[n: n + g.size]), g.key
        n += g.size


def test_a_budget_run_lands_on_it_and_resumes_mid_gating_as_the_same_run(
        run_cli, tmp_path: Path) -> None:
    common = (*SMALL, "method=gator", "cost.ratio=0.5", "trainer.deterministic=true",
              "method.gate_init_prob=0.6", "method.criteria_weight=5", "method.sync_every=2")
    full = run_cli("train", *common, run_dir=tmp_path / "full")
    r = read_results(full)
    assert r["cost_target"] == pytest.approx(0.5)
    assert 0.48 <= r["cost_kept"] <= 0.5 + 1e-9
    assert r["slim_top1"] == r["top1"] and (full / "slim.pt").exists()
    assert r["gator_trace_len"] > 0 and r["gator_channels_off"] > 0
    ckpt = load_checkpoint(full / "last.pt")
    gates = [g for g in ckpt["optimizer"]["param_groups"] if g.get("name") == "gator_gates"]
    assert len(gates) == 1 and gates[0]["weight_decay"] == 0.0
    assert not any("prunecli_gates" in k for k in ckpt["model"])

    part = run_cli("train", *common, "trainer.stop_after_epoch=1", run_dir=tmp_path / "part")
    assert read_results(part)["stopped_early"]
    mid = load_checkpoint(part / "last.pt")["method"]
    assert mid["phase"] == "gating" and mid["trace"]
    assert not torch.equal(mid["theta"], torch.full_like(mid["theta"], mid["theta"][0]))
    res = run_cli("train", *common, f"resume={part}", run_dir=tmp_path / "res")
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(res / "last.pt")
    masks_a = {k: v for k, v in a["model"].items() if k.endswith(".mask")}
    masks_b = {k: v for k, v in b["model"].items() if k.endswith(".mask")}
    assert masks_a.keys() == masks_b.keys()
    assert all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
    assert torch.equal(a["method"]["theta"], b["method"]["theta"])
    assert a["method"]["lam"] == b["method"]["lam"] and a["method"]["trace"] == b["method"]["trace"]
    assert read_results(res)["top1"] == r["top1"]
