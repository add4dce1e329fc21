"""Detection models: geometry, traceability, exact slimming, torchvision equivalence, weights."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torch import nn
from torch.func import functional_call

from prunecli.cost import build_cost_model, count_macs, count_params
from prunecli.errors import CheckpointError, ConfigError, PrunecliError, UnknownNameError
from prunecli.models import build_model, describe_models
from prunecli.models.detection import (
    Detector,
    core_of,
    is_detector,
    native_input_size,
    unfreeze_batchnorm,
)
from prunecli.structure import ChannelMasker, random_keep, slim, trace_structure

K = 3  # object classes in every test
# Faster R-CNN with few proposals and sampled RoIs: the ROI heads dominate its CPU time
FAST_RCNN = {
    "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
}  # fmt: skip
TV_NAMES = [
    "ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
]  # fmt: skip
# small test sizes: the smallest the extra layers allow for SSD300-style models
TEST_SIZE = {"ssd_tiny": 96, "ssd512_resnet50": 288, "ssd300_resnet50": 272,
             "ssd300_vgg16": 272, "ssdlite320_mobilenet_v3_large": 160}  # fmt: skip


# layers whose output width must be prunable (head towers, FPN, extras, backbone)
PRUNABLE = {
    "ssd_tiny": ["backbone.stem.0", "backbone.layer2.conv1", "backbone.extra.0"],
    "ssd512_resnet50": ["backbone.trunk.layer3.0.conv3", "backbone.extras.0.0",
                        "backbone.extras.5.3"],
    "ssd300_resnet50": ["backbone.trunk.layer1.0.conv1", "backbone.extras.4.0"],
    "ssdlite320_mobilenet_v3_large": ["backbone.extra.0.0.0"],
    "retinanet_resnet50_fpn": ["cls_head.conv.0.0", "box_head.conv.3.0",
                               "backbone.fpn.layer_blocks.0.0", "backbone.body.layer4.2.conv2"],
    "fcos_resnet50_fpn": ["backbone.fpn.layer_blocks.0.0", "backbone.body.layer2.0.conv1",
                          "cls_head.conv.0", "box_head.conv.9"],  # GroupNorm: units of 8
    "retinanet_resnet50_fpn_v2": ["cls_head.conv.0.0", "box_head.conv.3.0"],
    "fasterrcnn_resnet50_fpn": ["rpn_head.conv.0.0", "backbone.body.layer1.0.conv1"],
    "fasterrcnn_mobilenet_v3_large_fpn": ["rpn_head.conv.0.0", "backbone.body.2.block.0.0"],
}  # fmt: skip


def _cfg(name: str, **extra: object) -> dict:
    if name in ("ssd_tiny", "ssd512_resnet50", "ssd300_resnet50"):
        return {"name": name, **extra}
    kwargs = FAST_RCNN if name.startswith("fasterrcnn") else {}
    return {"source": "torchvision_det", "name": name, "kwargs": kwargs, **extra}


@functools.cache
def _cached(name: str) -> Detector:
    """One untouched detector per name (tests that change a detector deep-copy it)."""
    torch.manual_seed(0)
    return build_model(_cfg(name), num_classes=K)


@pytest.fixture(autouse=True, scope="module")
def _free_cached_detectors():
    yield
    _cached.cache_clear()  # about 1 GB of ResNet-50 detectors


def _size(name: str) -> int:
    return TEST_SIZE.get(name, 160 if "mobilenet" in name else 128)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _targets(n: int, size: int, empty: int | None = 1) -> list[dict[str, torch.Tensor]]:
    """Random boxes (image ``empty`` has none: a valid training sample)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        m = 0 if i == empty else 3
        xy = torch.rand(m, 2, generator=g) * size * 0.6
        wh = torch.rand(m, 2, generator=g) * size * 0.3 + size / 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        out.append({"boxes": boxes, "labels": torch.randint(1, K + 1, (m,), generator=g)})
    return out


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial norm statistics and affines, so a wrongly sliced norm shows."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _low_threshold(det: Detector) -> None:
    """Random weights score every box near the prior: keep some detections to compare."""
    det.net.score_thresh = 0.001
    det.net.detections_per_img = 50


