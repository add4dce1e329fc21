"""ImageNet and any other ``root/<split>/<class>/<image>`` dataset, read with ImageFolder.

The layout is checked before torchvision scans the folders, so a wrong ``data.root`` gives one
line naming the path and the expected layout instead of a FileNotFoundError deep in a walk.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunecli.config.schema import DataConfig
from prunecli.data.images import load_rgb, warn_left_out
from prunecli.data.registry import DATASETS, DatasetBundle, require_root, take_balanced
from prunecli.data.transforms import IMAGENET_MEAN, IMAGENET_STD, folder_transforms, output_stats
from prunecli.errors import DataError

log = logging.getLogger("prunecli")
DEFAULT_IMAGE_SIZE = 224
# the extensions torchvision's ImageFolder accepts (torchvision.datasets.folder.IMG_EXTENSIONS,
# copied so that checking a layout does not import torchvision; a test keeps them equal)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(path: str, other: Counter) -> bool:
    """ImageFolder's extension rule; a visible file in another format is counted in ``other``
    by its extension (a phone's ``.heic``, a ``.gif``), hidden ones (``.DS_Store``) ignored."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMG_EXTENSIONS:
        return True
    if not os.path.basename(path).startswith("."):
        other[ext or "no extension"] += 1
    return False


def visible_image_folder() -> type:
    """The class :class:`VisibleImageFolder`, defined on first use so that importing this module
    (and running ``prunecli list``) does not pay torchvision's ~1 s import. It is stored as a
    module-level name, so DataLoader workers started with ``spawn`` can unpickle it."""
    cls = globals().get("VisibleImageFolder")
    if cls is not None:
        return cls
    from torchvision.datasets import ImageFolder

    class VisibleImageFolder(ImageFolder):
        """ImageFolder that ignores hidden folders (``.ipynb_checkpoints``, ``.git``), which
        would otherwise become classes. ``classes``: label by these (the training split's),
        some of which may have no folder here."""

        def __init__(self, root: str, *args: Any, classes: Sequence[str] | None = None,
                     **kwargs: Any) -> None:
            self.given_classes = None if classes is None else list(classes)
            kwargs.setdefault("loader", load_rgb)  # PIL's, with 16-bit grey scaled, not clipped
            other = Counter()  # files in another format, left out: said, not silent
            if "is_valid_file" not in kwargs:
                kwargs["is_valid_file"] = functools.partial(is_image_file, other=other)
            super().__init__(root, *args, allow_empty=classes is not None, **kwargs)
            warn_left_out(root, "ImageFolder", other)

        def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
            classes = self.given_classes or class_folders(Path(directory))
            return classes, {c: i for i, c in enumerate(classes)}

    VisibleImageFolder.__qualname__ = "VisibleImageFolder"
    globals()["VisibleImageFolder"] = VisibleImageFolder
    return VisibleImageFolder


def __getattr__(name: str) -> Any:
    """``from prunecli.data.imagefolder import VisibleImageFolder`` (and unpickling) work."""
    if name == "VisibleImageFolder":
        return visible_image_folder()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``split_dir``."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def has_image(folder: Path) -> bool:
    """Whether ``folder`` holds at least one image file (recursively, stopping at the first)."""
    for _, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
            return True
    return False


def check_split(split_dir: Path, layout: str) -> list[str]:
    """The class names of one split, or a DataError if it has no classes or empty classes."""
    classes = class_folders(split_dir)
    if not classes:
        raise DataError(f"{split_dir} has no class folders; expected layout {layout}")
    empty = [c for c in classes if not has_image(split_dir / c)]
    if len(empty) == len(classes):
        raise DataError(
            f"{split_dir} has no images (extensions {', '.join(IMG_EXTENSIONS)}); "
            f"expected layout {layout}"
        )
    if empty:
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise DataError(
            f"class folder(s) without images in {split_dir}: {', '.join(empty[:5])}{more}; "
            f"expected layout {layout}"
        )
    return classes


def find_split(root: Path, names: Sequence[str], cfg: DataConfig) -> Path:
    """The first of ``root/<name>`` that exists, or a DataError naming all that were tried."""
    for name in names:
        if (root / name).is_dir():
            return root / name
    tried = ", ".join(f"{n}/" for n in names)
    raise DataError(
        f"no {names[0]} split in {root} (looked for {tried}); data={cfg.name} expects "
        f"{root}/{names[0]}/<class>/<image>.jpg"
    )


def load_folder_dataset(cfg: DataConfig, val_names: Sequence[str], what: str) -> DatasetBundle:
    """Both splits of an ImageFolder tree, with the ImageNet transforms and statistics."""
    root = require_root(cfg, what)
    train_dir = find_split(root, ["train"], cfg)
    val_dir = find_split(root, val_names, cfg)
    train_classes = check_split(train_dir, f"{root}/train/<class>/<image>.jpg")
    val_classes = check_split(val_dir, f"{root}/{val_dir.name}/<class>/<image>.jpg")
    only_val = sorted(set(val_classes) - set(train_classes))
    if only_val:
        only_train = sorted(set(train_classes) - set(val_classes))
        raise DataError(
            f"class folders differ between {train_dir} and {val_dir}: "
            f"only in train: {', '.join(only_train[:5]) or '-'}; "
            f"only in {val_dir.name}: {', '.join(only_val[:5])} (a model cannot predict a "
            "class it never trained on)"
        )
    missing = [c for c in train_classes if c not in val_classes]
    if missing:  # a rare class without validation images: labelled by train's classes
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        log.warning("%s has no folder for %d of the %d training classes (%s%s): they are not "
                    "validated", val_dir, len(missing), len(train_classes),
                    ", ".join(missing[:5]), more)

    size = cfg.image_size or DEFAULT_IMAGE_SIZE
    channels = cfg.channels or 3
    mean, std = output_stats(IMAGENET_MEAN, IMAGENET_STD, channels)
    tf = dict(hflip=cfg.hflip is not False, channels=channels, mean=mean, std=std)
    folder_cls = visible_image_folder()
    try:
        train = folder_cls(
            str(train_dir), transform=folder_transforms(size, train=cfg.augment, **tf)
        )
        val = folder_cls(str(val_dir), transform=folder_transforms(size, train=False, **tf),
                         classes=train.classes if missing else None)
    except (FileNotFoundError, OSError) as exc:  # raced with a change on disk, unreadable dir
        raise DataError(f"cannot read {root} as ImageFolder: {exc}") from None
    return DatasetBundle(
        train=take_balanced(train, train.targets, cfg.train_size),
        val=take_balanced(val, val.targets, cfg.val_size),
        num_classes=len(train.classes),
        channels=channels,
        image_size=size,
        class_names=list(train.classes),
        mean=mean,
        std=std,
    )


@DATASETS.register(
    "imagenet", "ImageNet (ILSVRC-2012) from data.root with train/ and val/ ImageFolder subfolders"
)
def imagenet(cfg: DataConfig) -> DatasetBundle:
    """ImageNet in the usual ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` layout."""
    return load_folder_dataset(cfg, ["val"], "a folder with train/ and val/ ImageFolder subfolders")


@DATASETS.register(
    "imagefolder",
    "any ImageFolder tree: data.root with train/<class>/ and val/ (or validation/, test/)",
)
def imagefolder(cfg: DataConfig) -> DatasetBundle:
    """Any classification dataset stored as one folder per class, with ImageNet statistics."""
    return load_folder_dataset(
        cfg,
        ["val", "validation", "test"],
        "a folder with train/ and val/ (or validation/, test/) ImageFolder subfolders",
    )
