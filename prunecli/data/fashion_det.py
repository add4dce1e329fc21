"""An embedded detection dataset: scenes composed from the embedded Fashion-MNIST items.

Each scene is a ``canvas x canvas`` grey image (96 px by default) with 1-4 real Fashion-MNIST
items, each scaled by 0.8-1.6 (objects of about 12-45 px) and placed at random without
overlapping much (IoU <= 0.2), on a faint noise texture. A box is the item's tight box (its
pixels above a threshold in the 28x28 original) mapped through the scale and offset, so boxes are
exact by construction; the class is the item's. Everything follows from the seed: the layout of
every scene is drawn once at construction (milliseconds), and pixels are rendered when a scene is
read, so nothing is stored and no file is written.

Splits: ``train`` scenes use the embedded training items and ``test`` scenes the test items, so
no item appears in both. ``data.val_split=holdout`` instead scores on scenes made of the last
10% of the training items (left out of the training scenes): choose hyperparameters there, and
report on ``test``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prunecli.config.schema import DataConfig
from prunecli.data.detection import DetectionDataset, Target
from prunecli.data.embedded import FASHION_MNIST_CLASSES, load_fashion_mnist
from prunecli.data.registry import DATASETS, DatasetBundle
from prunecli.errors import ConfigError
from prunecli.metrics.types import ImageAnnotations

CANVAS = 96
TRAIN_SCENES, VAL_SCENES = 8000, 1000
SCALE_RANGE = (0.8, 1.6)
MAX_ITEMS = 4
MAX_OVERLAP = 0.2  # IoU between two items' boxes in one scene
INK = 16  # an item pixel at or above this (of 255) belongs to the object's box
NOISE = 24  # background texture amplitude (of 255)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(others) - inter)


def item_boxes(images: Tensor) -> np.ndarray:
    """Tight boxes ``x1, y1, x2, y2`` (continuous pixel edges) of the ink of 28x28 items."""
    ink = images[:, 0].numpy() >= INK
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    first = lambda m: m.argmax(axis=1)  # noqa: E731
    last = lambda m: m.shape[1] - m[:, ::-1].argmax(axis=1)  # noqa: E731
    return np.stack([first(cols), first(rows), last(cols), last(rows)], axis=1).astype(np.float64)


class FashionScenes(DetectionDataset):
    """Scenes of ``items`` (uint8 Nx1x28x28 with ``labels`` 0..9) drawn from ``pool`` indices."""

    def __init__(self, items: Tensor, labels: Tensor, pool: np.ndarray, scenes: int, *,
                 seed: int, size: int, canvas: int = CANVAS, hflip: bool = False) -> None:
        self.items, self.labels = items, labels
        self.class_names = list(FASHION_MNIST_CLASSES)
        self.size, self.canvas, self.hflip = size, canvas, hflip
        self.item_box = item_boxes(items)
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.layouts = [self._layout(rng, pool) for _ in range(scenes)]

    def _layout(self, rng: np.random.Generator, pool: np.ndarray) -> np.ndarray:
        """Rows ``item, scale, x0, y0`` (the scaled 28x28 patch's top-left corner)."""
        placed: list[list[float]] = []
        boxes: list[np.ndarray] = []
        for _ in range(int(rng.integers(1, MAX_ITEMS + 1))):
            item = int(pool[rng.integers(len(pool))])
            for _try in range(20):
                scale = float(rng.uniform(*SCALE_RANGE))
                side = int(round(28 * scale))
                x0, y0 = (int(v) for v in rng.integers(0, self.canvas - side + 1, size=2))
                box = self.item_box[item] * side / 28 + [x0, y0, x0, y0]
                if not boxes or _iou(box, np.stack(boxes)).max() <= MAX_OVERLAP:
                    placed.append([item, side / 28, x0, y0])
                    boxes.append(box)
                    break
        return np.asarray(placed, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.layouts)

    def _boxes(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        layout = self.layouts[index]
        items = layout[:, 0].astype(np.int64)
        boxes = self.item_box[items] * layout[:, 1:2] + np.tile(layout[:, 2:4], 2)
        return boxes, self.labels[items].numpy() + 1

    def ground_truth(self, index: int) -> ImageAnnotations:
        boxes, labels = self._boxes(index)
        return ImageAnnotations(index, self.canvas, self.canvas, boxes, labels)

    def render(self, index: int) -> Tensor:
        """The scene as a uint8 ``1 x canvas x canvas`` tensor."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        scene = torch.randint(0, NOISE, (1, 1, self.canvas // 4, self.canvas // 4),
                              generator=gen).float()
        scene = F.interpolate(scene, size=(self.canvas, self.canvas), mode="bilinear")[0]
        for item, scale, x0, y0 in self.layouts[index]:
            side = int(round(28 * scale))
            patch = F.interpolate(self.items[int(item)][None].float(), size=(side, side),
                                  mode="bilinear", antialias=scale < 1)[0]
            x, y = int(x0), int(y0)
            region = scene[:, y:y + side, x:x + side]
            region.copy_(torch.maximum(region, patch))
        return scene.round().clamp(0, 255).to(torch.uint8)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image = self.render(index).float().div_(255)
        boxes, labels = self._boxes(index)
        boxes_t = torch.as_tensor(boxes, dtype=torch.float32)
        if self.size != self.canvas:
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear",
                                  antialias=self.size < self.canvas)[0]
            boxes_t *= self.size / self.canvas
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes_t = torch.stack([self.size - boxes_t[:, 2], boxes_t[:, 1],
                                   self.size - boxes_t[:, 0], boxes_t[:, 3]], dim=1)
        target = {"boxes": boxes_t, "labels": torch.as_tensor(labels, dtype=torch.int64),
                  "image_id": index,
                  "orig_size": torch.tensor([self.canvas, self.canvas], dtype=torch.int64)}
        return image.expand(3, -1, -1).contiguous(), target


@DATASETS.register("fashion_det", "embedded detection demo: scenes of Fashion-MNIST items with "
                                  "their boxes (8k train / 1k test, 96x96, no download)")
def fashion_det(cfg: DataConfig) -> DatasetBundle:
    """The embedded detection demo; ``train_size``/``val_size`` set the number of scenes,
    ``image_size`` the input size (scenes are drawn at 96 and resized), ``hflip`` (default on)
    the training flip, ``val_split`` ``test`` (default) or ``holdout``."""
    if cfg.channels not in (None, 3):
        raise ConfigError("data=fashion_det makes 3-channel scenes; leave data.channels unset")
    val_split = cfg.val_split or "test"
    if val_split not in ("test", "holdout") or cfg.train_split not in (None, "train"):
        raise ConfigError(f"data=fashion_det has the splits train, and test or holdout for "
                          f"validation; got train_split={cfg.train_split}, val_split={val_split}")
    data = load_fashion_mnist()
    size = cfg.image_size or CANVAS
    n_train = len(data["train_labels"])
    cut = n_train - n_train // 10 if val_split == "holdout" else n_train
    train = FashionScenes(data["train_images"], data["train_labels"], np.arange(cut),
                          cfg.train_size or TRAIN_SCENES, seed=1, size=size,
                          hflip=bool(cfg.augment and (cfg.hflip is None or cfg.hflip)))
    if val_split == "holdout":
        val = FashionScenes(data["train_images"], data["train_labels"], np.arange(cut, n_train),
                            cfg.val_size or VAL_SCENES, seed=3, size=size)
    else:
        test_labels = data["test_labels"]
        val = FashionScenes(data["test_images"], test_labels, np.arange(len(test_labels)),
                            cfg.val_size or VAL_SCENES, seed=2, size=size)
    return DatasetBundle(train=train, val=val, num_classes=len(FASHION_MNIST_CLASSES),
                         channels=3, image_size=size, class_names=list(FASHION_MNIST_CLASSES),
                         mean=(0.0,) * 3, std=(1.0,) * 3, task="detection")
