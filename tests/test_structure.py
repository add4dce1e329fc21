"""Channel structure: group discovery, exact slimming, masks, save/load, export."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunecli.structure import (
    ChannelMasker,
    KeepError,
    TraceError,
    export_onnx,
    export_torchscript,
    kept_count,
    l1_scores,
    load_slim,
    random_keep,
    save_slim,
    slim,
    top_k_keep,
    trace_structure,
)
from tests import structure_nets as nets

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial BN statistics, so a wrongly sliced norm shows in the output."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def _first(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def assert_exact(model: nn.Module, keep: dict, x: torch.Tensor = X) -> nn.Module:
    """Masked model and slimmed model give the same eval output (rel. diff <= 1e-4)."""
    structure = trace_structure(model, x)
    small = slim(model, structure, keep)
    masker = ChannelMasker(model, structure)
    masker.set_keep(keep)
    with torch.no_grad():
        masked, slimmed = _first(model(x)), _first(small(x))
    masker.remove()
    scale = masked.abs().max().clamp_min(1e-6)
    assert masked.shape == slimmed.shape
    assert ((masked - slimmed).abs().max() / scale).item() <= 1e-4
    return small


def _net(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    _randomise_norms(model)
    return model


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cls", nets.EXACT_NETS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_keep_sets_slim_exactly(cls: type[nn.Module], seed: int) -> None:
    model = _net(cls)
    structure = trace_structure(model, X)
    keep = random_keep(structure, 0.6, torch.Generator().manual_seed(seed))
    small = assert_exact(model, keep)
    if structure.prunable_groups:
        assert _params(small) < _params(model)


@settings(max_examples=25, deadline=None)
@given(cls=st.sampled_from(nets.EXACT_NETS), data=st.data())
def test_any_keep_set_is_exact(cls: type[nn.Module], data: st.DataObject) -> None:
    """Property: every non-empty keep-set of every prunable group slims exactly."""
    model = _net(cls)
    structure = trace_structure(model, X)
    keep = {}
    for g in structure.prunable_groups:
        chosen = data.draw(st.sets(st.integers(0, g.size - 1), min_size=1, max_size=g.size))
        keep[g.id] = sorted(chosen)
    assert_exact(model, keep)


# ------------------------------------------------------------------ discovered structure
def _group_of(structure, producer: str):
    return next(g for g in structure.groups if producer in g.producers)


def test_residual_stream_is_one_group() -> None:
    s = trace_structure(_net(nets.Residual), X)
    stage1 = _group_of(s, "stem.0")
    assert set(stage1.producers) == {"stem.0", "a2.0"}
    assert {"a1.0", "b1.0", "proj"} <= set(stage1.consumers)
    assert {"stem.1", "a2.1"} <= set(stage1.followers)
    stage2 = _group_of(s, "proj")
    assert set(stage2.producers) == {"proj", "b2"} and stage2.consumers == ["head"]
    assert stage1.prunable and stage2.prunable


def test_concat_offsets() -> None:
    s = trace_structure(_net(nets.Concat), X)
    d_in = s.roles["d"].in_segments
    assert [(s.groups[x.group].key, x.offset, x.length) for x in d_in] == [
        ("c", 0, 7), ("a", 7, 6), ("b", 13, 10)]
    bn = s.roles["bn"].in_segments
    assert [(s.groups[x.group].key, x.offset) for x in bn] == [("a", 0), ("b", 6)]


def test_flatten_into_linear_has_a_spatial_factor() -> None:
    s = trace_structure(_net(nets.FlattenLinear), X)
    (seg,) = s.roles["fc1"].in_segments
    assert seg.spatial == 16 and seg.length == 6
    assert "bn" in _group_of(s, "fc1").followers


def test_squeeze_excite_joins_the_gated_group() -> None:
    s = trace_structure(_net(nets.SqueezeExcite), X)
    g = _group_of(s, "conv.0")
    assert set(g.producers) == {"conv.0", "fc2"}
    assert set(g.consumers) == {"fc1", "out"}
    assert g.prunable


def test_depthwise_follows_its_group() -> None:
    s = trace_structure(_net(nets.Depthwise), X)
    g = _group_of(s, "expand.0")
    assert "dw.0" in g.followers and g.consumers == ["project"]


def test_shared_consumer_merges_its_inputs() -> None:
    s = trace_structure(_net(nets.SharedConsumer), X)
    assert _group_of(s, "a") is _group_of(s, "b")


@pytest.mark.parametrize("cls,producer,reason", [
    (nets.MixedSplits, "literal", "split with sizes [2, 4] not held by one attribute"),
    (nets.FeatureOutput, "a.0", "reaches the model output"),
    (nets.UnknownOp, "a", "op not understood: softmax"),
    (nets.ChannelShuffle, "a", "regroups channels"),
    (nets.LayerScaleGroupNorm, "c", "GroupNorm gn_mixing mixes channels (1 groups)"),
])
def test_unprunable_groups_say_why(cls, producer, reason) -> None:
    g = _group_of(trace_structure(_net(cls), X), producer)
    assert not g.prunable and reason in g.reason


def test_the_channel_axis_is_followed_through_permutes_and_token_layouts() -> None:
    """ConvNeXt / ViT / LeViT patterns: MLP widths over the last axis are prunable, with their
    per-channel scales and BatchNorm1d; streams under a LayerNorm or attention are not."""
    s = trace_structure(_net(nets.ChannelsLastMLP), X)
    hidden = _group_of(s, "fc1")
    assert hidden.prunable and hidden.consumers == ["fc2"]
    assert "hidden_scale" in hidden.params
    assert "LayerNorm norm normalises over the channels" in _group_of(s, "stem").reason

    s = trace_structure(_net(nets.TokenMLP), X)
    assert _group_of(s, "fc1").prunable and _group_of(s, "fc1").consumers == ["fc2"]
    assert _group_of(s, "lin").prunable and "bn" in _group_of(s, "lin").followers
    assert not _group_of(s, "qkv").prunable and not _group_of(s, "patch").prunable

    s = trace_structure(_net(nets.LiteralReshape), X)
    assert "channel count written as a number (16)" in _group_of(s, "a").reason
    assert _group_of(s, "b").prunable and _group_of(s, "b").consumers == ["fb"]


def test_classifier_output_and_input_are_not_prunable() -> None:
    s = trace_structure(_net(nets.Residual), X)
    assert "reaches the model output" in _group_of(s, "head").reason
    assert "model input" in next(g for g in s.groups if "stem.0" in g.consumers).reason


def test_layer_scale_and_per_channel_groupnorm_are_sliced() -> None:
    model = _net(nets.LayerScaleGroupNorm)
    s = trace_structure(model, X)
    g = _group_of(s, "a")
    assert g.prunable and g.params == ["gamma"] and "gn_per_channel" in g.followers
    small = slim(model, s, {"a": [0, 3, 5]})
    assert small.gamma.shape == (3,) and small.gn_per_channel.num_groups == 3
    g = _group_of(s, "b")  # GroupNorm(2, 6): whole GN groups of 3 channels
    assert g.prunable and g.unit == 3 and g.size == 2 and "gn_groups" in g.followers
    small = assert_exact(_net(nets.LayerScaleGroupNorm), {"b": [1]})
    assert small.gn_groups.num_groups == 1 and small.gn_groups.num_channels == 3


def test_unknown_op_warns_with_its_name(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="prunecli"):
        trace_structure(_net(nets.UnknownOp), X)
    assert "softmax" in caplog.text


def test_untraceable_model_is_a_clear_error() -> None:
    with pytest.raises(TraceError, match="cannot trace DataDependent"):
        trace_structure(nets.DataDependent(), X)


def test_an_untraceable_model_is_traced_piecewise() -> None:
    """fx rejects the model; each block is traced on the input it saw, its inner widths are
    prunable and its boundaries stay whole with a reason naming the piece."""
    model = _net(nets.PartlyTraceable)
    s = trace_structure(model, X)
    assert {g.key for g in s.prunable_groups} == {"block.0.0", "block.1.0", "gate.0.0"}
    assert "output of block, traced alone" in _group_of(s, "block.2").reason
    assert any("untraceable by torch.fx: PartlyTraceable" in op for op in s.unknown_ops)
    assert s.roles["gate.1"].in_segments[0].group == _group_of(s, "gate.0.0").id
    assert s.shapes["head"] == ((2, 8), (2, 5))  # bare layers are pieces too: costs see them
    s = trace_structure(model, X, ignore=["gate.*"])
    assert not _group_of(s, "gate.0.0").prunable


@pytest.mark.parametrize("cls", [nets.Residual, nets.PartlyTraceable])
def test_tracing_leaves_every_module_in_its_own_mode(cls: type[nn.Module]) -> None:
    """Eval model: still eval everywhere (a piece traced alone once came back in training
    mode, its BatchNorms then normalising with batch statistics); a training model with a
    frozen BN keeps it frozen."""
    model = _net(cls)
    trace_structure(model, X)
    assert not any(m.training for m in model.modules())
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).eval()
    trace_structure(model, X)
    assert not frozen.training
    assert all(m.training for m in model.modules() if m is not frozen)


def test_ghost_halves_cut_the_producers_they_meet() -> None:
    """GhostNet: convs whose output meets a ghost module's ``cat([x1, cheap(x1)])`` (the SE
    gate, the shortcut, the stem on the residual) write two parts, both of the ghost group."""
    s = trace_structure(_net(nets.Ghost), X)
    assert all(g.prunable for g in s.groups if g.producers and g.key != "head")
    for conv, ghost, half in (("se.2", "ghost1.0.0", 8), ("shortcut.0", "ghost2.0.0", 12),
                              ("stem.0", "ghost3.0.0", 8)):
        g = _group_of(s, ghost)
        assert g.size == half and conv in g.producers
        parts = s.roles[conv].out_segments
        assert [(p.group, p.offset, p.length) for p in parts] == [(g.id, 0, half),
                                                                  (g.id, half, half)]
    g = _group_of(s, "ghost2.0.0")
    small = assert_exact(_net(nets.Ghost), {g.id: [1, 4]})
    assert small.shortcut[0].out_channels == 4 and small.ghost3[0][0].in_channels == 4
    assert small.ghost2[1][0].groups == 2


def test_split_sizes_held_by_a_module_are_rewritten() -> None:
    """MixNet: a split's parts are groups of their own (the conv before it writes both); the
    module attribute holding the sizes is rewritten, and a size list written in the code is
    refused."""
    s = trace_structure(_net(nets.MixedSplits), X)
    first, second = s.group("pw.0[0:8]"), s.group("pw.0[8:20]")
    assert first.prunable and second.prunable and (first.size, second.size) == (8, 12)
    assert "se.2" in first.producers and "se.2" in second.producers
    assert [(a.module, a.attr) for a in s.size_attrs] == [("mixed", "splits")]
    assert not first.droppable and not second.droppable  # an empty part would break the code
    assert "split with sizes [2, 4]" in _group_of(s, "literal").reason
    small = assert_exact(_net(nets.MixedSplits), {first.id: [0, 2], second.id: [1, 2, 4]})
    assert small.mixed.splits == [2, 3] and small.bn.num_features == 5


def test_equal_split_parts_are_one_group_and_their_width_is_rewritten() -> None:
    s = trace_structure(_net(nets.WidthSplit), X)
    g = _group_of(s, "conv1.0")
    assert g.prunable and g.size == 4 and "convs.0.0" in g.producers
    assert [p.offset for p in s.roles["conv1.0"].out_segments] == [0, 4, 8]
    assert [(a.module, a.attr) for a in s.size_attrs] == [("", "width")]
    small = assert_exact(_net(nets.WidthSplit), {g.id: [1, 2, 3]})
    assert small.width == 3 and small.conv1[0].out_channels == 9


def test_chunk_halves_are_one_group() -> None:
    s = trace_structure(_net(nets.Split), X)
    g = _group_of(s, "a")
    assert g.prunable and g.size == 4
    assert [p.offset for p in s.roles["a"].out_segments] == [0, 4]
    small = assert_exact(_net(nets.Split), {g.id: [0, 3]})
    assert small.a.out_channels == 4 and small.c.in_channels == 8


def test_grouped_convs_are_pruned_in_whole_conv_groups() -> None:
    s = trace_structure(_net(nets.GroupedConvs), X)
    g = _group_of(s, "conv1.0")
    assert g.prunable and g.unit == 4 and g.size == 6
    assert {"conv2.0", "conv2b", "conv2.1"} <= set(g.followers)
    assert [seg.spatial for seg in s.roles["conv1.0"].out_segments] == [4]
    assert s.roles["conv3.0"].in_segments[0].spatial == 4
    assert "grouped conv widen (groups=2)" in _group_of(s, "stem.0").reason
    small = assert_exact(_net(nets.GroupedConvs), {g.id: [0, 2]})
    assert small.conv2[0].groups == 2 and small.conv2b.groups == 4
    assert small.conv2[0].weight.shape == (8, 4, 3, 3) and small.conv1[0].out_channels == 8


def test_ignore_patterns_exclude_layers() -> None:
    s = trace_structure(_net(nets.Residual), X, ignore=["stem.*"])
    assert "excluded by the user (stem.*)" in _group_of(s, "stem.0").reason
    assert _group_of(s, "a1.0").prunable


# ------------------------------------------------------------------ keep-sets
def test_keep_set_validation() -> None:
    s = trace_structure(_net(nets.FeatureOutput), X)
    with pytest.raises(KeepError, match="cannot be pruned"):
        s.normalise_keep({"a.0": [0, 1]})
    with pytest.raises(KeepError, match="at least one"):
        s.normalise_keep({"b.0": []})
    with pytest.raises(KeepError, match="out of range"):
        s.normalise_keep({"b.0": [0, 8]})
    with pytest.raises(KeepError, match="no channel group"):
        s.normalise_keep({"nope": [0]})
    assert s.normalise_keep({"b.0": list(range(8))}) == {}  # keeping all is a no-op


def test_kept_count_rounding() -> None:
    assert kept_count(64, 0.5, round_to=8) == 32
    assert kept_count(64, 0.3, round_to=8) == 16  # 19.2 -> 16
    assert kept_count(6, 0.5, round_to=8) == 3  # narrower than 8: plain rounding
    assert kept_count(10, 0.01) == 1  # never empty


def test_l1_keep_on_a_registry_model() -> None:
    from prunecli.models import build_model

    model = build_model({"name": "resnet20"}, num_classes=10, in_chans=3).eval()
    x = torch.randn(1, 3, 32, 32)
    s = trace_structure(model, x)
    keep = top_k_keep(l1_scores(model, s), keep_ratio=0.5, round_to=8)
    assert all(len(v) % 8 == 0 for v in keep.values())
    assert_exact(model, keep, x)


# ------------------------------------------------------------------ masks
@pytest.mark.parametrize("soft", [False, True])
def test_soft_masks_pass_gradients_to_masked_weights(soft: bool) -> None:
    model = _net(nets.Residual).train()
    s = trace_structure(model, X)
    masker = ChannelMasker(model, s, soft=soft)
    masker.set_keep({"stem.0": [0, 1, 2, 3]})
    model(X).square().sum().backward()
    grad = model.a1[0].parametrizations.weight.original.grad
    masked_cols = grad[:, 4:].abs().sum().item()
    assert (masked_cols > 0) == soft
    assert grad[:, :4].abs().sum().item() > 0


def test_masks_are_saved_in_the_state_dict() -> None:
    model = _net(nets.Residual)
    s = trace_structure(model, X)
    ChannelMasker(model, s).set_keep({"stem.0": [1, 5]})
    other = _net(nets.Residual)
    restored = ChannelMasker(other, s)
    other.load_state_dict(model.state_dict())
    restored.sync_from_buffers()
    assert restored.keep()[_group_of(s, "stem.0").id].tolist() == [1, 5]
    with torch.no_grad():
        assert torch.equal(model(X), other(X))


def test_grn_input_masks_survive_resume_and_copies_and_unslim_undoes_the_rescaling() -> None:
    """A Global Response Norm's input mask stays out of the state_dict, is rebuilt on resume
    from the consumers' masks, travels with deep copies, and a slim state scattered back to
    dense shapes (``dense_state``) has the slim GRN's rescaled weight undone."""
    import copy

    from prunecli.structure.unslim import dense_state

    model = _net(nets.ResponseNorm)
    s = trace_structure(model, X)
    keep = random_keep(s, 0.5, torch.Generator().manual_seed(2))
    assert all(len(keep[_group_of(s, k).id]) < _group_of(s, k).size for k in ("fc1", "a.0"))
    small = slim(model, s, keep)
    ChannelMasker(model, s).set_keep(keep)
    assert not any("prunecli" in k for k in model.state_dict())

    def fresh() -> nn.Module:
        torch.manual_seed(7)  # other weights than ``model``'s
        return nets.ResponseNorm().eval()

    other = fresh()
    restored = ChannelMasker(other, s)
    other.load_state_dict(model.state_dict())
    restored.sync_from_buffers()
    back = fresh()
    back.load_state_dict(dense_state(fresh(), s, keep, small.state_dict()))
    ChannelMasker(back, s).set_keep(keep)
    with torch.no_grad():
        want = small(X)
        for m in (model, other, copy.deepcopy(model), back):
            torch.testing.assert_close(m(X), want, rtol=1e-4, atol=1e-5)
        restored.remove()
        assert not torch.allclose(other(X), want, rtol=1e-4, atol=1e-5)  # the masks mattered


