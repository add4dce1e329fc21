"""Pascal VOC, or any dataset in VOC's layout, from a local folder (nothing is downloaded).

``data.root`` is either a VOCdevkit folder (``VOC2007/``, ``VOC2012/``, each with
``Annotations/``, ``ImageSets/Main/``, ``JPEGImages/``; its parent, holding ``VOCdevkit/``, is
accepted too), one VOC-format folder with those three sub-folders (a user's own data), or one
folder per split with each image's XML beside it (Roboflow's Pascal VOC export: ``train/``,
``valid/``, ``test/``; labelImg's output sorted into split folders).
Splits are ``YEAR/SET`` joined by ``+`` in a devkit (default ``2007/trainval+2012/trainval`` for
training, ``2007/test`` for validation, the usual VOC07+12 protocol), ``SET`` names of
``ImageSets/Main/<SET>.txt`` in a single folder (default ``trainval`` and ``test``), and folder
names in split folders (default ``train``, and ``valid``, ``val`` or ``test``, the first found).

Every XML of both splits is parsed when the dataset is built (VOC07+12: ~21k files, a few
seconds), so a missing or broken file is reported at once instead of in a DataLoader worker
hours into training.

Boxes: the devkit's pixel boxes are 1-based and inclusive; they become continuous coordinates
``(xmin - 1, ymin - 1, xmax, ymax)``, whose areas are the devkit's ``(w + 1) (h + 1)`` and whose
IoU is the devkit's. ``difficult`` objects stay in the ground truth flagged ``ignore`` (VOC's
evaluation neither rewards nor punishes detecting them) and are left out of training targets,
as SSD's training code does.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunecli.config.schema import DataConfig
from prunecli.data.detection_files import (
    IMAGE_EXTENSIONS,
    ImageEntry,
    check_detection_config,
    detection_bundle,
    list_files,
)
from prunecli.data.registry import DATASETS, DatasetBundle, require_root
from prunecli.errors import ConfigError, DataError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
DEVKIT_SPLITS = ("2007/trainval+2012/trainval", "2007/test")
FOLDER_SPLITS = ("trainval", "test")
SUBFOLDERS = "Annotations/, ImageSets/Main/, JPEGImages/"
WHAT = (f"a VOCdevkit folder (VOC2007/, VOC2012/), a VOC-format folder with {SUBFOLDERS}, or "
        "split folders (train/, valid/) of images with their XMLs")
YEAR_FOLDER = re.compile(r"VOC\d{4}")


SPLIT_FOLDER_DEFAULTS = (("train",), ("valid", "val", "test"))


@dataclass(frozen=True)
class VocLayout:
    """Where the data is: ``base`` is the VOCdevkit folder, the single VOC-format folder, or
    (``split_folders``) the folder holding one folder of images and XMLs per split."""

    base: Path
    devkit: bool
    split_folders: bool = False


def locate(cfg: DataConfig) -> VocLayout:
    """Tell a VOCdevkit (or its parent) from a single VOC-format folder and split folders."""
    root = require_root(cfg, WHAT)
    for base in (root, root / "VOCdevkit"):
        if base.is_dir() and any(YEAR_FOLDER.fullmatch(p.name) for p in base.iterdir()):
            return VocLayout(base, devkit=True)
        if any((base / sub).is_dir() for sub in ("Annotations", "ImageSets", "JPEGImages")):
            return VocLayout(base, devkit=False)
    if any(next(p.glob("*.xml"), None) for p in root.iterdir() if p.is_dir()):
        return VocLayout(root, devkit=False, split_folders=True)
    raise DataError(f"data.root={root} holds neither VOC<year>/ folders nor {SUBFOLDERS}, nor "
                    f"split folders of images with their XMLs; data={cfg.name} expects {WHAT}")


def default_splits(layout: VocLayout) -> tuple[str, str]:
    """The training and validation splits when none is given."""
    if layout.devkit:
        return DEVKIT_SPLITS
    if not layout.split_folders:
        return FOLDER_SPLITS
    train, val = ((next((n for n in names if (layout.base / n).is_dir()), names[0]))
                  for names in SPLIT_FOLDER_DEFAULTS)
    return train, val


def read_split_folder(layout: VocLayout, split: str, key: str) -> list[ImageEntry]:
    """Split folders: every ``<name>.xml`` of ``<split>/`` with the image of the same name."""
    entries = []
    for part in (p.strip() for p in split.split("+")):
        folder = layout.base / part
        if not part or "/" in part or not folder.is_dir():
            found = sorted(p.name for p in layout.base.iterdir()
                           if p.is_dir() and next(p.glob("*.xml"), None))
            raise DataError(f"no split folder {folder} for data.{key}={split}; {layout.base} "
                            f"has split folders {', '.join(found)} (set data.{key})")
        files = list_files(folder)
        xmls = sorted(n for n in files if n.endswith(".xml"))
        if not xmls:
            raise DataError(f"{folder} holds no .xml annotation; data=voc expects each image's "
                            "VOC XML beside it (<name>.jpg and <name>.xml)")
        for name in xmls:
            stem = name[: -len(".xml")]
            image = next((stem + ext for ext in IMAGE_EXTENSIONS if stem + ext in files), None)
            if image is None:
                raise DataError(f"{folder / name} has no image beside it ({stem}.jpg or "
                                f"{stem}.png); data=voc expects <name>.jpg with <name>.xml")
            entries.append(parse_annotation(folder / name, folder / image))
    return entries


def split_parts(layout: VocLayout, split: str, key: str) -> list[tuple[Path, str]]:
    """``(folder holding ImageSets/, set name)`` for each ``+``-joined part of a split."""
    parts = [p.strip() for p in split.split("+")]
    out = []
    for part in parts:
        if layout.devkit:
            year, _, set_name = part.partition("/")
            if not year or not set_name or "/" in set_name:
                raise ConfigError(
                    f"data.{key}={split!r}: a VOCdevkit split is YEAR/SET parts joined by '+', "
                    f"e.g. {DEVKIT_SPLITS[0]} or {DEVKIT_SPLITS[1]}"
                )
            folder = layout.base / f"VOC{year.removeprefix('VOC')}"
            if not folder.is_dir():
                raise DataError(
                    f"{folder} is missing; data.{key}={split} expects it with {SUBFOLDERS} in "
                    f"the VOCdevkit {layout.base} (set data.{key} to the years you have)"
                )
        else:
            if not part or "/" in part:
                raise ConfigError(
                    f"data.{key}={split!r}: {layout.base} is a single VOC-format folder, so a "
                    "split names files of ImageSets/Main joined by '+', e.g. trainval or test"
                )
            folder, set_name = layout.base, part
        out.append((folder, set_name))
    return out


def read_ids(folder: Path, set_name: str, key: str, split: str, defaulted: bool) -> list[str]:
    """The image ids listed in ``ImageSets/Main/<set_name>.txt``."""
    path = folder / "ImageSets" / "Main" / f"{set_name}.txt"
    if not path.is_file():
        how = (f"by default data.{key} is {split}; add the file or set data.{key} to a list "
               "that exists in ImageSets/Main" if defaulted else f"data.{key}={split}")
        sets = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        found = f"; lists there: {', '.join(sets)}" if sets else ""
        raise DataError(f"{path} is missing; data=voc expects ImageSets/Main/{set_name}.txt "
                        f"listing the image ids of the split ({how}){found}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path} lists no image ids; data=voc expects one image id per line")
    return ids


def _number(obj: ET.Element, tag: str, where: str) -> float:
    text = obj.findtext(tag)
    if text is None:
        raise DataError(f"{where} has no <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}> is {text.strip()!r}, not a number") from None


def parse_annotation(xml: Path, image: Path) -> ImageEntry:
    """One VOC XML file, boxes mapped to continuous coordinates."""
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{xml} is not valid XML: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read {xml}: {exc.strerror or exc}") from None
    size = root.find("size")
    width = height = 0
    if size is not None:
        width = int(_number(size, "width", f"{xml} <size>"))
        height = int(_number(size, "height", f"{xml} <size>"))
    if width <= 0 or height <= 0:  # some labelling tools write 0 x 0: read the image header
        from PIL import Image

        with Image.open(image) as im:
            width, height = im.size
    boxes, names, difficult = [], [], []
    for j, obj in enumerate(root.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise DataError(f"{xml}: object {j} has no <{'name' if not name else 'bndbox'}>")
        x1, y1, x2, y2 = (_number(box, t, f"{xml}: object {j} ({name}) <bndbox>")
                          for t in ("xmin", "ymin", "xmax", "ymax"))
        if x2 < x1 or y2 < y1:
            raise DataError(f"{xml}: object {j} ({name}) has xmax < xmin or ymax < ymin")
        boxes.append((x1 - 1, y1 - 1, x2, y2))
        names.append(name)
        flag = (obj.findtext("difficult") or "0").strip().lower()
        difficult.append(flag not in ("0", "", "false"))
    return ImageEntry(
        path=str(image),
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        names=names,
        ignore=np.asarray(difficult, dtype=bool),
        source=str(xml),
    )


def read_split(layout: VocLayout, split: str, key: str, defaulted: bool) -> list[ImageEntry]:
    """Every image of a split, checked: listed id -> annotation file -> image file."""
    if layout.split_folders:
        return read_split_folder(layout, split, key)
    entries = []
    for folder, set_name in split_parts(layout, split, key):
        ids = read_ids(folder, set_name, key, split, defaulted)
        listing = f"every id in ImageSets/Main/{set_name}.txt"
        xml_files = list_files(folder / "Annotations")
        image_files = list_files(folder / "JPEGImages")
        for image_id in ids:
            xml = folder / "Annotations" / f"{image_id}.xml"
            if xml.name not in xml_files:
                raise DataError(f"{xml} is missing; data=voc expects an Annotations/<id>.xml "
                                f"for {listing}")
            found = [image_id + ext for ext in IMAGE_EXTENSIONS if image_id + ext in image_files]
            if not found:
                raise DataError(f"{folder / 'JPEGImages' / image_id}.jpg is missing; data=voc "
                                f"expects a JPEGImages/<id>.jpg for {listing}")
            entries.append(parse_annotation(xml, folder / "JPEGImages" / found[0]))
    return entries


def voc_class_names(cfg: DataConfig, entries: list[ImageEntry]) -> list[str]:
    """``data.class_names``; else VOC's 20 classes if the data uses only those; else the sorted
    names found (a VOC-format dataset with its own classes)."""
    if cfg.class_names:
        names = [str(n) for n in cfg.class_names]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.class_names has duplicates: {names}")
        known = set(names)
        for e in entries:
            for n in e.names:
                if n not in known:
                    raise DataError(f"{e.source}: object class {n!r} is not one of "
                                    f"data.class_names ({', '.join(names)})")
        return names
    found = {n for e in entries for n in e.names}
    return list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)


@DATASETS.register(
    "voc", "Pascal VOC (VOCdevkit) or any VOC-format folder from data.root (detection, no download)"
)
def voc(cfg: DataConfig) -> DatasetBundle:
    """VOC07+12 trainval / VOC07 test by default; the module docstring gives layouts, splits."""
    check_detection_config(cfg)
    layout = locate(cfg)
    defaults = default_splits(layout)
    train = read_split(layout, cfg.train_split or defaults[0], "train_split",
                       defaulted=cfg.train_split is None)
    val = read_split(layout, cfg.val_split or defaults[1], "val_split",
                     defaulted=cfg.val_split is None)
    return detection_bundle(cfg, train, val, voc_class_names(cfg, train + val))
