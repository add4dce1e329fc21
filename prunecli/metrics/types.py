"""Ground truth and detections of one image, the plain records every detection metric reads.

Both are in the image's ORIGINAL pixel coordinates (boxes ``x1, y1, x2, y2``), so COCO's area
ranges (small < 32^2 < medium < 96^2 < large) mean what they mean in the papers. Labels are the
dataset's contiguous class indices ``1..K`` (0 is the background and never appears here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


def _boxes(value: object) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).reshape(-1, 4)


@dataclass
class ImageAnnotations:
    """The ground truth of one image.

    ``ignore`` marks objects that neither count as misses nor make a matching detection a false
    positive: VOC's ``difficult`` objects and COCO's ``iscrowd`` regions. ``areas`` is COCO's
    annotation area (the segment's, not the box's); None means the box areas.
    """

    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    areas: Optional[np.ndarray] = None
    source_id: Optional[int] = None  # the id in the source annotation file (COCO's image id)

    def __post_init__(self) -> None:
        self.boxes = _boxes(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if self.ignore is None or (len(self.ignore) == 0 and n > 0):
            self.ignore = np.zeros(n, dtype=bool)  # nothing ignored
        self.ignore = np.asarray(self.ignore, dtype=bool).reshape(-1)
        if self.areas is not None:
            self.areas = np.asarray(self.areas, dtype=np.float64).reshape(-1)
        if len(self.labels) != n or len(self.ignore) != n or (
                self.areas is not None and len(self.areas) != n):
            raise ValueError(f"image {self.image_id}: boxes, labels, ignore and areas must have "
                             "the same length")


@dataclass
class ImageDetections:
    """A detector's output for one image: boxes, confidence scores and labels ``1..K``."""

    image_id: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = _boxes(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(f"image {self.image_id}: boxes, scores and labels must have the "
                             "same length")
