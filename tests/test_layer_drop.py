"""Layer drop: a group may lose every channel where the graph has another path around it; the
slimmed model then skips the branch exactly, the costs count it, the allocators may choose it,
and a run with ``method.layer_drop=true`` saves a model that reloads in a fresh process."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from prunecli.allocate import (
    allocate_to_budget,
    allowed_counts,
    global_threshold,
    halp_options,
    make_options,
    prune_by_ranking,
    solve,
    within_budget,
)
from prunecli.cost.counting import count_macs, count_params
from prunecli.cost.model import build_cost_model
from prunecli.models import build_model
from prunecli.structure import (
    ChannelMasker,
    KeepError,
    export_onnx,
    load_slim,
    random_keep,
    save_slim,
    slim,
    trace_structure,
)
from prunecli.structure.dropped import ConstantChannels, EmptyChannels
from tests import test_latency
from tests.conftest import console_script, read_results

fake_timing = test_latency.fake_timing  # the fixture: layer timings from a known formula


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so a dropped branch's constant is not zero."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
    return model.eval()


# ----------------------------------------------------------------------------- which groups
def test_droppable_groups_are_those_with_a_path_around_them() -> None:
    x = torch.randn(1, 3, 64, 64)
    r18 = trace_structure(torchvision.models.resnet18(), x)
    assert sorted(g.key for g in r18.droppable_groups) == sorted(
        f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2))
    assert not r18.group("conv1").droppable  # the residual stream carries everything
    vgg = trace_structure(torchvision.models.vgg11_bn(), x)
    assert vgg.prunable_groups and not vgg.droppable_groups  # a chain: every group is a cut
    mb2 = trace_structure(torchvision.models.mobilenet_v2(), x)
    residual_blocks = [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]  # stride 1, same width in and out
    assert sorted(g.key for g in mb2.droppable_groups) == sorted(
        f"features.{i}.conv.0.0" for i in residual_blocks)
    dense = trace_structure(torchvision.models.densenet121(), x)
    drop = {g.key for g in dense.droppable_groups}
    assert "features.denseblock2.denselayer3.conv1" in drop  # its features are concatenated
    assert not {k for k in drop if "transition" in k}  # a transition is the only path
    eff = trace_structure(timm.create_model("efficientnet_b0"), x)
    assert eff.group("blocks.1.0.se.conv_reduce").droppable  # SE: a constant gate remains


# ----------------------------------------------------------------------------- exact slimming
MODELS = {
    "resnet50": (lambda: torchvision.models.resnet50(), (2, 3, 64, 64)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), (2, 3, 64, 64)),
    "densenet121": (lambda: torchvision.models.densenet121(), (2, 3, 64, 64)),
    "efficientnet_b0": (lambda: timm.create_model("efficientnet_b0"), (2, 3, 64, 64)),
    # timm's Conv2dSame pads at run time: odd sizes check the stand-ins' output sizes
    "tf_efficientnet_b0": (lambda: timm.create_model("tf_efficientnet_b0"), (2, 3, 65, 67)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropped_groups_slim_exactly_and_cost_what_the_model_says(name: str) -> None:
    make, shape = MODELS[name]
    model = _randomise_norms(make())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    s = trace_structure(model, x)
    keep = random_keep(s, 0.6, torch.Generator().manual_seed(2))
    dropped = s.droppable_groups[::2]
    for g in dropped:
        keep[g.id] = torch.zeros(0, dtype=torch.int64)
    counts = s.keep_counts(keep)
    macs, params = (build_cost_model(c, model, s, x) for c in ("macs", "params"))
    small = slim(model, s, keep)
    ChannelMasker(model, s).set_keep(keep)
    with torch.no_grad():
        masked, out = model(x), small(x)
    assert torch.allclose(masked, out, rtol=1e-4, atol=1e-5 * masked.abs().max().item())
    assert macs.cost(counts) == pytest.approx(count_macs(small, x), rel=1e-9)
    assert params.cost(counts) == pytest.approx(count_params(small), rel=1e-9)
    stand_ins = [m for m in small.modules() if isinstance(m, (EmptyChannels, ConstantChannels))]
    assert len(stand_ins) >= 2 * len(dropped)  # a producer and a consumer at least per group


def test_a_dropped_branch_adds_a_constant_to_the_skip_path() -> None:
    model = _randomise_norms(torchvision.models.resnet18())
    s = trace_structure(model, torch.randn(1, 3, 64, 64))
    small = slim(model, s, {"layer1.0.conv1": []})
    block = small.layer1[0]
    assert isinstance(block.conv1, EmptyChannels) and isinstance(block.bn1, nn.Identity)
    assert isinstance(block.conv2, ConstantChannels)  # reads nothing: outputs its bias (none)
    bn = model.layer1[0].bn2  # so the branch is bn2 applied to zeros, a per-channel constant
    const = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        expected = torch.relu(x + const.view(1, -1, 1, 1))
        assert torch.allclose(block(x), expected, atol=1e-6)
        assert count_macs(block, x) == 0


def test_an_empty_keep_set_on_a_cut_group_is_refused() -> None:
    s = trace_structure(torchvision.models.vgg11_bn(), torch.randn(1, 3, 32, 32))
    with pytest.raises(KeepError, match="no other path"):
        s.normalise_keep({"features.4": []})


def test_a_slim_model_with_dropped_layers_saves_loads_and_exports(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _randomise_norms(build_model({"name": "resnet20"}, num_classes=10, in_chans=3))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    s = trace_structure(model, x[:1])
    keep = {g.id: [] for g in s.droppable_groups[:4]}
    small = slim(model, s, keep)
    save_slim(tmp_path / "s.pt", small, s, keep, {"name": "resnet20"}, 10, 3)
    loaded = load_slim(tmp_path / "s.pt")
    with torch.no_grad():
        ref = small(x)
        assert torch.equal(loaded.model(x), ref)
    export_onnx(small, x, tmp_path / "s.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "s.onnx"))
    out = session.run(None, {"input": x.numpy()})[0]
    assert np.allclose(out, ref.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- allocators
def test_options_offer_zero_only_when_dropping() -> None:
    assert allowed_counts(20, 4, 8).tolist() == [8, 16, 20]
    assert allowed_counts(20, 4, 8, drop=True).tolist() == [0, 8, 16, 20]
    curve = np.arange(21, dtype=float)
    assert make_options(0, np.ones(20), curve, drop=True).counts[0] == 0
    assert halp_options(0, np.ones(20), curve, 8, force_first=False).counts.tolist() == [
        0, 8, 16, 20]


def test_the_knapsack_with_drop_options_is_optimal() -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        options = []
        for g in range(int(rng.integers(2, 5))):
            n = int(rng.integers(2, 6))
            scores = rng.exponential(1.0, n) * (0.05 if rng.random() < 0.4 else 1.0)
            curve = np.concatenate([[0.0], np.cumsum(rng.uniform(0.5, 3.0, n))])
            curve[1:] += rng.uniform(0, 4)  # a fixed cost for running the layer at all
            options.append(make_options(g, scores, curve, min_channels=1,
                                        drop=bool(rng.random() < 0.7)))
        every = [math.fsum(o.costs[i] for o, i in zip(options, c, strict=True))
                 for c in itertools.product(*(range(len(o)) for o in options))]
        budget = float(rng.choice(every))
        best = max(math.fsum(o.values[i] for o, i in zip(options, c, strict=True))
                   for c in itertools.product(*(range(len(o)) for o in options))
                   if within_budget(math.fsum(o.costs[i] for o, i in zip(options, c,
                                                                      strict=True)), budget))
        alloc = solve(options, budget)
        assert alloc.value == pytest.approx(best)


def test_ranking_threshold_and_budget_empty_only_droppable_groups() -> None:
    model = build_model({"name": "resnet20"}, num_classes=10, in_chans=3)
    x = torch.randn(1, 3, 32, 32)
    s = trace_structure(model, x)
    cm = build_cost_model("macs", model, s, x)
    drop = [g.id for g in s.droppable_groups]
    weak = drop[0]
    scores = {g.id: np.random.default_rng(g.id).uniform(1, 2, g.size) for g in s.prunable_groups}
    scores[weak] *= 1e-3  # a useless block
    cut = [g.id for g in s.prunable_groups if not g.droppable][1]
    scores[cut] *= 1e-3  # a useless but indispensable group
    target = 0.6 * cm.dense
    r = prune_by_ranking(cm, scores, target, droppable=drop)
    assert len(r.keep[weak]) == 0 and len(r.keep[cut]) >= 1 and r.cost <= target
    assert all(len(k) >= 1 for g, k in prune_by_ranking(cm, scores, target).keep.items())
    keep = global_threshold(scores, 0.3, droppable=drop)
    assert len(keep[weak]) == 0 and len(keep[cut]) == 1
    b = allocate_to_budget(cm, scores, 0.4, round_to=8, droppable=drop)
    assert b.counts[weak] == 0 and b.counts[cut] >= 8 and b.cost <= b.target
    assert min(allocate_to_budget(cm, scores, 0.4, round_to=8).counts.values()) >= 8


def test_a_latency_table_counts_a_dropped_layer_as_no_time(fake_timing, tmp_path: Path) -> None:
    from prunecli.cost.latency_build import build_table

    model = build_model({"name": "resnet20"}, num_classes=10, in_chans=3)
    x = torch.randn(1, 3, 32, 32)
    s = trace_structure(model, x)
    build_table(model, s, step=8, path=tmp_path / "t.json", progress=False)
    lat = build_cost_model("latency", model, s, x, table=str(tmp_path / "t.json"))
    g = s.droppable_groups[0]
    layers = lat.layer_costs({g.id: 0})
    assert layers[g.producers[0]] == 0.0 and all(layers[c] == 0.0 for c in g.consumers)
    assert lat.cost({g.id: 0}) < lat.cost({g.id: 1}) < lat.dense


# ----------------------------------------------------------------------------- end to end
def test_a_run_with_layer_drop_drops_blocks_and_reloads(run_cli, tmp_path: Path) -> None:
    run = run_cli("train", "experiment=smoke", "data.train_size=96", "data.val_size=32",
                  "data.batch_size=16", "data.image_size=16", "trainer.progress=false",
                  "trainer.epochs=4", "method=smcp", "cost.ratio=0.85", "method.layer_drop=true")
    r = read_results(run)
    assert r["groups_dropped"] and r["cost_kept"] <= 0.15 + 1e-9
    assert r["slim_top1"] == r["top1"] and r["slim_max_diff"] < 1e-4
    small = load_slim(run / "slim.pt").model
    assert any(isinstance(m, EmptyChannels) for m in small.modules())
    out = console_script("eval", f"ckpt={run / 'slim.pt'}", "trainer.progress=false",
                         f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert again["top1"] == r["top1"] and again["macs"] == r["macs"]


# ----------------------------------------------------------------------------- the cascade
def test_a_dropped_first_width_takes_the_middle_width_with_it() -> None:
    from prunecli.cost.cascade import DropCascade

    model = _randomise_norms(torchvision.models.resnet50())
    x = torch.randn(1, 3, 64, 64)
    s = trace_structure(model, x)
    g1, g2 = s.group("layer2.1.conv1").id, s.group("layer2.1.conv2").id
    assert s.constant_groups({g1}) == {g2}  # conv2 reads only g1: its output is a constant
    assert s.constant_groups({g2}) == set()  # conv3 writes the stream, which others feed
    macs = build_cost_model("macs", model, s, x)
    cascade = DropCascade(macs, s, [g.id for g in s.droppable_groups])
    assert cascade.cost({g1: 0}) == pytest.approx(macs.cost({g1: 0, g2: 0}))
    assert cascade.cost({g1: 0}) < macs.cost({g1: 0})
    assert cascade.cost({g2: 0}) == macs.cost({g2: 0}) and cascade.dense == macs.dense
    assert cascade.name == "macs" and cascade.group_curves().keys() == macs.group_curves().keys()
    small = slim(model, s, {g1: [], g2: []})  # the whole branch is one constant now
    block = small.layer2[1]
    bn = model.layer2[1].bn3
    const = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    z = torch.randn(2, 512, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(z), torch.relu(z + const.view(1, -1, 1, 1)), atol=1e-6)
        assert count_macs(block, z) == 0


def test_the_pruner_drops_the_constant_width_with_the_first() -> None:
    from prunecli.methods.pruner import Pruner

    model = torchvision.models.resnet50(num_classes=10)
    x = torch.randn(4, 3, 32, 32)
    pruner = Pruner(model, x[:1], "slimming", cost="macs", ratio=0.5, epochs=1,
                    steps_per_epoch=2, prune_at=0, sparsity=0, layer_drop=True)
    weak = pruner.method.structure.group("layer3.2.conv1")
    with torch.no_grad():
        model.get_submodule("layer3.2.bn1").weight.mul_(1e-4)  # a useless first width
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.start(opt)
    for _ in range(2):
        out = model(x)
        loss = out.logsumexp(1).mean() + pruner.extra_loss(out, None)
        loss.backward()
        pruner.before_step()
        opt.step()
        opt.zero_grad()
        pruner.after_step()
    small, summary = pruner.finish()
    assert {"layer3.2.conv1", "layer3.2.conv2"} <= set(summary["groups_dropped"])
    assert weak.droppable and summary["cost_kept"] <= 0.5 + 1e-9
    assert isinstance(small.layer3[2].conv3, ConstantChannels)


def test_under_smcp_a_dropped_layer_stays_dropped() -> None:
    """SMCP's masked weights keep learning, so a dropped group would look worth returning at
    the next re-solve and go again at the one after: it stays dropped instead."""
    from prunecli.methods.pruner import Pruner

    model = build_model({"name": "resnet20"}, num_classes=10, in_chans=3)
    x = torch.randn(2, 3, 32, 32)
    pruner = Pruner(model, x[:1], "smcp", cost="macs", ratio=0.3, epochs=1, steps_per_epoch=1,
                    layer_drop=True, importance="magnitude")
    method = pruner.method
    group = method.structure.group("layer2.1.conv1")
    method.apply(pruner.ctx, {group.id: []})
    with torch.no_grad():  # its (masked) weights now look most important of all
        model.get_submodule(group.consumers[0]).parametrizations.weight.original.mul_(100)
    method.resolve(pruner.ctx, last=True)
    assert method.counts()[group.id] == 0
    method.droppable = frozenset()  # without layer drop the same re-solve brings it back
    method.resolve(pruner.ctx, last=True)
    assert method.counts()[group.id] > 0