# ------------------------------------------------------------------ save, load, export
def test_save_and_load_in_a_fresh_process(tmp_path: Path) -> None:
    from prunecli.models import build_model

    cfg = {"name": "resnet20", "source": "prunecli"}
    model = build_model(cfg, num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    s = trace_structure(model, x[:1])
    keep = random_keep(s, 0.5, torch.Generator().manual_seed(3))
    small = slim(model, s, keep)
    path = save_slim(tmp_path / "small.pt", small, s, keep, cfg, num_classes=10, in_chans=1)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(small(x), tmp_path / "y.pt")
    code = (
        "import sys, torch\n"
        "from prunecli.structure import load_slim\n"
        "d = sys.argv[1]\n"
        "m = load_slim(d + '/small.pt').model\n"
        "x = torch.load(d + '/x.pt', weights_only=True)\n"
        "y = torch.load(d + '/y.pt', weights_only=True)\n"
        "assert torch.allclose(m(x), y, atol=1e-5), (m(x) - y).abs().max()\n"
        "print(sum(p.numel() for p in m.parameters()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip()) == _params(small) < _params(model)
    raw = torch.load(path, weights_only=True)  # plain tensors and values only
    assert raw["format"] == "prunecli-slim"
    assert load_slim(path).keep.keys() == s.normalise_keep(keep).keys()


def test_a_slim_model_with_fewer_conv_groups_saves_and_loads(tmp_path: Path) -> None:
    """torchvision RegNetX (grouped convs pruned in whole groups) through save_slim/load_slim:
    the file rebuilds the dense model, re-traces it and slims it again."""
    from prunecli.models import build_model

    cfg = {"name": "regnet_x_400mf", "source": "torchvision"}
    model = build_model(cfg, num_classes=10, in_chans=3).eval()
    x = torch.randn(2, 3, 64, 64)
    s = trace_structure(model, x[:1])
    assert any(g.unit > 1 and g.prunable for g in s.groups)
    keep = random_keep(s, 0.5, torch.Generator().manual_seed(0))
    small = slim(model, s, keep)
    path = save_slim(tmp_path / "small.pt", small, s, keep, cfg, num_classes=10, in_chans=3)
    again = load_slim(path).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x))
    assert _params(again) == _params(small) < _params(model)


