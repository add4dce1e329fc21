"""What every detection dataset returns, and how its samples are batched.

A detection sample is ``(image, target)``:

- ``image``: float32 ``3 x S x S`` in [0, 1], already resized to the detector's input size ``S``
  (``data.image_size``). It is NOT normalised: each detector normalises with its own statistics
  (torchvision's pretrained detectors use different ones), see ``prunecli.models.detection``.
- ``target``: a dict with ``boxes`` (float32 ``M x 4``, ``x1, y1, x2, y2`` in pixels of the
  ``S x S`` image), ``labels`` (int64 ``M``, classes ``1..K``; 0 is the background),
  ``image_id`` (int, the sample's index in the detection dataset itself, under any
  ``Subset``) and ``orig_size`` (int64 ``[h, w]`` of the original image, to map detections back
  for evaluation). Training targets leave out the
  objects evaluation ignores (VOC ``difficult``, COCO ``iscrowd``).

Evaluation reads the ground truth in original coordinates from :meth:`DetectionDataset.ground_truth`
(no image decoding), so a metric never depends on how the images were resized.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from prunecli.metrics.types import ImageAnnotations

Target = dict[str, Any]


class DetectionDataset(Dataset, ABC):
    """Base of the detection datasets: ``class_names`` (K names, index i is label i + 1), samples
    as described in the module docstring, and the ground truth of every image."""

    class_names: list[str]

    @abstractmethod
    def __len__(self) -> int:
        ...

    @abstractmethod
    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        ...

    @abstractmethod
    def ground_truth(self, index: int) -> ImageAnnotations:
        """The annotations of sample ``index`` in original pixel coordinates, ignored objects
        included and flagged; ``image_id`` must equal ``index``."""
        ...


def detection_base(dataset: Dataset) -> tuple[DetectionDataset, list[int]]:
    """The detection dataset under any ``Subset`` wrappers, and the indices into it that
    ``dataset`` covers, in order. Targets carry ``image_id`` = that base index, so evaluation
    pairs detections with ``base.ground_truth(image_id)``."""
    indices: list[int] = list(range(len(dataset)))  # type: ignore[arg-type]
    base = dataset
    while isinstance(base, Subset):
        indices = [int(base.indices[i]) for i in indices]
        base = base.dataset
    if not hasattr(base, "ground_truth"):
        raise TypeError(f"{type(base).__name__} is not a detection dataset")
    return base, indices  # type: ignore[return-value]


def collate_detection(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, list[Target]]:
    """Stack the (equal-size) images into one ``N x 3 x S x S`` tensor; targets stay a list."""
    images = torch.stack([img for img, _ in batch])
    return images, [t for _, t in batch]
