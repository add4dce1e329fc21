"""Fashion-MNIST subset embedded in the package: the default dataset, usable offline.

``embedded/fashion_mnist_20k_4k.xz`` (built by ``tools/make_embedded_dataset.py``) holds the
first 2,000 training and 400 test images of each class as uint8. It is decompressed once per
process (about half a second) and kept as uint8 tensors; datasets index into them.
"""

from __future__ import annotations

import functools
import json
import lzma
import struct
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from prunecli.config.schema import DataConfig
from prunecli.data.registry import DATASETS, DatasetBundle, balanced_order
from prunecli.data.transforms import TensorImageDataset, TensorTransform, output_stats
from prunecli.errors import ConfigError, DataError

EMBEDDED_FILE = "fashion_mnist_20k_4k.xz"
MAGIC = b"PRUNECLI-ARRAYS\x00"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# of the 20,000 embedded training images scaled to [0, 1] (printed by the make script, checked
# against the data by the tests)
FASHION_MNIST_MEAN = (0.2861,)
FASHION_MNIST_STD = (0.3533,)


def read_arrays(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Decode the make script's format: xz( magic | u32 header length | JSON header | arrays )."""
    try:
        raw = lzma.decompress(blob)
    except lzma.LZMAError as exc:
        raise DataError(f"embedded dataset is corrupt ({exc}); reinstall prunecli") from None
    if not raw.startswith(MAGIC):
        raise DataError("embedded dataset has an unknown format; reinstall prunecli")
    (n,) = struct.unpack_from("<I", raw, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(raw[start : start + n])
    offset = start + n
    arrays: dict[str, np.ndarray] = {}
    for spec in header["arrays"]:
        dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
        count = int(np.prod(shape))
        arrays[spec["name"]] = np.frombuffer(raw, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
    if offset != len(raw):
        raise DataError("embedded dataset has trailing bytes; reinstall prunecli")
    return header, arrays


@functools.lru_cache(maxsize=1)
def load_fashion_mnist() -> dict[str, Tensor]:
    """Decompress the embedded subset once per process: uint8 ``Nx1x28x28`` images and int64
    labels per split, in class-interleaved order so any prefix is balanced."""
    path = resources.files("prunecli.data") / "embedded" / EMBEDDED_FILE
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"embedded dataset {path} is missing; reinstall prunecli "
            f"(or run tools/make_embedded_dataset.py in a source checkout)"
        ) from None
    _, arrays = read_arrays(blob)
    out: dict[str, Tensor] = {}
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        order = balanced_order(labels)
        # fancy indexing copies into a writable array, which torch needs
        out[f"{split}_images"] = torch.from_numpy(arrays[f"{split}_images"][order][:, None])
        out[f"{split}_labels"] = torch.from_numpy(labels[order].astype(np.int64))
    return out


HOLDOUT = 2000  # training images held out by ``data.val_split=holdout``


@DATASETS.register(
    "fashion_mnist",
    "Fashion-MNIST, 20k train / 4k test class-balanced subset embedded in the package (default)",
)
def fashion_mnist(cfg: DataConfig) -> DatasetBundle:
    """The embedded Fashion-MNIST subset. Augmentation is a shift of up to 2 pixels; flipping is
    off unless ``data.hflip=true``, the usual recipe for this data (centred, fixed-pose items).
    ``data.val_split=holdout`` validates on the last 2,000 training images (trained on the
    other 18,000): where to choose hyperparameters without looking at the test images."""
    data = load_fashion_mnist()
    channels = cfg.channels or 1
    mean, std = output_stats(FASHION_MNIST_MEAN, FASHION_MNIST_STD, channels)
    common = dict(channels=channels, image_size=cfg.image_size)
    train_tf = TensorTransform(
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
        pad=2 if cfg.augment else 0,
        hflip=bool(cfg.augment and cfg.hflip),
        **common,
    )
    val_tf = TensorTransform(FASHION_MNIST_MEAN, FASHION_MNIST_STD, **common)
    n_train, n_val = cfg.train_size, cfg.val_size
    images, labels = data["train_images"], data["train_labels"]
    val_split = cfg.val_split or "test"
    if val_split not in ("test", "holdout") or cfg.train_split not in (None, "train"):
        raise ConfigError(f"data=fashion_mnist has the splits train, and test or holdout for "
                          f"validation; got train_split={cfg.train_split}, val_split={val_split}")
    if val_split == "holdout":  # tune on the last 2,000 training images, never on the test set
        cut = len(labels) - HOLDOUT
        val_images, val_labels = images[cut:], labels[cut:]
        images, labels = images[:cut], labels[:cut]
    else:
        val_images, val_labels = data["test_images"], data["test_labels"]
    train = TensorImageDataset(images[:n_train], labels[:n_train], train_tf)
    val = TensorImageDataset(val_images[:n_val], val_labels[:n_val], val_tf)
    return DatasetBundle(
        train=train,
        val=val,
        num_classes=len(FASHION_MNIST_CLASSES),
        channels=channels,
        image_size=cfg.image_size or 28,
        class_names=list(FASHION_MNIST_CLASSES),
        mean=mean,
        std=std,
    )
