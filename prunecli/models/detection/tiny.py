"""``ssd_tiny``: an SSD small enough to train on two CPU cores, for the embedded detection demo.

The demo detects ~28x28 Fashion-MNIST items on ~96x96 canvases, the way the classification demo
trains a ResNet-20 on 28x28 images. Every stage halves the map once with one BasicBlock (BN,
projection shortcuts: ordinary layers the tracer prunes), so the detection maps come at strides
8, 16 and 32 (12, 6, 3 at 96) plus one extra conv block (2x2), with 4-6 default boxes per cell.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

from prunecli.errors import ConfigError
from prunecli.models.cifar_resnet import BasicBlock
from prunecli.models.registry import MODELS, kaiming_init

if TYPE_CHECKING:
    from prunecli.models.detection.ssd import SSDDetector

DEFAULT_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2,))


class TinyBackbone(nn.Module):
    """Stem (3x3, stride 2), four one-block stages (stride 2 each), one extra block; returns the
    maps of stages 2-4 and of the extra block (strides 8, 16, 32, 64)."""

    def __init__(self, widths: Sequence[int], in_chans: int) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, w0, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
        )
        self.layer1 = BasicBlock(w0, w0, stride=2)
        self.layer2 = BasicBlock(w0, w1, stride=2)
        self.layer3 = BasicBlock(w1, w2, stride=2)
        self.layer4 = BasicBlock(w2, w3, stride=2)
        mid = max(w3 // 2, 1)
        self.extra = nn.Sequential(
            nn.Conv2d(w3, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, w3, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w3),
            nn.ReLU(inplace=True),
        )
        self.out_channels = [w1, w2, w3, w3]
        kaiming_init(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.layer1(self.stem(x))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return OrderedDict([("0", c3), ("1", c4), ("2", c5), ("3", self.extra(c5))])


def ssd_tiny(
    num_classes: int = 10,
    in_chans: int = 3,
    widths: Sequence[int] = (16, 32, 64, 128),
    size: int = 96,
    min_ratio: float = 0.15,
    max_ratio: float = 0.9,
    aspect_ratios: Sequence[Sequence[float]] = DEFAULT_ASPECT_RATIOS,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 100,
    topk_candidates: int = 200,
    iou_thresh: float = 0.5,
    positive_fraction: float = 0.25,
) -> SSDDetector:
    """A small ResNet-style SSD for ~96x96 canvases: 4 maps (12, 6, 3, 2 at 96), default box
    scales from ``min_ratio`` to ``max_ratio`` of the image side, ``aspect_ratios`` per map
    (each ratio r adds r and 1/r to the two square boxes)."""
    widths = tuple(int(w) for w in widths)
    ratios = [[float(r) for r in level] for level in aspect_ratios]
    if len(widths) != 4 or min(widths) < 1:
        raise ConfigError(f"ssd_tiny: widths must be 4 positive channel counts, got {widths}")
    if len(ratios) != 4:
        raise ConfigError(f"ssd_tiny: aspect_ratios needs one list per map (4), got {len(ratios)}")
    if not 0 < min_ratio < max_ratio:
        raise ConfigError(f"ssd_tiny: need 0 < min_ratio < max_ratio, got {min_ratio}, {max_ratio}")
    if size < 64:
        raise ConfigError(f"ssd_tiny: size must be at least 64 (four stride-2 stages), got {size}")
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    from prunecli.models.detection.ssd import make_ssd

    backbone = TinyBackbone(widths, in_chans)
    anchors = DefaultBoxGenerator(ratios, min_ratio=min_ratio, max_ratio=max_ratio)
    return make_ssd(
        backbone, backbone.out_channels, anchors, size=size, num_classes=num_classes,
        mean=(0.5,) * in_chans, std=(0.5,) * in_chans, score_thresh=score_thresh,
        nms_thresh=nms_thresh, detections_per_img=detections_per_img,
        topk_candidates=topk_candidates, iou_thresh=iou_thresh,
        positive_fraction=positive_fraction,
    )  # fmt: skip


ssd_tiny.is_detector = True  # type: ignore[attr-defined]
MODELS.register(
    "ssd_tiny",
    "small ResNet-style SSD for ~96x96 canvases (embedded CPU demo): maps at strides 8-64",
)(ssd_tiny)
