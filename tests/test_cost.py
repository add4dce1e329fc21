"""Cost models against known figures and against an independent counter on slimmed models."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from prunecli.cost import build_cost_model, count_macs, count_params
from prunecli.errors import UnknownNameError
from prunecli.models import build_model
from prunecli.structure import random_keep, slim, trace_structure
from tests.structure_nets import PyramidSharedHead

X224 = torch.randn(1, 3, 224, 224)


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "resnet50": (torchvision.models.resnet50().eval(), X224),
        "mobilenet_v2": (torchvision.models.mobilenet_v2().eval(), X224),
        "densenet121": (torchvision.models.densenet121().eval(), torch.randn(1, 3, 64, 64)),
        # producers whose outputs have parts: GhostNet's shortcuts and SE gates, MixNet's splits
        "ghostnet_100": (timm.create_model("ghostnet_100").eval(), torch.randn(1, 3, 64, 64)),
        "mixnet_s": (timm.create_model("mixnet_s").eval(), torch.randn(1, 3, 64, 64)),
        "resnet20": (build_model({"name": "resnet20"}, num_classes=10).eval(),
                     torch.randn(1, 3, 32, 32)),
        # grouped convs, pruned in whole conv groups (with squeeze-excite in RegNetY)
        "resnext50_32x4d": (torchvision.models.resnext50_32x4d().eval(),
                            torch.randn(1, 3, 64, 64)),
        "regnet_y_400mf": (torchvision.models.regnet_y_400mf().eval(), torch.randn(1, 3, 64, 64)),
        # Global Response Norms (weight and bias per channel) on the MLP widths
        "convnextv2_atto": (timm.create_model("convnextv2_atto").eval(),
                            torch.randn(1, 3, 64, 64)),
    }


@pytest.fixture(scope="module")
def models():
    return _models()


def test_known_values(models) -> None:
    r50, x = models["resnet50"]
    s = trace_structure(r50, x)
    assert build_cost_model("macs", r50, s, x).dense == pytest.approx(4.089e9, rel=1e-3)
    assert build_cost_model("params", r50, s, x).dense == 25_557_032
    mv2, x = models["mobilenet_v2"]
    assert build_cost_model("macs", mv2, trace_structure(mv2, x), x).dense == pytest.approx(
        0.3008e9, rel=1e-3)


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("seed", [0, 1])
def test_predicted_cost_equals_the_slimmed_models_counted_cost(models, name, seed) -> None:
    """The cost model never runs the model; torch's FLOP counter runs the slimmed one."""
    model, x = models[name]
    s = trace_structure(model, x)
    macs = build_cost_model("macs", model, s, x)
    params = build_cost_model("params", model, s, x)
    keep = random_keep(s, 0.3 + 0.4 * seed, torch.Generator().manual_seed(seed))
    counts = {g: len(v) for g, v in keep.items()}
    small = slim(model, s, keep)
    assert macs.cost(counts) == count_macs(small, x)
    assert params.cost(counts) == count_params(small)
    assert macs.ratio(counts) < 1.0


def test_batch_evaluation_matches_single(models) -> None:
    model, x = models["resnet20"]
    s = trace_structure(model, x)
    cm = build_cost_model("macs", model, s, x)
    rng = np.random.default_rng(0)
    xs = np.stack([np.maximum(1, (cm.full * rng.uniform(0.2, 1, cm.full.shape)).round())
                   for _ in range(16)])
    batch = cm.cost_batch(xs)
    assert np.allclose(batch, [cm.cost(v) for v in xs])


@pytest.mark.parametrize("side_weight", [0.0, 0.5, 1.0])
def test_group_curves_add_up_to_the_cost_at_their_point(models, side_weight) -> None:
    model, x = models["mobilenet_v2"]
    s = trace_structure(model, x)
    cm = build_cost_model("macs", model, s, x)
    keep = random_keep(s, 0.6, torch.Generator().manual_seed(0))
    point = cm.counts_vector({g: len(v) for g, v in keep.items()})
    curves = cm.group_curves(point, side_weight=side_weight)
    total = sum(curves[g][int(point[g])] for g in curves) + cm.terms.const
    assert total == pytest.approx(cm.cost(point), rel=1e-9)


def test_memory_counts_weights_and_layer_outputs(models) -> None:
    model, x = models["resnet20"]
    s = trace_structure(model, x)
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o.numel()))
             for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    one = build_cost_model("memory", model, s, x, batch_size=1)
    two = build_cost_model("memory", model, s, x, batch_size=2)
    assert two.dense - one.dense == 4 * sum(outputs)
    assert one.dense == 4 * (count_params(model) + sum(outputs))


def test_unknown_cost_is_a_clear_error(models) -> None:
    model, x = models["resnet20"]
    with pytest.raises(UnknownNameError, match="unknown cost 'latncy'"):
        build_cost_model("latncy", model, trace_structure(model, x), x)



def test_a_layer_called_at_several_sizes_is_costed_at_each() -> None:
    """A shared head runs at every level's size: its MACs and output memory are the sum over
    its calls (not the last call's size times the call count)."""
    torch.manual_seed(0)
    model, x = PyramidSharedHead().eval(), torch.randn(1, 3, 32, 32)
    s = trace_structure(model, x)
    assert s.calls["head.0"] == 2 and s.positions["head.0"] == 32 * 32 + 8 * 8
    macs = build_cost_model("macs", model, s, x)
    assert macs.dense == count_macs(model, x)
    keep = random_keep(s, 0.5, torch.Generator().manual_seed(0))
    counts = {g: len(v) for g, v in keep.items()}
    small = slim(model, s, keep)
    assert macs.cost(counts) == count_macs(small, x) < macs.dense
    memory = build_cost_model("memory", model, s, x)
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o.numel()))
             for m in small.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        small(x)
    for h in hooks:
        h.remove()
    assert memory.cost(counts) == 4 * (count_params(small) + sum(outputs))


def test_count_macs_on_a_timm_model_that_passes_tokens_between_modules() -> None:
    """timm PiT hands (x, cls_tokens) to a Sequential: torch's FLOP counter asserted there while
    parameters required grad. Counting leaves the model's modes and grads as they were."""
    model = timm.create_model("pit_ti_224", img_size=64)
    model.train()
    macs = count_macs(model, torch.randn(1, 3, 64, 64))
    assert macs > 0 and model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