def _assert_same_detections(a: list[dict], b: list[dict], atol: float = 1e-3) -> None:
    assert len(a) == len(b)
    for da, db in zip(a, b, strict=True):
        assert da["labels"].tolist() == db["labels"].tolist()
        torch.testing.assert_close(da["scores"], db["scores"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(da["boxes"], db["boxes"], atol=atol, rtol=1e-4)


def _assert_same_losses(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


def _assert_costed_exactly(det: Detector, structure, keep: dict, small: Detector,
                           x: torch.Tensor) -> None:
    """The MACs and params cost models (which never run the model) predict the slimmed core's
    counted cost: heads shared by pyramid levels are costed at every level's size."""
    counts = {g: len(k) for g, k in keep.items()}
    macs = build_cost_model("macs", det.core, structure, x)
    params = build_cost_model("params", det.core, structure, x)
    assert macs.terms.const == 0  # every conv modeled (GroupNorm params of whole heads aside)
    assert macs.cost(counts) == count_macs(small.core, x)
    assert params.cost(counts) == count_params(small.core)


def _meta_outputs(det: Detector, size: int) -> tuple[torch.Tensor, ...]:
    """The core's output shapes at ``size`` without computing anything (meta tensors)."""
    core = det.core
    state = {n: torch.empty_like(t, device="meta")
             for n, t in [*core.named_parameters(), *core.named_buffers()]}  # fmt: skip
    with torch.no_grad():
        return functional_call(core, state, (torch.empty(1, 3, size, size, device="meta"),))


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("name", "size", "maps", "widths", "anchors", "total"),
    [
        ("ssd512_resnet50", 512, [64, 32, 16, 8, 4, 2, 1],
         [1024, 512, 512, 256, 256, 256, 256], [4, 6, 6, 6, 6, 4, 4], 24_564),
        ("ssd300_resnet50", 300, [38, 19, 10, 5, 3, 1],
         [1024, 512, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4], 8_732),
    ],
)  # fmt: skip
def test_resnet_ssd_geometry(name, size, maps, widths, anchors, total) -> None:
    from torchvision.models.detection.image_list import ImageList

    det = _cached(name).eval()  # BatchNorm refuses 1x1 maps of one image in training mode
    assert det.input_size == size == native_input_size({"name": name})
    backbone = det.net.backbone
    state = {n: torch.empty_like(t, device="meta")
             for n, t in [*backbone.named_parameters(), *backbone.named_buffers()]}  # fmt: skip
    feats = functional_call(backbone, state, (torch.empty(1, 3, size, size, device="meta"),))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [
        (c, s, s) for c, s in zip(widths, maps, strict=True)
    ]
    outs = _meta_outputs(det, size)
    levels = len(maps)
    assert [o.shape[1] for o in outs] == [a * (K + 1) for a in anchors] + [a * 4 for a in anchors]
    boxes = det.net.anchor_generator(
        ImageList(torch.empty(1, 3, size, size), [(size, size)]), list(outs[:levels])
    )
    assert boxes[0].shape == (total, 4)
    # ResNet-50 trunk: layer3 at stride 1 (1024 channels at stride 8), zero-init residual BN
    trunk = backbone.trunk
    assert trunk.layer3[0].conv2.stride == (1, 1) and trunk.layer3[0].downsample[0].stride == (1, 1)
    assert all(not b.bn3.weight.detach().any() for b in trunk.layer3)


def test_native_input_sizes() -> None:
    assert native_input_size({"name": "ssd_tiny"}) == 96
    assert native_input_size({"name": "ssd_tiny", "kwargs": {"size": 128}}) == 128
    assert native_input_size({"name": "resnet20"}) is None
    assert native_input_size({"source": "torchvision", "name": "resnet50"}) is None
    sizes = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320,
             "retinanet_resnet50_fpn": 512, "fasterrcnn_mobilenet_v3_large_320_fpn": 320}
    for name, size in sizes.items():
        assert native_input_size({"source": "torchvision_det", "name": name}) == size
    det = build_model({"name": "ssd_tiny", "kwargs": {"size": 128}}, num_classes=K)
    assert det.input_size == 128 and is_detector(det) and core_of(det) is det.core
    assert core_of(det.net) is det.net and not is_detector(det.net)


# --------------------------------------------------------------------------- tracing


@pytest.mark.parametrize("name", ["ssd_tiny", "ssd512_resnet50", "ssd300_resnet50", *TV_NAMES])
def test_core_traces(name: str) -> None:
    det = _cached(name).eval()
    x = det.normalise(_images(1, _size(name)))
    structure = trace_structure(det.core, x)
    # SSD300-VGG16 L2-normalises conv4_3 across channels (F.normalize): understood, and its
    # channels stay whole with the reason (checked below)
    assert structure.unknown_ops == []
    assert structure.prunable_groups
    for module in PRUNABLE.get(name, ()):  # head-internal and backbone widths
        assert structure.groups[structure.roles[module].out_groups[0]].prunable, module
    if name == "ssd300_vgg16":
        conv4_3 = structure.groups[structure.roles["backbone.features.21"].out_groups[0]]
        assert not conv4_3.prunable and "F.normalize over the channels" in conv4_3.reason
    for conv in det.core.final_convs:
        group = structure.groups[structure.roles[conv].out_groups[0]]
        assert not group.prunable and "reaches the model output" in group.reason
    with torch.no_grad():
        outs = det.core(x)
    assert len(outs) == len(det.core.output_names)


# --------------------------------------------------------------------------- exactness


EXACT_SLIM = ["ssd_tiny", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
              "fasterrcnn_mobilenet_v3_large_fpn", "ssd300_vgg16", "ssd300_resnet50"]


@pytest.mark.parametrize("name", EXACT_SLIM)
def test_slimmed_core_gives_the_masked_detectors_outputs(name: str) -> None:
    det = copy.deepcopy(_cached(name))
    _randomise_norms(det)
    _low_threshold(det)
    size = _size(name)
    x, targets = _images(2, size), _targets(2, size)
    structure = trace_structure(det.core, det.normalise(x[:1]))
    keep = random_keep(structure, 0.7, torch.Generator().manual_seed(0))
    small = copy.deepcopy(det)
    slim(small.core, structure, keep, inplace=True)  # edits the modules net shares
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in det.parameters())
    _assert_costed_exactly(det, structure, keep, small, det.normalise(x[:1]))
    masker = ChannelMasker(det.core, structure)
    masker.set_keep(keep)
    with torch.no_grad():
        _assert_same_detections(det.eval()(x), small.eval()(x))
    torch.manual_seed(3)  # Faster R-CNN samples anchors and RoIs
    masked = det.train()(x, targets)
    torch.manual_seed(3)
    slimmed = small.train()(x, targets)
    _assert_same_losses(masked, slimmed)
    sum(slimmed.values()).backward()
    masker.remove()


