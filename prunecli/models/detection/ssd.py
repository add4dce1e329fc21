"""The SSD-family adapter: one class for torchvision's ``SSD`` whatever its backbone and head.

It serves prunecli's ResNet-50 SSDs and ``ssd_tiny`` as well as torchvision's ``ssd300_vgg16``
and ``ssdlite320_mobilenet_v3_large``: all are a backbone returning a dict of maps and one
prediction module per level and per output (torchvision's ``SSDHead`` / ``SSDLiteHead`` keep them
in ``module_list``), so the core is ``backbone -> [cls_i(f_i)] + [box_i(f_i)]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.ops import boxes as box_ops

from prunecli.models.detection.base import (
    Detections,
    Detector,
    DetectorCore,
    Target,
    flatten_levels,
    last_conv,
)


class SSDCore(DetectorCore):
    """Outputs: the L class maps ``(N, A_i*(K+1), H_i, W_i)``, then the L box maps
    ``(N, A_i*4, H_i, W_i)``."""

    def __init__(self, net: SSD) -> None:
        super().__init__()
        self.backbone = net.backbone
        self.cls_heads = net.head.classification_head.module_list
        self.box_heads = net.head.regression_head.module_list
        self.levels = len(self.cls_heads)
        self.output_names = tuple(
            [f"cls_logits.{i}" for i in range(self.levels)]
            + [f"bbox_regression.{i}" for i in range(self.levels)]
        )
        self.final_convs = tuple(
            [last_conv(m, f"cls_heads.{i}") for i, m in enumerate(self.cls_heads)]
            + [last_conv(m, f"box_heads.{i}") for i, m in enumerate(self.box_heads)]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = self.backbone(x)
        feats = list(feats.values()) if isinstance(feats, dict) else [feats]
        cls = [self.cls_heads[i](f) for i, f in enumerate(feats)]
        box = [self.box_heads[i](f) for i, f in enumerate(feats)]
        return (*cls, *box)


class SSDDetector(Detector):
    """torchvision's ``SSD`` behind the :class:`Detector` interface; ``SSD.forward``'s steps
    with the transform left out and the head run through the core."""

    net: SSD

    def build_core(self, net: nn.Module) -> SSDCore:
        if not isinstance(net, SSD):
            raise TypeError(f"SSDDetector wraps a torchvision SSD, got {type(net).__name__}")
        return SSDCore(net)

    def class_layers(self) -> tuple[str, ...]:
        return ("net.head.classification_head",)

    def class_logits(self, maps: tuple[Tensor, ...]) -> tuple[Tensor, str]:
        columns = self.net.head.classification_head.num_columns  # K + 1, background first
        return flatten_levels(maps[: len(maps) // 2], columns), "softmax"

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
            "bbox_regression": flatten_levels(box_maps, 4),
            "cls_logits": flatten_levels(cls_maps, self.net.head.classification_head.num_columns),
        }
        # the head maps have the features' H, W: all the default box generator reads
        anchors = self.net.anchor_generator(image_list, list(cls_maps))
        if targets is None:
            return self.net.postprocess_detections(head_outputs, anchors, image_list.image_sizes)
        matched_idxs = []  # as SSD.forward: torchvision's matcher, -1 for images without boxes
        for anchors_per_image, target in zip(anchors, targets, strict=True):
            if target["boxes"].numel() == 0:
                matched_idxs.append(
                    torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                               device=anchors_per_image.device)
                )
                continue
            quality = box_ops.box_iou(target["boxes"], anchors_per_image)
            matched_idxs.append(self.net.proposal_matcher(quality))
        return self.net.compute_loss(targets, head_outputs, anchors, matched_idxs)


# ----------------------------------------------------------------------------- building

#: post-processing and matching arguments of torchvision's ``SSD`` that families pass through
SSD_OPTIONS = (
    "score_thresh", "nms_thresh", "detections_per_img", "topk_candidates", "iou_thresh",
    "positive_fraction",
)  # fmt: skip


def make_ssd(
    backbone: nn.Module,
    in_channels: Sequence[int],
    anchors: DefaultBoxGenerator,
    *,
    size: int,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    **options: Any,
) -> SSDDetector:
    """An :class:`SSDDetector` from a backbone (returning a dict of ``len(in_channels)`` maps):
    torchvision's ``SSDHead`` (3x3 convs) and ``SSD`` for ``num_classes`` objects + background."""
    head = SSDHead(list(in_channels), anchors.num_anchors_per_location(), num_classes + 1)
    net = SSD(
        backbone, anchors, (size, size), num_classes + 1, image_mean=list(mean),
        image_std=list(std), head=head, **options,
    )  # fmt: skip
    return SSDDetector(net, num_classes=num_classes, input_size=size)
