"""Model registry: prunecli's own CIFAR/ImageNet families and detectors, plus torchvision's
classifiers and detectors and timm's models by name.

Importing this package registers every prunecli family in :data:`MODELS`; torchvision and timm
are imported only when a model from them is built or listed.
"""

from __future__ import annotations

from prunecli.models import cifar_resnet, detection, mobilenet_v1, vgg  # noqa: F401  (registers)
from prunecli.models.registry import (
    MODELS,
    SOURCES,
    architecture,
    build_model,
    describe_models,
)
from prunecli.models.weights import load_weights

__all__ = [
    "MODELS",
    "SOURCES",
    "architecture",
    "build_model",
    "describe_models",
    "load_weights",
]