def test_corrupt_slim_file_is_a_clear_error(tmp_path: Path) -> None:
    from prunecli.errors import CheckpointError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_slim(bad)
    torch.save({"model": {}}, tmp_path / "train.pt")
    with pytest.raises(CheckpointError, match="not a slim-model file"):
        load_slim(tmp_path / "train.pt")


def test_export_torchscript_and_onnx(tmp_path: Path) -> None:
    model = _net(nets.Residual)
    s = trace_structure(model, X)
    small = slim(model, s, random_keep(s, 0.5, torch.Generator().manual_seed(0)))
    ts = torch.jit.load(str(export_torchscript(small, X, tmp_path / "m.ts")))
    with torch.no_grad():
        assert torch.allclose(ts(X), small(X), atol=1e-6)
    onnx_path = export_onnx(small, X, tmp_path / "m.onnx")
    assert onnx_path.stat().st_size > 1000


def test_slimming_a_masked_model_leaves_it_working() -> None:
    """The slim copy shares parametrized classes with the original: removing its masks must not
    break the masked model it came from."""
    model = _net(nets.Residual)
    s = trace_structure(model, X)
    ChannelMasker(model, s).set_keep({"stem.0": [0, 2, 4]})
    small = slim(model, s, {"stem.0": [0, 2, 4]})
    with torch.no_grad():
        assert torch.allclose(model(X), small(X), atol=1e-5)
    assert not hasattr(small.a1[0], "parametrizations")


