"""Datasets by name: ``build_datasets(cfg)`` returns train/val datasets plus their metadata.

Importing this package registers every dataset (the modules below register on import). Loaders
and samplers are the engine's job; this package only builds datasets that return
``(float32 normalised CxHxW tensor, int label)``.
"""

from __future__ import annotations

from prunecli.data import (  # noqa: F401  (registration)
    cifar,
    coco,
    embedded,
    fake,
    fashion_det,  # noqa: F401  (registration; the detection demo)
    imagefolder,
    voc,
    yolo,
)
from prunecli.data.registry import (
    DATASETS,
    DatasetBundle,
    balanced_order,
    build_datasets,
    describe_datasets,
)

__all__ = [
    "DATASETS",
    "DatasetBundle",
    "balanced_order",
    "build_datasets",
    "describe_datasets",
]
