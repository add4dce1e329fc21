"""ONNX of a whole detector: images in, post-processed detections out (torchvision's boxes,
scores and labels after NMS), one image per call as torchvision's own ONNX support has it.

The core (what pruning changes) is exported by :func:`prunecli.structure.export_onnx`; this file
is the deployable end-to-end graph beside it.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from prunecli.errors import PrunecliError
from prunecli.models.detection.base import Detector

WHOLE_OUTPUTS = ("boxes", "scores", "labels")


class SingleImageDetections(nn.Module):
    """A detector as a graph of plain tensors: ``(1, 3, S, S)`` in [0, 1] -> boxes (K x 4,
    pixels, x1 y1 x2 y2), scores (K), labels (K, 1..num_classes)."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.detector(images)[0]
        return out["boxes"], out["scores"], out["labels"]


def export_whole_detector_onnx(detector: Detector, path: str | os.PathLike[str],
                               opset: int = 17, size: int | None = None) -> Path:
    """Export anchors, decoding and NMS with the network (TorchScript-based exporter), for
    square images of ``size`` (default: the detector's native size): the size it was trained
    at, since anchors and strides are traced for one size."""
    if importlib.util.find_spec("onnx") is None:
        raise PrunecliError("ONNX export needs the 'onnx' package: pip install onnx")
    path = Path(path)
    size = int(size or detector.input_size)
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    wrapper = SingleImageDetections(detector).eval()
    was_training = detector.training
    detector.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python scalars in box code
            torch.onnx.export(wrapper, (images,), str(path), input_names=["images"],
                              output_names=list(WHOLE_OUTPUTS), opset_version=opset,
                              dynamic_axes={n: {0: "detections"} for n in WHOLE_OUTPUTS},
                              dynamo=False)
    finally:
        detector.train(was_training)
    return path