def test_onnx_export_without_the_onnx_package_says_what_to_install(tmp_path, monkeypatch) -> None:
    import importlib.util

    from prunecli.errors import PrunecliError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(PrunecliError, match=r"pip install 'prunecli\[onnx\]'"):
        export_onnx(_net(nets.Residual), X, tmp_path / "m.onnx")


def test_a_whole_group_keep_set_turns_a_masked_group_back_on() -> None:
    from prunecli.models import build_model
    from prunecli.structure import ChannelMasker

    model = build_model({"name": "resnet20"}, num_classes=10)
    s = trace_structure(model, torch.randn(1, 3, 16, 16))
    g = s.prunable_groups[0]
    masker = ChannelMasker(model, s)
    masker.set_keep({g.id: [0, 1]})
    assert int(masker.channel_masks()[g.id].sum()) == 2
    masker.set_keep({g.id: list(range(g.size))})  # every channel back (SMCP's soft masks)
    assert bool(masker.channel_masks()[g.id].all())
    assert all(bool(p.mask.all()) for p in masker.masks.values())


def test_masks_cost_nothing_until_a_channel_is_off_and_survive_a_state_dict_load() -> None:
    from prunecli.models import build_model
    from prunecli.structure import ChannelMasker

    torch.manual_seed(0)
    model = build_model({"name": "resnet20"}, num_classes=10)
    x = torch.randn(2, 3, 16, 16)
    s = trace_structure(model, x[:1])
    masker = ChannelMasker(model, s, soft=True)
    assert all(p.full for p in masker.masks.values())  # pass-through while nothing is masked
    g = s.prunable_groups[1]
    masker.set_keep({g.id: [0, 3]})
    assert not all(p.full for p in masker.masks.values())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    other = build_model({"name": "resnet20"}, num_classes=10)
    ChannelMasker(other, s, soft=True)  # fresh masks: all on, pass-through ...
    other.load_state_dict(state)  # ... until the saved masks arrive
    model.eval()
    other.eval()
    torch.testing.assert_close(other(x), model(x))
    # the straight-through mask: masked forward, unchanged gradient
    p = next(iter(v for v in masker.masks.values() if not v.full))
    w = torch.randn(4, p.mask.numel(), 3, 3, requires_grad=True)
    out = p(w)
    assert torch.equal(out[:, p.mask == 0], torch.zeros_like(out[:, p.mask == 0]))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


