"""The Faster R-CNN adapter: torchvision's ``FasterRCNN`` with the backbone and RPN head as core.

The RPN and ROI heads are per-image and data dependent (proposal filtering, sampling, RoIAlign),
so the core stops at the FPN maps and the RPN head's per-level objectness and box deltas. The
FPN maps are core outputs because the ROI heads read them; that keeps the FPN output width
unprunable (the box head flattens it into a Linear the tracer cannot see from the core).
The rest is ``RegionProposalNetwork.forward`` and ``GeneralizedRCNN.forward`` with the RPN head
replaced by the core's outputs: torchvision's anchors, box coder, ``filter_proposals``,
``assign_targets_to_anchors``, ``compute_loss`` and ``roi_heads``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers

from prunecli.models.detection.base import (
    Detections,
    Detector,
    DetectorCore,
    Target,
    flatten_levels,
)


class FasterRCNNCore(DetectorCore):
    """Outputs: the L FPN maps ``(N, C, H_i, W_i)``, the L RPN objectness maps
    ``(N, A, H_i, W_i)``, then the L RPN box-delta maps ``(N, A*4, H_i, W_i)``."""

    final_convs = ("rpn_head.cls_logits", "rpn_head.bbox_pred")

    def __init__(self, net: FasterRCNN, feature_names: tuple[str, ...]) -> None:
        super().__init__()
        self.backbone = net.backbone
        self.rpn_head = net.rpn.head
        self.feature_names = feature_names
        self.output_names = tuple(
            [f"features.{n}" for n in feature_names]
            + [f"objectness.{i}" for i in range(len(feature_names))]
            + [f"bbox_deltas.{i}" for i in range(len(feature_names))]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = self.backbone(x)
        feats = list(feats.values()) if isinstance(feats, dict) else [feats]
        towers = [self.rpn_head.conv(f) for f in feats]
        objectness = [self.rpn_head.cls_logits(t) for t in towers]
        deltas = [self.rpn_head.bbox_pred(t) for t in towers]
        return (*feats, *objectness, *deltas)


def _feature_names(net: FasterRCNN) -> tuple[str, ...]:
    """The names of the backbone's maps (the ROI pooler selects levels by name), read from one
    forward with every weight swapped for a meta tensor: nothing is computed or touched."""
    backbone = net.backbone
    meta = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*backbone.named_parameters(), *backbone.named_buffers()]
    }
    with torch.no_grad():
        out = functional_call(backbone, meta, (torch.empty(1, 3, 64, 64, device="meta"),))
    return tuple(out.keys()) if isinstance(out, dict) else ("0",)


class FasterRCNNDetector(Detector):
    """torchvision's ``FasterRCNN`` behind the :class:`Detector` interface."""

    net: FasterRCNN
    size_divisible = 32
    class_loss_keys = ("loss_objectness",)  # the RPN's: what class_logits returns

    def build_core(self, net: nn.Module) -> FasterRCNNCore:
        if type(net) is not FasterRCNN:  # Mask/Keypoint R-CNN have heads the adapter skips
            raise TypeError(f"FasterRCNNDetector wraps a Faster R-CNN, got {type(net).__name__}")
        return FasterRCNNCore(net, _feature_names(net))

    def class_layers(self) -> tuple[str, ...]:
        return ("net.roi_heads.box_predictor",)

    def class_logits(self, maps: tuple[Tensor, ...]) -> tuple[Tensor, str]:
        """The RPN's objectness (one sigmoid per anchor): the ROI heads' class scores are not
        in the core (they run on pooled regions after proposal selection)."""
        levels = len(self.core.feature_names)
        return flatten_levels(maps[levels : 2 * levels], 1), "sigmoid"

    def box_regressions(self, maps: tuple[Tensor, ...]) -> Tensor:
        """The RPN's box deltas (the ROI head's lie outside the core)."""
        levels = len(self.core.feature_names)
        return flatten_levels(maps[2 * levels :], 4)

    def box_coder(self) -> Any:
        return self.net.rpn.box_coder

    def detect(
        self, image_list: ImageList, maps: tuple[Tensor, ...], targets: list[Target] | None
    ) -> dict[str, Tensor] | Detections:
        names = self.core.feature_names
        levels = len(names)
        feats = OrderedDict(zip(names, maps[:levels], strict=True))
        objectness_maps = list(maps[levels : 2 * levels])
        delta_maps = list(maps[2 * levels :])
        rpn = self.net.rpn
        # RegionProposalNetwork.forward from its head's outputs on
        anchors = rpn.anchor_generator(image_list, list(maps[:levels]))
        per_level = [o[0].numel() for o in objectness_maps]  # A * H * W
        objectness, deltas = concat_box_prediction_layers(objectness_maps, delta_maps)
        # proposals do not backpropagate into the deltas (as torchvision)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, image_list.image_sizes, per_level)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, targets)
            regression_targets = rpn.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = rpn.compute_loss(
                objectness, deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        detections, detector_losses = self.net.roi_heads(
            feats, boxes, image_list.image_sizes, targets
        )
        if targets is None:
            return detections
        return {**detector_losses, **losses}
