"""Adapters for torchvision's one-stage FPN detectors: ``RetinaNet`` and ``FCOS``.

Both run the same head (a conv tower, then a final conv) on every FPN level, so their cores call
the tower and the final convs per level; the tower convs are shared across levels, which the
tracer sees as one module called several times (their channels couple across levels).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet

from prunecli.models.detection.base import (
    Detections,
    Detector,
    DetectorCore,
    Target,
    flatten_levels,
)


def _features(backbone: nn.Module, x: Tensor) -> list[Tensor]:
    feats = backbone(x)
    return list(feats.values()) if isinstance(feats, dict) else [feats]


def _split_per_level(
    head_outputs: dict[str, Tensor], anchors: list[Tensor], level_maps: tuple[Tensor, ...]
) -> tuple[dict[str, list[Tensor]], list[list[Tensor]]]:
    """Head outputs and anchors split by level, as RetinaNet/FCOS ``forward`` do before
    ``postprocess_detections``."""
    hw = [m.size(2) * m.size(3) for m in level_maps]
    per_anchor = head_outputs["cls_logits"].size(1) // sum(hw)
    counts = [n * per_anchor for n in hw]
    split = {k: list(v.split(counts, dim=1)) for k, v in head_outputs.items()}
    return split, [list(a.split(counts)) for a in anchors]


def _drop_background(detections: Detections) -> Detections:
    """RetinaNet/FCOS score class 0 (the background slot of torchvision's K + 1 classes) like any
    other sigmoid class; it is never a positive target, and our labels are 1..K, so its boxes go
    (after NMS, which is per class: the other boxes are unchanged)."""
    out = []
    for d in detections:
        keep = d["labels"] > 0
        out.append({k: v[keep] for k, v in d.items()})
    return out


class RetinaNetCore(DetectorCore):
    """Outputs: the L class maps ``(N, A*(K+1), H_i, W_i)``, then the L box maps
    ``(N, A*4, H_i, W_i)``."""

    final_convs = ("cls_head.cls_logits", "box_head.bbox_reg")

    def __init__(self, net: RetinaNet, levels: int) -> None:
        super().__init__()
        self.backbone = net.backbone
        self.cls_head = net.head.classification_head
        self.box_head = net.head.regression_head
        self.output_names = tuple(
            [f"cls_logits.{i}" for i in range(levels)]
            + [f"bbox_regression.{i}" for i in range(levels)]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = _features(self.backbone, x)
        cls = [self.cls_head.cls_logits(self.cls_head.conv(f)) for f in feats]
        box = [self.box_head.bbox_reg(self.box_head.conv(f)) for f in feats]
        return (*cls, *box)


class RetinaNetDetector(Detector):
    """torchvision's ``RetinaNet`` behind the :class:`Detector` interface."""

    net: RetinaNet
    size_divisible = 32

    def build_core(self, net: nn.Module) -> RetinaNetCore:
        if not isinstance(net, RetinaNet):
            raise TypeError(f"RetinaNetDetector wraps a RetinaNet, got {type(net).__name__}")
        return RetinaNetCore(net, len(net.anchor_generator.sizes))

    def class_layers(self) -> tuple[str, ...]:
        return ("net.head.classification_head.cls_logits",)

    def class_logits(self, maps: tuple[Tensor, ...]) -> tuple[Tensor, str]:
        columns = self.net.head.classification_head.num_classes  # one sigmoid per class
        return flatten_levels(maps[: len(maps) // 2], columns), "sigmoid"

    def box_regressions(self, maps: tuple[Tensor, ...]) -> Tensor:
        return flatten_levels(maps[len(maps) // 2 :], 4)

    def box_coder(self) -> Any:
        return self.net.box_coder

    def detect(
        self, image_list: ImageList, maps: tuple[Tensor, ...], targets: list[Target] | None
    ) -> dict[str, Tensor] | Detections:
        levels = len(maps) // 2
        cls_maps, box_maps = maps[:levels], maps[levels:]
        head_outputs = {
            "cls_logits": flatten_levels(cls_maps, self.net.head.classification_head.num_classes),
            "bbox_regression": flatten_levels(box_maps, 4),
        }
        anchors = self.net.anchor_generator(image_list, list(cls_maps))
        if targets is not None:
            return self.net.compute_loss(targets, head_outputs, anchors)
        split, split_anchors = _split_per_level(head_outputs, anchors, cls_maps)
        sizes = image_list.image_sizes
        return _drop_background(self.net.postprocess_detections(split, split_anchors, sizes))


class FCOSCore(DetectorCore):
    """Outputs: the L class maps ``(N, K+1, H_i, W_i)``, the L box maps ``(N, 4, H_i, W_i)``
    (after the ReLU ``FCOSRegressionHead`` applies), then the L centerness maps
    ``(N, 1, H_i, W_i)``."""

    final_convs = ("cls_head.cls_logits", "box_head.bbox_reg", "box_head.bbox_ctrness")

    def __init__(self, net: FCOS, levels: int) -> None:
        super().__init__()
        self.backbone = net.backbone
        self.cls_head = net.head.classification_head
        self.box_head = net.head.regression_head
        self.output_names = tuple(
            [f"cls_logits.{i}" for i in range(levels)]
            + [f"bbox_regression.{i}" for i in range(levels)]
            + [f"bbox_ctrness.{i}" for i in range(levels)]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = _features(self.backbone, x)
        cls = [self.cls_head.cls_logits(self.cls_head.conv(f)) for f in feats]
        towers = [self.box_head.conv(f) for f in feats]
        box = [F.relu(self.box_head.bbox_reg(t)) for t in towers]
        ctr = [self.box_head.bbox_ctrness(t) for t in towers]
        return (*cls, *box, *ctr)


class FCOSDetector(Detector):
    """torchvision's ``FCOS`` behind the :class:`Detector` interface."""

    net: FCOS
    size_divisible = 32

    def build_core(self, net: nn.Module) -> FCOSCore:
        if not isinstance(net, FCOS):
            raise TypeError(f"FCOSDetector wraps an FCOS, got {type(net).__name__}")
        return FCOSCore(net, len(net.anchor_generator.sizes))

    def class_layers(self) -> tuple[str, ...]:
        return ("net.head.classification_head.cls_logits",)

    def class_logits(self, maps: tuple[Tensor, ...]) -> tuple[Tensor, str]:
        columns = self.net.head.classification_head.num_classes  # one sigmoid per class
        return flatten_levels(maps[: len(maps) // 3], columns), "sigmoid"

    def box_regressions(self, maps: tuple[Tensor, ...]) -> Tensor:
        """FCOS's (l, t, r, b) distances; centerness is not distilled."""
        levels = len(maps) // 3
        return flatten_levels(maps[levels : 2 * levels], 4)

    def box_coder(self) -> Any:
        return self.net.box_coder  # distances over the anchor size: no weights

    def detect(
        self, image_list: ImageList, maps: tuple[Tensor, ...], targets: list[Target] | None
    ) -> dict[str, Tensor] | Detections:
        levels = len(maps) // 3
        cls_maps, box_maps, ctr_maps = maps[:levels], maps[levels : 2 * levels], maps[2 * levels :]
        head_outputs = {
            "cls_logits": flatten_levels(cls_maps, self.net.head.classification_head.num_classes),
            "bbox_regression": flatten_levels(box_maps, 4),
            "bbox_ctrness": flatten_levels(ctr_maps, 1),
        }
        anchors = self.net.anchor_generator(image_list, list(cls_maps))
        if targets is not None:
            per_level = [m.size(2) * m.size(3) for m in cls_maps]
            return self.net.compute_loss(targets, head_outputs, anchors, per_level)
        split, split_anchors = _split_per_level(head_outputs, anchors, cls_maps)
        sizes = image_list.image_sizes
        return _drop_background(self.net.postprocess_detections(split, split_anchors, sizes))