@pytest.mark.parametrize("name,kwargs", [
    ("convnext_atto", {}),  # permute -> LayerNorm -> Linear MLP -> layer scale -> permute back
    ("convnextv2_atto", {}),  # the same with a Global Response Norm on the MLP width
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}),  # token MLPs
    ("levit_128", {}),  # Linear -> BatchNorm1d over flatten(0, 1), at its 224 px
    ("mobilevit_xxs", {}),  # fx cannot trace it: traced piecewise
])
def test_real_models_with_moving_channel_axes_slim_exactly(name: str, kwargs: dict) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
    _randomise_norms(model)
    with torch.no_grad():  # layer scales start at 1e-6: make every branch reach the output
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    size = {"convnext_atto": 64, "convnextv2_atto": 64, "vit_tiny_patch16_224": 32,
            "levit_128": 224, "mobilevit_xxs": 64}[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    structure = trace_structure(model, x)
    mlp = [g for g in structure.prunable_groups if any(".fc1" in p or "mlp.ln1" in p
                                                       for p in g.producers)]
    assert mlp, "the MLP hidden widths must be prunable"
    keep = random_keep(structure, 0.6, torch.Generator().manual_seed(0))
    small = assert_exact(model, keep, x)
    with torch.no_grad():
        change = (model(x) - small(x)).abs().max() / model(x).abs().max()
    assert change > 1e-3  # pruning changed the output: the check above is not void
    assert _params(small) < _params(model)