# the core-only check for the detectors the whole-detector check above leaves out
CORE_ONLY_SLIM = ["ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn",
                  "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
                  "fasterrcnn_mobilenet_v3_large_320_fpn"]  # fmt: skip


@pytest.mark.parametrize("name", CORE_ONLY_SLIM)
def test_slimmed_core_gives_the_masked_cores_outputs(name: str) -> None:
    """Random keep-sets, norms randomised: the slimmed core gives the masked core's head
    tensors (backbone, FPN laterals and top-down adds, shared heads)."""
    det = copy.deepcopy(_cached(name)).eval()
    _randomise_norms(det)
    x = det.normalise(_images(2, _size(name), seed=5))
    structure = trace_structure(det.core, x[:1])
    keep = random_keep(structure, 0.6, torch.Generator().manual_seed(7))
    small = slim(copy.deepcopy(det), structure, keep)
    assert sum(p.numel() for p in small.core.parameters()) < \
        sum(p.numel() for p in det.core.parameters())
    _assert_costed_exactly(det, structure, keep, small, x[:1])
    masker = ChannelMasker(det.core, structure)
    masker.set_keep(keep)
    with torch.no_grad():
        for a, b in zip(det.core(x), small.core(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    masker.remove()


@pytest.mark.parametrize("name", ["ssd_tiny", "retinanet_resnet50_fpn"])
def test_dropping_whole_residual_branches_of_a_detector(name: str) -> None:
    """``method.layer_drop``: empty keep-sets for droppable groups (residual branches of the
    backbone) replace their layers by stand-ins inside the detector, which gives the masked
    detector's detections."""
    det = copy.deepcopy(_cached(name)).eval()
    _randomise_norms(det)
    _low_threshold(det)
    x = _images(2, _size(name), seed=2)
    structure = trace_structure(det.core, det.normalise(x[:1]))
    keep = random_keep(structure, 0.7, torch.Generator().manual_seed(1))
    dropped = structure.droppable_groups[:3]
    assert dropped
    for g in dropped:
        keep[g.id] = torch.zeros(0, dtype=torch.long)
    small = slim(det, structure, keep)
    masker = ChannelMasker(det.core, structure)
    masker.set_keep(keep)
    with torch.no_grad():
        _assert_same_detections(det(x), small(x))
    masker.remove()


def test_every_registered_detector_has_an_exact_slim_test() -> None:
    from prunecli.models.detection.torchvision_det import torchvision_det_names
    from prunecli.models.registry import MODELS

    own = [n for n in MODELS.names() if getattr(MODELS.get(n), "is_detector", False)]
    tested = {*EXACT_SLIM, *CORE_ONLY_SLIM, "ssd512_resnet50"}
    assert tested == {*own, *torchvision_det_names()}
    assert sorted(TV_NAMES) == torchvision_det_names()


def test_ssd512_core_slims_exactly() -> None:
    """SMCP's detector, core only (one 512x512 image; the full-detector check above is too
    slow for it): the slimmed core gives the masked core's head tensors."""
    det = copy.deepcopy(_cached("ssd512_resnet50")).eval()
    _randomise_norms(det)
    x = det.normalise(_images(1, 512))
    structure = trace_structure(det.core, x)
    keep = random_keep(structure, 0.7, torch.Generator().manual_seed(4))
    small = slim(copy.deepcopy(det), structure, keep)
    masker = ChannelMasker(det.core, structure)
    masker.set_keep(keep)
    with torch.no_grad():
        for a, b in zip(det.core(x), small.core(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    masker.remove()


def test_slim_detector_file_round_trip(tmp_path: Path) -> None:
    """save_slim / load_slim of a detector whose core was slimmed: the rebuilt detector (anchors,
    decoding, NMS unchanged) gives the same detections, with no code unpickled."""
    from prunecli.structure import load_slim, save_slim

    det = build_model({"name": "ssd_tiny"}, num_classes=K).eval()
    _randomise_norms(det)
    _low_threshold(det)
    x = _images(2, 96)
    structure = trace_structure(det.core, det.normalise(x[:1]))
    keep = random_keep(structure, 0.6, torch.Generator().manual_seed(2))
    small = copy.deepcopy(det)
    slim(small.core, structure, keep, inplace=True)
    path = save_slim(tmp_path / "slim.pt", small, structure, keep, {"name": "ssd_tiny"}, K, 3)
    loaded = load_slim(path)
    back = loaded.model
    assert isinstance(back, Detector) and back.num_classes == K
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in small.parameters())
    _low_threshold(back)
    with torch.no_grad():
        for a, b in zip(small.core(x), back.core(x), strict=True):
            torch.testing.assert_close(a, b)
        _assert_same_detections(small(x), back(x))


# --------------------------------------------------------------------------- vs torchvision


def _torchvision_forward(det: Detector, x: torch.Tensor, targets=None):
    """torchvision's own forward, its transform set to the detector's mean/std and no resize."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    t, size = det.net.transform, x.shape[-1]
    det.net.transform = GeneralizedRCNNTransform(
        size, size, t.image_mean, t.image_std, size_divisible=t.size_divisible,
        fixed_size=(size, size) if t.fixed_size else None, _skip_resize=True,
    )  # fmt: skip
    try:
        return det.net(list(x), copy.deepcopy(targets))
    finally:
        det.net.transform = t


@pytest.mark.parametrize(
    "name",
    ["ssd_tiny", "ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn", "fcos_resnet50_fpn",
     "fasterrcnn_mobilenet_v3_large_fpn"],
)  # fmt: skip
def test_same_losses_and_detections_as_torchvision(name: str) -> None:
    det = copy.deepcopy(_cached(name))
    _low_threshold(det)
    size = _size(name)
    x, targets = _images(2, size), _targets(2, size)
    det.train()
    torch.manual_seed(3)
    ours = det(x, targets)
    torch.manual_seed(3)
    theirs = _torchvision_forward(det, x, targets)
    _assert_same_losses(ours, theirs)
    total = sum(ours.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in det.core.parameters() if p.requires_grad)
    det.eval()
    with torch.no_grad():
        ours, theirs = det(x), _torchvision_forward(det, x)
    # our labels are 1..K: RetinaNet/FCOS's background slot (label 0) is dropped
    theirs = [{k: v[d["labels"] > 0] for k, v in d.items()} for d in theirs]
    assert all(len(d["labels"]) for d in ours)
    _assert_same_detections(ours, theirs, atol=1e-4)


# --------------------------------------------------------------------------- module sharing


def test_deepcopy_channels_last_and_state_dict() -> None:
    det = copy.deepcopy(_cached("ssd_tiny")).eval()
    clone = copy.deepcopy(det)
    net_modules = {id(m) for m in clone.net.modules()}
    assert all(id(m) in net_modules for m in clone.core.children())
    assert clone.core.backbone is clone.net.backbone
    assert clone.core.cls_heads is clone.net.head.classification_head.module_list
    assert not {id(m) for m in det.modules()} & net_modules  # a real copy
    keys = list(det.state_dict())
    assert keys and all(k.startswith("net.") for k in keys) and len(set(keys)) == len(keys)
    assert not any(".core." in k or k.startswith(("core.", "mean", "std")) for k in keys)
    x = _images(2, 96)
    with torch.no_grad():
        dense = det(x)
        det.to(memory_format=torch.channels_last)
        fast = det(x.contiguous(memory_format=torch.channels_last))
    _assert_same_detections(dense, fast)
    det.train()(x.contiguous(memory_format=torch.channels_last), _targets(2, 96))
    assert det.core.training and clone.core.training is False
    with torch.autocast("cpu", dtype=torch.bfloat16):  # box math stays float32
        losses = det(x, _targets(2, 96))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    # a name in the traced core is a name in the detector's state_dict
    head = "net.head.classification_head.module_list"
    assert det.model_name("cls_heads.0.weight") == f"{head}.0.weight"
    assert det.model_name("backbone.layer1") == "net.backbone.layer1"


def test_fpn_detectors_need_sides_divisible_by_32() -> None:
    det = _cached("fcos_resnet50_fpn")
    with pytest.raises(ValueError, match="divisible by 32"):
        det.eval()(_images(1, 100))


def test_trainable_backbone_layers() -> None:
    name = "fasterrcnn_mobilenet_v3_large_fpn"
    assert all(p.requires_grad for p in _cached(name).parameters())  # default: all train
    det = build_model(_cfg(name, kwargs={"trainable_backbone_layers": 2}), num_classes=K)
    frozen = [n for n, p in det.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("net.backbone.body.") for n in frozen)
    with pytest.raises(ConfigError, match="trainable_backbone_layers"):
        build_model(_cfg(name, kwargs={"trainable_backbone_layers": 9}), num_classes=K)


# --------------------------------------------------------------------------- weights


def test_own_weights_round_trip(tmp_path: Path) -> None:
    det = _cached("ssd_tiny")
    path = tmp_path / "det.pt"
    torch.save(det.state_dict(), path)
    again = build_model({"name": "ssd_tiny", "weights": str(path)}, num_classes=K)
    for k, v in det.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    with pytest.raises(CheckpointError) as exc:  # another width: a clear one-line error
        build_model({"name": "ssd_tiny", "weights": str(path),
                     "kwargs": {"widths": [8, 16, 32, 64]}}, num_classes=K)  # fmt: skip
    assert "\n" not in str(exc.value)


def test_torchvision_weights_for_another_class_count(tmp_path: Path) -> None:
    import torchvision.models.detection as tvd
    from torchvision.ops.misc import FrozenBatchNorm2d

    name = "fasterrcnn_mobilenet_v3_large_fpn"
    coco = tvd.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
    # as torchvision's COCO files: FrozenBatchNorm2d statistics, no num_batches_tracked
    state = {k: v for k, v in coco.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "coco.pt"
    torch.save(state, path)
    torch.manual_seed(0)
    fresh = build_model(_cfg(name), num_classes=K)
    torch.manual_seed(0)
    det = build_model(_cfg(name, pretrained=True, weights=str(path)), num_classes=K)
    own = det.net.state_dict()
    assert torch.equal(own["backbone.body.0.0.weight"], state["backbone.body.0.0.weight"])
    assert torch.equal(own["rpn.head.conv.0.0.weight"], state["rpn.head.conv.0.0.weight"])
    for k in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.bias"):
        assert torch.equal(own[k], fresh.net.state_dict()[k])  # fresh for K + 1 classes
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in det.modules())
    with pytest.raises(CheckpointError, match="model.pretrained=true"):  # not our own weights
        build_model(_cfg(name, weights=str(path)), num_classes=K)
    with pytest.raises(CheckpointError) as exc:  # weights of another architecture
        build_model(_cfg("ssdlite320_mobilenet_v3_large", pretrained=True, weights=str(path)),
                    num_classes=K)  # fmt: skip
    assert "\n" not in str(exc.value)


def test_frozen_batchnorm_becomes_batchnorm() -> None:
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for attr in ("weight", "bias", "running_mean"):
                getattr(m, attr).copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    x = _images(1, 64)
    with torch.no_grad():
        before = model(x)
        assert unfreeze_batchnorm(model) == 20
        after = model(x)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)


def test_resnet50_trunk_weights_into_ssd300(tmp_path: Path) -> None:
    import torchvision

    resnet = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pt"
    torch.save(resnet.state_dict(), path)
    det = build_model({"name": "ssd300_resnet50", "pretrained": True, "weights": str(path)},
                      num_classes=K)  # fmt: skip
    trunk = det.net.backbone.trunk.state_dict()
    for k in ("conv1.weight", "bn1.running_var", "layer3.0.conv2.weight", "layer3.5.bn3.weight"):
        assert torch.equal(trunk[k], resnet.state_dict()[k]), k
    with pytest.raises(CheckpointError):  # not a resnet50
        bad = tmp_path / "bad.pt"
        torch.save(torchvision.models.resnet18().state_dict(), bad)
        build_model({"name": "ssd300_resnet50", "pretrained": True, "weights": str(bad)},
                    num_classes=K)  # fmt: skip


def test_failed_coco_download_names_model_weights(tmp_path: Path, monkeypatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PrunecliError, match="model.weights") as exc:
        build_model(_cfg("ssdlite320_mobilenet_v3_large", pretrained=True), num_classes=K)
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- errors, listing


def test_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean retinanet_resnet50_fpn") as exc:
        build_model({"source": "torchvision_det", "name": "retinanet_resnet50"}, num_classes=K)
    assert "\n" not in str(exc.value)
    # Mask and Keypoint R-CNN's extra heads are not run: named, with the box-only builder
    for name, instead in (("maskrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2"),
                          ("keypointrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn")):
        with pytest.raises(UnknownNameError, match=f"use model.name={instead}, the same "):
            build_model({"source": "torchvision_det", "name": name}, num_classes=K)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for cfg in ({"name": "ssd_tiny", "weights": str(garbage)},
                _cfg("fcos_resnet50_fpn", pretrained=True, weights=str(garbage))):  # fmt: skip
        with pytest.raises(CheckpointError) as exc:
            build_model(cfg, num_classes=K)
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_model({"name": "ssd_tiny", "pretrained": True}, num_classes=K)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model(_cfg("fcos_resnet50_fpn", kwargs={"num_classes": 5}), num_classes=K)
    with pytest.raises(ConfigError, match="unknown argument"):
        build_model({"name": "ssd_tiny", "kwargs": {"width": 3}}, num_classes=K)
    with pytest.raises(ConfigError, match="bogus_arg") as exc:
        build_model(_cfg("ssdlite320_mobilenet_v3_large", kwargs={"bogus_arg": 1}), num_classes=K)
    assert "ssdlite320_mobilenet_v3_large" in str(exc.value) and "\n" not in str(exc.value)


def test_listed() -> None:
    rows = {(source, name): text for source, name, text in describe_models()}
    assert ("prunecli", "ssd_tiny") in rows and ("prunecli", "ssd512_resnet50") in rows
    assert "fcos_resnet50_fpn" in rows[("torchvision_det", "*")]


@pytest.mark.parametrize("name", ["ssd_tiny", "ssdlite320_mobilenet_v3_large"])
def test_sync_batchnorm_conversion_reaches_the_core(name: str) -> None:
    """`trainer.sync_bn=true` converts the detector; the core (an unregistered view) must run
    the converted norms, not stale copies."""
    cfg = {"name": name} if name == "ssd_tiny" else {"source": "torchvision_det", "name": name}
    det = nn.SyncBatchNorm.convert_sync_batchnorm(build_model(cfg, num_classes=K))
    norms = [m for m in det.core.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
