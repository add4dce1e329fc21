"""Random images for tests and smoke runs: no files, no download, same data on every run.

Each image is generated from its own seed when it is read, so the dataset costs no memory, is
identical in every process and worker, and any size works.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from prunecli.config.schema import DataConfig
from prunecli.data.registry import DATASETS, DatasetBundle

FAKE_MEAN = 0.5  # uniform 0..255 scaled to [0, 1]
FAKE_STD = 0.2898  # sqrt((256**2 - 1) / 12) / 255


class FakeImages(Dataset):
    """``size`` uniform random images; image ``i`` is seeded by ``(seed, i)``, label is
    ``i % num_classes`` (so every prefix is class-balanced, like the real datasets)."""

    def __init__(
        self, size: int, num_classes: int, channels: int, image_size: int, seed: int
    ) -> None:
        self.size = size
        self.num_classes = num_classes
        self.shape = (channels, image_size, image_size)
        self.seed = seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} fake images")
        index %= self.size
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        img = torch.randint(0, 256, self.shape, generator=gen, dtype=torch.uint8)
        x = img.to(torch.float32).div_(255.0).sub_(FAKE_MEAN).div_(FAKE_STD)
        return x, index % self.num_classes

    @property
    def targets(self) -> list[int]:
        return [i % self.num_classes for i in range(self.size)]


@DATASETS.register("fake", "random images for tests and smoke runs (deterministic, no files)")
def fake(cfg: DataConfig) -> DatasetBundle:
    """Sizes from data.train_size/val_size (256/64), num_classes (10), image_size (32),
    channels (3); no augmentation, so every read of an index returns the same tensor."""
    num_classes = cfg.num_classes or 10
    channels = cfg.channels or 3
    size = cfg.image_size or 32
    return DatasetBundle(
        train=FakeImages(cfg.train_size or 256, num_classes, channels, size, seed=1),
        val=FakeImages(cfg.val_size or 64, num_classes, channels, size, seed=2),
        num_classes=num_classes,
        channels=channels,
        image_size=size,
        class_names=[f"class_{i}" for i in range(num_classes)],
        mean=(FAKE_MEAN,) * channels,
        std=(FAKE_STD,) * channels,
    )
