"""SSD with a ResNet-50 trunk: SMCP's SSD512 (Pascal VOC) and NVIDIA's SSD300 v1.1 (COCO).

Both cut torchvision's ResNet-50 after layer3 and run layer3 at stride 1 (its first block's
3x3 conv and projection), so the first detection map has 1024 channels at stride 8: 64x64 at
512 input, 38x38 at 300. Extra conv-BN-ReLU blocks (no bias) shrink it to 1x1 and torchvision's
``SSDHead`` (3x3 convs) predicts on every map. The trunk keeps torchvision's module names
(``conv1``, ``bn1``, ``layer1``..``layer3``), so a torchvision resnet50 state_dict loads into it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from prunecli.errors import ConfigError
from prunecli.models.detection.base import Detector
from prunecli.models.registry import MODELS
from prunecli.models.weights import check_compatible, extract_state_dict, load_weights

if TYPE_CHECKING:  # torchvision is imported when a model is built, not when registered
    from prunecli.models.detection.ssd import SSDDetector

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRUNK_LAYERS = ("conv1", "bn1", "layer1", "layer2", "layer3")


class ResNetTrunk(nn.Module):
    """torchvision ResNet-50's conv1..layer3 with layer3 at stride 1 (zero-init residual BN)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        r = resnet50(weights=None, zero_init_residual=True)
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3 = r.layer1, r.layer2, r.layer3
        first = self.layer3[0]
        first.conv2.stride = (1, 1)  # torchvision's v1.5 block strides in its 3x3 conv
        first.downsample[0].stride = (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class ResNetSSDBackbone(nn.Module):
    """Trunk, then the extra blocks; returns every map, in order, as torchvision's SSD expects."""

    def __init__(self, extras: list[nn.Sequential]) -> None:
        super().__init__()
        self.trunk = ResNetTrunk()
        self.extras = nn.ModuleList(extras)
        for m in self.extras.modules():  # NVIDIA's SSD300 init for the extra layers
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.trunk(x)
        out = [x]
        for block in self.extras:
            x = block(x)
            out.append(x)
        return OrderedDict((str(i), f) for i, f in enumerate(out))


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> list:
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def _ssd512_extras() -> list[nn.Sequential]:
    """SMCP's six extra blocks: 64 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1 at 512 input."""
    blocks = [
        conv_bn_relu(1024, 512, 3, padding=1) + conv_bn_relu(512, 512, 3, 2, 1),
        conv_bn_relu(512, 256, 1) + conv_bn_relu(256, 512, 3, 2, 1),
        conv_bn_relu(512, 128, 1) + conv_bn_relu(128, 256, 3, 2, 1),
        conv_bn_relu(256, 128, 1) + conv_bn_relu(128, 256, 3, 2, 1),
        conv_bn_relu(256, 128, 1) + conv_bn_relu(128, 256, 3, 2, 1),
        conv_bn_relu(256, 128, 1) + conv_bn_relu(128, 256, 4, 1, 1),
    ]
    return [nn.Sequential(*b) for b in blocks]


def _ssd300_extras() -> list[nn.Sequential]:
    """NVIDIA SSD300 v1.1: 38 -> 19 -> 10 -> 5 (stride 2) -> 3 -> 1 (no padding) at 300."""
    ins, outs = [1024, 512, 512, 256, 256], [512, 512, 256, 256, 256]
    mids = [256, 256, 128, 128, 128]
    blocks = []
    for i, (cin, cout, mid) in enumerate(zip(ins, outs, mids, strict=True)):
        last = conv_bn_relu(mid, cout, 3, 2, 1) if i < 3 else conv_bn_relu(mid, cout, 3)
        blocks.append(nn.Sequential(*conv_bn_relu(cin, mid, 1), *last))
    return blocks


def _check_rgb(name: str, in_chans: int) -> None:
    if in_chans != 3:
        raise ConfigError(f"model '{name}' takes RGB images; set data.channels=3 (got {in_chans}).")


def _make(
    extras: list[nn.Sequential], in_channels: list[int], aspect_ratios: list[list[int]],
    scales: list[float], steps: list[int], size: int, num_classes: int, **options: object,
) -> SSDDetector:  # fmt: skip
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    from prunecli.models.detection.ssd import make_ssd

    anchors = DefaultBoxGenerator(aspect_ratios, scales=scales, steps=steps)
    return make_ssd(
        ResNetSSDBackbone(extras), in_channels, anchors, size=size, num_classes=num_classes,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, **options,
    )  # fmt: skip


def ssd512_resnet50(
    num_classes: int = 20, in_chans: int = 3, score_thresh: float = 0.01,
    nms_thresh: float = 0.45, detections_per_img: int = 200, topk_candidates: int = 400,
    iou_thresh: float = 0.5, positive_fraction: float = 0.25,
) -> SSDDetector:  # fmt: skip
    """SMCP's SSD512-ResNet-50: 7 maps (64..1), A = [4, 6, 6, 6, 6, 4, 4], 24,564 boxes;
    scales 0.07..0.90 (+1.05 for the last level's extra box), steps 8..512."""
    _check_rgb("ssd512_resnet50", in_chans)
    return _make(
        _ssd512_extras(), [1024, 512, 512, 256, 256, 256, 256],
        [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
        [0.07, 0.15, 0.30, 0.45, 0.60, 0.75, 0.90, 1.05], [8, 16, 32, 64, 128, 256, 512],
        512, num_classes, score_thresh=score_thresh, nms_thresh=nms_thresh,
        detections_per_img=detections_per_img, topk_candidates=topk_candidates,
        iou_thresh=iou_thresh, positive_fraction=positive_fraction,
    )  # fmt: skip


def ssd300_resnet50(
    num_classes: int = 80, in_chans: int = 3, score_thresh: float = 0.01,
    nms_thresh: float = 0.45, detections_per_img: int = 200, topk_candidates: int = 400,
    iou_thresh: float = 0.5, positive_fraction: float = 0.25,
) -> SSDDetector:  # fmt: skip
    """NVIDIA's SSD300 v1.1 (ResNet-50): 6 maps (38..1), A = [4, 6, 6, 6, 4, 4], 8,732 boxes;
    scales [21, 45, 99, 153, 207, 261, 315] / 300, steps [8, 16, 32, 64, 100, 300]."""
    _check_rgb("ssd300_resnet50", in_chans)
    return _make(
        _ssd300_extras(), [1024, 512, 512, 256, 256, 256],
        [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        [s / 300 for s in (21, 45, 99, 153, 207, 261, 315)], [8, 16, 32, 64, 100, 300],
        300, num_classes, score_thresh=score_thresh, nms_thresh=nms_thresh,
        detections_per_img=detections_per_img, topk_candidates=topk_candidates,
        iou_thresh=iou_thresh, positive_fraction=positive_fraction,
    )  # fmt: skip


# --------------------------------------------------------------------------- pretrained trunk


def imagenet_resnet50_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet-50 (IMAGENET1K_V1, what SMCP and NVIDIA started from)."""
    from torchvision.models import ResNet50_Weights

    from prunecli.models.external import _prefetch

    weights = ResNet50_Weights.IMAGENET1K_V1
    _prefetch(weights.url, "resnet50")
    return dict(weights.get_state_dict(progress=False, check_hash=True))


def load_resnet_trunk(det: Detector, weights: str | Path | None) -> None:
    """``model.pretrained=true``: ImageNet ResNet-50 weights into the trunk (conv1, bn1,
    layer1..3; layer4 and fc are ignored), downloaded, or read from the local torchvision
    resnet50 state_dict ``weights``. A file holding this detector's own weights (``net.*``
    keys) is loaded whole instead."""
    from prunecli.models.weights import _read

    if weights is None:
        state, where = imagenet_resnet50_state_dict(), "torchvision ImageNet ResNet-50 weights"
    else:
        raw = _read(weights)
        state, where = extract_state_dict(raw, weights), str(weights)
        if all(k.startswith("net.") for k in state):
            load_weights(det, weights)
            return
    trunk = det.net.backbone.trunk
    sub = {k: v for k, v in state.items() if k.split(".", 1)[0] in TRUNK_LAYERS}
    batches = [k for k in trunk.state_dict() if k.endswith("num_batches_tracked")]
    check_compatible(trunk, sub, where, allowed_missing=batches)
    trunk.load_state_dict(sub, strict=False)


for _factory, _size, _text in (
    (ssd512_resnet50, 512, "SSD512 with a ResNet-50 trunk (SMCP, Pascal VOC): 24,564 boxes"),
    (ssd300_resnet50, 300, "SSD300 v1.1 with a ResNet-50 trunk (NVIDIA, COCO): 8,732 boxes"),
):
    _factory.is_detector = True  # type: ignore[attr-defined]
    _factory.input_size = _size  # type: ignore[attr-defined]
    _factory.load_pretrained = load_resnet_trunk  # type: ignore[attr-defined]
    MODELS.register(_factory.__name__, _text)(_factory)
