"""Object detectors: torchvision's detection models behind one :class:`Detector` interface.

    det = build_model({"name": "ssd_tiny"}, num_classes=10)      # a Detector
    losses = det.train()(images, targets)                         # torchvision's loss dict
    detections = det.eval()(images)                               # boxes / scores / labels
    structure = trace_structure(det.core, det.normalise(images))  # what pruning sees

Families: ``ssd512_resnet50``, ``ssd300_resnet50`` and ``ssd_tiny`` (source ``prunecli``), and
torchvision's SSD, SSDlite, RetinaNet, FCOS and Faster R-CNN builders by name (source
``torchvision_det``). Importing this package registers the prunecli families without importing
torchvision (about 1.5 s): the adapters below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from prunecli.models.detection import resnet_ssd, tiny  # noqa: F401  (registers families)
from prunecli.models.detection.base import (
    Detector,
    DetectorCore,
    core_input,
    core_of,
    flatten_levels,
    is_detector,
    names_in_core,
)
from prunecli.models.detection.build import (
    build_detector,
    is_detector_config,
    native_input_size,
)
from prunecli.models.detection.recipes import lr_warning

_LAZY = {
    "SSDDetector": "ssd",
    "RetinaNetDetector": "dense",
    "FCOSDetector": "dense",
    "FasterRCNNDetector": "rcnn",
    "build_torchvision_detector": "torchvision_det",
    "torchvision_det_names": "torchvision_det",
    "unfreeze_batchnorm": "torchvision_det",
    "export_whole_detector_onnx": "export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Detector",
    "DetectorCore",
    "FCOSDetector",
    "FasterRCNNDetector",
    "RetinaNetDetector",
    "SSDDetector",
    "build_detector",
    "build_torchvision_detector",
    "core_input",
    "core_of",
    "export_whole_detector_onnx",
    "flatten_levels",
    "is_detector",
    "is_detector_config",
    "lr_warning",
    "names_in_core",
    "native_input_size",
    "torchvision_det_names",
    "unfreeze_batchnorm",
]
