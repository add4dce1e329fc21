"""Producers whose output has parts (GhostNet, MixNet, Res2Net): real models slim exactly, and
the methods whose bookkeeping follows a producer's output rows (SMCP's row masks, CHEX's
regrowth) prune them from the command line to their budget."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from prunecli.errors import ConfigError
from prunecli.methods.pruner import Pruner
from prunecli.structure import load_slim, random_keep, slim, trace_structure
from tests import structure_nets as nets
from tests.conftest import read_results
from tests.test_structure import _params, _randomise_norms, assert_exact

# 4 optimizer steps an epoch, 8 in all: small, since these timm models are wide for 2 cores
SMALL = ("experiment=smoke", "data.train_size=64", "data.val_size=16", "data.batch_size=16",
         "data.image_size=16", "trainer.progress=false", "trainer.epochs=2", "model=timm")


@pytest.mark.parametrize("name", ["ghostnet_100", "mixnet_s", "res2net50_14w_8s"])
def test_real_models_with_output_parts_slim_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5).eval()
    _randomise_norms(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    structure = trace_structure(model, x)
    parted = [r for r in structure.roles.values() if len(r.out_segments) > 1]
    assert parted, "some producer must write several parts"
    whole = [g for g in structure.groups if g.producers and not g.prunable]
    # only the classifier's outputs stay whole
    assert [g.key for g in whole] == [model.default_cfg["classifier"]], [
        (g.key, g.reason) for g in whole]
    attrs = {"mixnet_s": "splits", "res2net50_14w_8s": "width"}
    if name in attrs:  # split sizes held by a module attribute
        assert structure.size_attrs and all(a.attr == attrs[name] for a in structure.size_attrs)
    keep = random_keep(structure, 0.5, torch.Generator().manual_seed(0))
    small = assert_exact(model, keep, x)
    assert _params(small) < 0.6 * _params(model)
    for sa in structure.size_attrs:  # every split's sizes follow its parts' kept channels
        owner = small.get_submodule(sa.module)
        if name == "mixnet_s":
            assert list(owner.splits) == [c.in_channels for c in owner.values()]
        else:
            assert owner.width == owner.convs[0].in_channels < model.get_submodule(
                sa.module).width
    again = slim(model, structure, keep)  # slimming is deterministic and repeatable
    assert _params(again) == _params(small)


METHODS = {  # 12 steps: every schedule prunes by step 9
    "taylor": {"prune_every": 2, "remove_per_step": 0.15},
    "halp": {"prune_every": 2, "prune_steps": 4, "group_size": 2},
    "smcp": {"prune_every": 2, "round_to": 1},
    "slimming": {"sparsity": 1e-3},
    "gator": {},
    "chex": {"update_every": 0.25, "t_max": 0.75},
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("net", ["Ghost", "MixedSplits", "WidthSplit", "MultiHead"])
def test_every_method_prunes_nets_with_output_parts(net: str, method: str) -> None:
    """The methods' own bookkeeping of a producer's output rows (SMCP's row masks, CHEX's
    regrowth slots at each part's offset, HALP's and Taylor's scores) on producers that write
    several parts: each lands on its budget and the slim model equals the masked one."""
    torch.manual_seed(0)
    model = getattr(nets, net)()
    _randomise_norms(model)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    hyper = dict(METHODS[method])
    ratio = 0.4
    if method == "chex":
        hyper["sparsity"], ratio = 0.4, 0.0
    if net == "MultiHead" and method in ("slimming", "chex"):  # they prune by BN scales
        with pytest.raises(ConfigError, match="no BN after a prunable layer"):
            Pruner(model, x, method, ratio=ratio, epochs=1, steps_per_epoch=12, **hyper)
        return
    pruner = Pruner(model, x, method, ratio=ratio, epochs=1, steps_per_epoch=12, **hyper)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner.start(opt)
    for _ in range(12):
        out = model(x)
        loss = nn.functional.cross_entropy(out, y) + pruner.extra_loss(out, y)
        loss.backward()
        pruner.before_step()
        opt.step()
        opt.zero_grad()
        pruner.after_step()
    pruner.end_epoch()
    small, summary = pruner.finish()
    if method == "chex":
        assert summary["channel_sparsity"] >= 0.39
    else:
        assert summary["cost_kept"] <= 0.6 + 1e-9
    assert summary["slim_max_diff"] < 1e-4
    assert _params(small) < _params(model)


def test_a_run_prunes_a_real_model_with_output_parts_from_the_cli(run_cli) -> None:
    run = run_cli("train", *SMALL, "model.name=mixnet_s", "method=smcp", "cost.ratio=0.5",
                  "method.prune_every=2")
    r = read_results(run)
    assert 0.47 <= r["cost_kept"] <= 0.5 + 1e-9
    assert r["slim_top1"] == r["top1"] and r["slim_max_diff"] < 1e-4
    small = load_slim(run / "slim.pt")  # rebuilt from the registry and the keep-sets alone
    assert sum(p.numel() for p in small.model.parameters()) == r["params"]


def test_chex_prunes_and_regrows_whole_units_of_grouped_convs() -> None:
    """CHEX on a group pruned in whole conv groups (4 channels a unit): a pruned unit's four
    rows are zero in every producer and follower, a regrown one gets all four back, and the
    slim model equals the masked one."""
    torch.manual_seed(0)
    model = nets.GroupedConvs()
    _randomise_norms(model)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    pruner = Pruner(model, x, "chex", epochs=1, steps_per_epoch=12, sparsity=0.4, d0=0.3,
                    update_every=0.25, t_max=0.75)
    method = pruner.method
    s = method.structure
    unit_group = next(g for g in s.groups if g.unit == 4)
    assert unit_group.id in method.groups  # not left whole any more
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner.start(opt)
    for _ in range(12):
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.before_step()
        opt.step()
        opt.zero_grad()
        pruner.after_step()
        active = method.active()[unit_group.id]
        rows = torch.as_tensor(np.repeat(~active, 4))
        for name in unit_group.producers:  # every row of a pruned unit is zero
            assert not model.get_submodule(name).weight[rows].any()
        assert not model.get_submodule("conv2.0").weight[rows].any()  # grouped follower
    assert sum(method.regrown) > 0
    pruner.end_epoch()
    small, summary = pruner.finish()
    # sparsity counts channels (a unit is 4 of them), as the allocation does: 3 of 6 units
    # are the nearest to keeping 60% of 24 channels
    assert summary["channels_kept"] == pytest.approx(0.6 * summary["channels_prunable"], abs=4)
    assert summary["channel_sparsity"] == pytest.approx(
        1 - summary["channels_kept"] / summary["channels_prunable"], abs=1e-6)
    assert summary["slim_max_diff"] < 1e-4
    assert small.conv2[0].groups < model.conv2[0].groups
