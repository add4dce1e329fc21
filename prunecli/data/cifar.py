"""CIFAR-10 and CIFAR-100 from a local copy of the official python-pickle release.

Nothing is downloaded: ``data.root`` must hold the extracted archive. The arrays are read with
torchvision's CIFAR classes and then served from memory with tensor transforms
(:class:`~prunecli.data.transforms.TensorImageDataset`): crop + flip + normalise takes ~22 us
per image, against ~70-110 us for torchvision's per-image PIL path (measured on this CPU).
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunecli.config.schema import DataConfig
from prunecli.data.registry import DATASETS, DatasetBundle, require_root, take_balanced
from prunecli.data.transforms import TensorImageDataset, TensorTransform, output_stats
from prunecli.errors import DataError


@dataclass(frozen=True)
class CifarSpec:
    """What one CIFAR variant looks like on disk (as in torchvision's CIFAR10/CIFAR100)."""

    pretty: str
    torchvision_class: str
    base_folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    meta_key: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def files(self) -> list[str]:
        return [*self.train_files, *self.test_files, self.meta_file]


CIFAR10 = CifarSpec(
    pretty="CIFAR-10",
    torchvision_class="CIFAR10",
    base_folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    meta_key="label_names",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarSpec(
    pretty="CIFAR-100",
    torchvision_class="CIFAR100",
    base_folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    meta_key="fine_label_names",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


@functools.cache
def local_class(name: str) -> type:
    """torchvision's ``CIFAR10``/``CIFAR100`` checking that the files exist but not their md5:
    hashing 170 MB on every start is slow, and a truncated or foreign file fails to unpickle
    anyway. Built on first use so importing this module does not import torchvision."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name)

    class Local(cls):  # type: ignore[misc, valid-type]
        train_list = [[f, None] for f, _ in cls.train_list]
        test_list = [[f, None] for f, _ in cls.test_list]
        meta = {**cls.meta, "md5": None}

        def __init__(self, root: str, train: bool, base_folder: str) -> None:
            self.base_folder = base_folder  # "" when root is the extracted folder itself
            super().__init__(root, train=train, download=False)

    Local.__name__ = Local.__qualname__ = f"Local{name}"
    return Local


def _locate(cfg: DataConfig, spec: CifarSpec) -> tuple[Path, str]:
    """``(root, base_folder)`` for torchvision: accept the parent of the extracted folder or the
    extracted folder itself (whatever its name)."""
    what = f"the folder holding {spec.base_folder}/ (the python version of {spec.pretty})"
    root = require_root(cfg, what)
    for base in (spec.base_folder, ""):
        if all((root / base / f).is_file() for f in spec.files):
            return root, base
    folder = root / spec.base_folder if (root / spec.base_folder).is_dir() else root
    missing = [f for f in spec.files if not (folder / f).is_file()]
    raise DataError(
        f"{spec.pretty} files missing in {folder}: {', '.join(missing)}; expected "
        f"{spec.base_folder}/ with {', '.join(spec.files)} (the python version from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html, extracted; nothing is downloaded)"
    )


def _read_split(
    spec: CifarSpec, root: Path, base: str, train: bool
) -> tuple[np.ndarray, list[int], list[str]]:
    """HWC uint8 images, labels and class names of one split."""
    errors = (pickle.UnpicklingError, EOFError, ValueError, OSError, RuntimeError, TypeError)
    try:
        try:
            ds = local_class(spec.torchvision_class)(str(root), train=train, base_folder=base)
            return ds.data, list(ds.targets), list(ds.classes)
        except KeyError:  # re-pickled by Python 3 with bytes keys (b"data", b"labels")
            return _read_bytes_keys(spec, root / base, train)
    except KeyError as exc:
        raise DataError(f"cannot read {spec.pretty} from {root / base}: no key {exc}") from None
    except errors as exc:
        raise DataError(f"cannot read {spec.pretty} from {root / base}: {exc}") from None


def _read_bytes_keys(
    spec: CifarSpec, folder: Path, train: bool
) -> tuple[np.ndarray, list[int], list[str]]:
    """Fallback for files whose dict keys are bytes: same content as the official layout."""

    def load(name: str) -> dict[str, object]:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}

    data, targets = [], []
    for name in spec.train_files if train else spec.test_files:
        entry = load(name)
        data.append(np.asarray(entry["data"], dtype=np.uint8))
        targets += list(entry["labels"] if "labels" in entry else entry["fine_labels"])
    classes = [
        c.decode() if isinstance(c, bytes) else c for c in load(spec.meta_file)[spec.meta_key]
    ]
    images = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, targets, classes


def load_cifar(cfg: DataConfig, spec: CifarSpec) -> DatasetBundle:
    """Both splits in memory; train augmentation: RandomCrop(32, padding=4) + horizontal flip."""
    root, base = _locate(cfg, spec)
    mean, std = spec.mean, spec.std
    channels = cfg.channels or 3
    common = dict(channels=channels, image_size=cfg.image_size)
    train_tf = TensorTransform(
        mean,
        std,
        pad=4 if cfg.augment else 0,
        hflip=cfg.augment and cfg.hflip is not False,
        **common,
    )
    val_tf = TensorTransform(mean, std, **common)
    splits = []
    classes: list[str] = []
    for train, tf, size in ((True, train_tf, cfg.train_size), (False, val_tf, cfg.val_size)):
        images, labels, classes = _read_split(spec, root, base, train)
        if len(images) != len(labels):
            raise DataError(
                f"{spec.pretty} in {root / base}: {len(images)} images, {len(labels)} labels"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        ds = TensorImageDataset(tensor, torch.as_tensor(labels, dtype=torch.int64), tf)
        splits.append(take_balanced(ds, labels, size))
    out_mean, out_std = output_stats(mean, std, channels)
    return DatasetBundle(
        train=splits[0],
        val=splits[1],
        num_classes=len(classes),
        channels=channels,
        image_size=cfg.image_size or 32,
        class_names=classes,
        mean=out_mean,
        std=out_std,
    )


@DATASETS.register("cifar10", "CIFAR-10 from data.root (official python version, no download)")
def cifar10(cfg: DataConfig) -> DatasetBundle:
    """CIFAR-10: 50k train / 10k test 32x32 RGB images, 10 classes."""
    return load_cifar(cfg, CIFAR10)


@DATASETS.register("cifar100", "CIFAR-100 from data.root (official python version, no download)")
def cifar100(cfg: DataConfig) -> DatasetBundle:
    """CIFAR-100: 50k train / 10k test 32x32 RGB images, 100 fine classes."""
    return load_cifar(cfg, CIFAR100)
