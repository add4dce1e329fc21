"""Producers whose output has parts (GhostNet, MixNet, Res2Net): real models slim exactly, and
the methods whose bookkeeping follows a producer's output rows (SMCP's row masks, CHEX's
regrowth) prune them from the command line to their budget."""

from __future__ import annotations

import pytest
import timm
import torch

from prunecli.structure import load_slim, random_keep, slim, trace_structure
from tests.conftest import read_results
from tests.test_structure import _params, _randomise_norms, assert_exact

SMALL = ("experiment=smoke", "data.train_size=96", "data.val_size=32", "data.batch_size=16",
         "data.image_size=32", "trainer.progress=false", "trainer.epochs=2", "model=timm")


@pytest.mark.parametrize("name", ["ghostnet_100", "mixnet_s", "res2net50_14w_8s"])
def test_real_models_with_output_parts_slim_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5).eval()
    _randomise_norms(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
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


@pytest.mark.parametrize(("name", "method", "extra"), [
    ("mixnet_s", "smcp", ("method.prune_every=3",)),
    ("ghostnet_100", "chex", ("method.update_every=0.25", "method.t_max=0.75")),
])
def test_methods_prune_models_with_output_parts(run_cli, name: str, method: str,
                                               extra: tuple[str, ...]) -> None:
    run = run_cli("train", *SMALL, f"model.name={name}", f"method={method}", "cost.ratio=0.5",
                  *extra)
    r = read_results(run)
    assert 0.47 <= r["cost_kept"] <= 0.5 + 1e-9
    assert r["slim_top1"] == r["top1"] and r["slim_max_diff"] < 1e-4
    small = load_slim(run / "slim.pt")  # rebuilt from the registry and the keep-sets alone
    assert sum(p.numel() for p in small.model.parameters()) == r["params"]
