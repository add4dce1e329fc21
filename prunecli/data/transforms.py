"""Image transforms: tensor ops for in-memory datasets, torchvision v2 pipelines for files.

Small datasets (Fashion-MNIST, CIFAR) live in memory as one uint8 tensor; cropping, flipping and
normalising a 28x28 tensor directly costs microseconds, while a PIL round trip per image would
dominate an epoch. Datasets read from disk (ImageNet, any ImageFolder) decode JPEGs anyway, so
they use the standard torchvision v2 pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L") and v2.Grayscale use


def gray_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[float, float]:
    """Mean/std of the luma channel from RGB statistics (exact mean, approximate std)."""
    m = sum(w * v for w, v in zip(LUMA, mean, strict=True))
    s = sum(w * v for w, v in zip(LUMA, std, strict=True))
    return m, s


def output_stats(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel statistics after converting native ``mean``/``std`` to ``channels``."""
    if channels == len(mean):
        return tuple(mean), tuple(std)
    if channels == 3 and len(mean) == 1:  # gray repeated into RGB
        return (mean[0],) * 3, (std[0],) * 3
    if channels == 1 and len(mean) == 3:
        m, s = gray_stats(mean, std)
        return (m,), (s,)
    raise ValueError(f"cannot convert {len(mean)} channels to {channels}")


class TensorTransform:
    """uint8 ``CxHxW`` tensor -> normalised float32 tensor, with optional augmentation.

    Order: random crop with zero padding and flip on uint8 (cheap), then float, channel
    conversion, resize, normalise. Randomness comes from torch's global generator, which the
    DataLoader seeds differently in every worker.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        pad: int = 0,
        hflip: bool = False,
        channels: int | None = None,
        image_size: int | None = None,
    ) -> None:
        self.native_channels = len(mean)
        self.channels = channels or self.native_channels
        self.pad = pad
        self.hflip = hflip
        self.image_size = image_size
        out_mean, out_std = output_stats(mean, std, self.channels)
        # normalise before repeating gray into RGB: all three channels share one statistic
        n = 1 if self.channels == 3 and self.native_channels == 1 else self.channels
        self.mean = torch.tensor(out_mean[:n], dtype=torch.float32).view(n, 1, 1)
        self.std = torch.tensor(out_std[:n], dtype=torch.float32).view(n, 1, 1)
        self.luma = torch.tensor(LUMA, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Tensor) -> Tensor:
        if self.pad:
            img = random_crop(img, self.pad)
        if self.hflip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        x = img.to(torch.float32).div_(255.0)
        if self.channels == 1 and self.native_channels == 3:
            x = (x * self.luma).sum(0, keepdim=True)
        size = self.image_size
        if size is not None and (x.shape[-2] != size or x.shape[-1] != size):
            antialias = size < min(x.shape[-2:])
            x = F.interpolate(
                x[None],
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=antialias,
            )[0]
        x = x.sub_(self.mean).div_(self.std)
        if self.channels == 3 and self.native_channels == 1:
            x = x.repeat(3, 1, 1)  # a real copy: callers may modify the result in place
        return x

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pad={self.pad}, hflip={self.hflip}, "
            f"channels={self.channels}, image_size={self.image_size})"
        )


def random_crop(img: Tensor, pad: int) -> Tensor:
    """Crop of the original size at a random offset from the image zero-padded by ``pad``.

    Same result as ``RandomCrop(size, padding=pad)`` without materialising the padded image.
    """
    _, h, w = img.shape
    dy, dx = (torch.randint(0, 2 * pad + 1, (2,)) - pad).tolist()
    if dy == 0 and dx == 0:
        return img
    out = torch.zeros_like(img)
    # output rows [max(0,-dy), h-max(0,dy)) come from source rows shifted by dy
    out[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = img[
        :, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
    ]
    return out


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 ``NxCxHxW`` tensor, labels as int64."""

    def __init__(self, images: Tensor, labels: Tensor, transform: TensorTransform) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 NxCxHxW images, got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])

    @property
    def targets(self) -> list[int]:
        """Labels as a list, the attribute torchvision datasets and samplers look for."""
        return self.labels.tolist()


def folder_transforms(
    image_size: int,
    *,
    train: bool,
    hflip: bool,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Callable:
    """The standard ImageNet pipeline (a ``v2.Compose``) for PIL images read from disk.

    Train: RandomResizedCrop + optional horizontal flip. Eval: resize the short side to
    ``image_size / 0.875`` (256 for 224) and centre-crop.
    """
    from torchvision.transforms import v2  # ~1 s to import; only disk datasets need it

    ops: list[Callable] = []
    if train:
        ops.append(v2.RandomResizedCrop(image_size, antialias=True))
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
    else:
        ops += [v2.Resize(int(image_size / 0.875), antialias=True), v2.CenterCrop(image_size)]
    if channels == 1:
        ops.append(v2.Grayscale(num_output_channels=1))
    ops += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
        v2.ToPureTensor(),
    ]
    return v2.Compose(ops)
