"""YOLO-format detection data (Ultralytics' layout, Roboflow's YOLO exports) from a local folder.

``data.root`` is a folder with a ``data.yaml`` (or ``dataset.yaml``): ``names`` (a list, or a
mapping from class index to name), and ``train``/``val``/``test`` entries that are image folders,
``.txt`` files listing images, or lists of those, relative to ``path`` (itself relative to the
YAML's folder) or to the YAML's folder; a ``../`` prefix that leads out of the dataset is
dropped, as Ultralytics does for Roboflow's ``../train/images``. Without a YAML, the splits are
``images/<split>/`` or ``<split>/images/`` folders and the class names ``data.class_names``.

Labels follow Ultralytics' rule: an image ``.../images/.../x.jpg`` has its label file at
``.../labels/.../x.txt``, one object per line, ``class cx cy w h`` normalised to [0, 1] (a
polygon ``class x1 y1 x2 y2 ...`` becomes its bounding box). A missing or empty label file is an
image without objects: kept in validation, left out of training unless ``data.background_images``
(as for COCO). Normalised boxes are placed in the image as displayed (EXIF orientation
applied, as Ultralytics reads images). Splits: ``data.train_split`` (default ``train``) and
``data.val_split`` (default ``val``, else ``valid`` or ``test``), keys of the YAML or folder names.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.config.schema import DataConfig
from prunecli.data.detection_files import (
    ImageEntry,
    check_detection_config,
    detection_bundle,
    list_files,
    note_background_left_out,
)
from prunecli.data.images import warn_left_out
from prunecli.data.registry import DATASETS, DatasetBundle, require_root
from prunecli.errors import ConfigError, DataError

log = logging.getLogger("prunecli")

WHAT = ("a YOLO dataset folder with data.yaml (names, train, val) or images/<split>/ and "
        "labels/<split>/ folders")
SPLIT_DEFAULTS = {"train_split": ("train",), "val_split": ("val", "valid", "test")}
# the image extensions of Ultralytics' that decode here (BMP and TIFF with PIL); its camera
# formats (DNG, HEIC, MPO, PFM) are not read
YOLO_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: files found beside the images that are not meant as images (labels, Ultralytics' caches)
NOT_IMAGES = (".txt", ".cache", ".yaml", ".yml", ".json", ".xml")
SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def read_yaml(root: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The dataset YAML of ``root`` (``data.yaml`` or ``dataset.yaml``) and its path."""
    import yaml

    path = next((root / n for n in ("data.yaml", "dataset.yaml") if (root / n).is_file()), None)
    if path is None:
        return None, None
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"{path} is not valid YAML: {first}") from None
    if not isinstance(spec, dict):
        raise DataError(f"{path} is not a mapping; data=yolo expects names, train and val keys")
    return spec, path


def names_of(spec: dict[str, Any] | None, path: Path | None, cfg: DataConfig) -> list[str]:
    """Class names by index: the YAML's ``names`` (or ``data.class_names``, which must agree in
    number with them)."""
    given = [str(n) for n in cfg.class_names] if cfg.class_names else None
    names = spec.get("names") if spec else None
    if isinstance(names, dict):
        try:
            order = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{path}: names must map class indices 0..K-1 to names") from None
        if order != list(range(len(order))):
            raise DataError(f"{path}: names must map class indices 0..K-1 to names")
        names = [names[k] if k in names else names[str(k)] for k in order]
    if names is not None and not isinstance(names, list):
        raise DataError(f"{path}: names must be a list or a mapping, not {type(names).__name__}")
    found = None if names is None else [str(n) for n in names]
    if found is not None:
        nc = spec.get("nc") if spec else None
        if isinstance(nc, int) and nc != len(found):
            raise DataError(f"{path}: nc is {nc} but names has {len(found)} entries; make them "
                            "agree")
        if len(set(found)) != len(found):
            twice = sorted({n for n in found if found.count(n) > 1})
            raise DataError(f"{path}: names repeats {', '.join(twice)}; each class index needs "
                            "a name of its own (its labels would merge)")
    if given is not None:
        if len(set(given)) != len(given):
            raise ConfigError(f"data.class_names has duplicates: {given}")
        if found is not None and len(found) != len(given):
            raise ConfigError(f"data.class_names has {len(given)} names but {path} {len(found)}"
                              f" ({', '.join(found)}); YOLO labels are class indices")
        return given
    if not found:
        where = f"{path} has no names" if path else "no data.yaml"
        raise DataError(f"{where}; data=yolo needs the class names (a data.yaml with names: "
                        "[...], or data.class_names=[...])")
    return found


def split_sources(root: Path, spec: dict[str, Any] | None, path: Path | None, split: str,
                  key: str) -> list[Path]:
    """The image folders / list files of a split."""
    if spec is not None and split in spec and spec[split]:
        base = path.parent
        if spec.get("path") and (path.parent / str(spec["path"])).is_dir():
            # Ultralytics reads a relative path against its own datasets folder; one that does
            # not exist from here (coco128.yaml's ../datasets/coco128) means the YAML's folder
            base = (path.parent / str(spec["path"])).resolve()
        entries = spec[split] if isinstance(spec[split], list) else [spec[split]]
        out = []
        for entry in (str(e) for e in entries):
            p = base / entry
            if not p.exists() and entry.startswith("../"):
                p = base / entry[3:]  # Roboflow's ../train/images from the dataset's own folder
            if not p.exists():
                raise DataError(f"{path}: {split}: {entry} is not found (looked for {p})")
            out.append(p)
        return out
    for p in (root / "images" / split, root / split / "images"):
        if p.is_dir():
            return [p]
    have = sorted(k for k in ("train", "val", "valid", "test") if spec and spec.get(k))
    have += [p.name for p in sorted((root / "images").glob("*")) if p.is_dir()]
    have += [p.parent.name for p in sorted(root.glob("*/images")) if p.is_dir()]
    hint = f"; it has {', '.join(dict.fromkeys(have))} (set data.{key})" if have else ""
    raise DataError(f"no split {split!r} for data.{key} in {root} (looked for "
                    f"{'a ' + split + ' key in ' + str(path) + ', ' if path else ''}images/{split}/"
                    f" and {split}/images/){hint}")


def image_files(source: Path) -> list[Path]:
    """The images of a folder (recursively, sorted) or of a list file (one path per line,
    relative to the list file's folder)."""
    if source.is_dir():
        files = [p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")]
        other = Counter(p.suffix.lower() or "no extension" for p in files
                        if p.suffix.lower() not in (*YOLO_IMAGE_SUFFIXES, *NOT_IMAGES))
        warn_left_out(source, "data=yolo", other)
        return sorted(p for p in files if p.suffix.lower() in YOLO_IMAGE_SUFFIXES)
    lines = [ln.strip() for ln in source.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [p if p.is_absolute() else source.parent / p for p in map(Path, lines)]


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``."""
    parts = list(image.parts)
    where = max((i for i, part in enumerate(parts[:-1]) if part == "images"), default=None)
    if where is None:
        return image.with_suffix(".txt")  # labels beside the images
    parts[where] = "labels"
    return Path(*parts).with_suffix(".txt")


def displayed_size(image: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (EXIF orientation applied), from its
    header only."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112) in SIDEWAYS
    except OSError as exc:
        raise DataError(f"cannot read {image}: {exc}") from None
    return (h, w) if turned else (w, h)


#: how far outside [0, 1] a label's numbers may stray (exporters' rounding) before the file is
#: taken to hold pixel coordinates
NORMALISED_SLACK = 0.01


def read_labels(txt: Path, width: int, height: int, names: Sequence[str]
                ) -> tuple[np.ndarray, list[str]]:
    """Boxes XYXY in pixels and class names of one label file (none if it is missing)."""
    try:
        lines = txt.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return np.zeros((0, 4)), []
    boxes, labels = [], []
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            number, values = float(fields[0]), [float(v) for v in fields[1:]]
            cls = int(number)  # "3" or "3.0" (some exporters write floats)
            if cls != number:
                raise ValueError
        except ValueError:
            raise DataError(f"{txt}, line {n}: {line.strip()!r} is not 'class cx cy w h' "
                            "(numbers)") from None
        if not 0 <= cls < len(names):
            raise DataError(f"{txt}, line {n}: class {cls} is not in 0..{len(names) - 1} "
                            f"({len(names)} names)")
        if values and (min(values) < -NORMALISED_SLACK or max(values) > 1 + NORMALISED_SLACK):
            raise DataError(f"{txt}, line {n}: {line.strip()!r} has coordinates outside [0, 1]; "
                            "YOLO labels are fractions of the image's width and height "
                            "(pixel coordinates need dividing by them)")
        if len(values) == 4:
            cx, cy, w, h = values
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(values) >= 6 and len(values) % 2 == 0:  # a polygon: its bounding box
            xs, ys = values[0::2], values[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        else:
            raise DataError(f"{txt}, line {n}: {len(values)} numbers after the class; YOLO "
                            "boxes are 'class cx cy w h' (or a polygon of x y pairs)")
        if x2 <= x1 or y2 <= y1:
            continue  # a zero-size box teaches nothing and COCOeval cannot match it
        boxes.append((x1 * width, y1 * height, x2 * width, y2 * height))
        labels.append(names[cls])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), labels


def read_split(root: Path, spec: dict[str, Any] | None, path: Path | None, split: str, key: str,
               names: Sequence[str]) -> list[ImageEntry]:
    entries = []
    for source in split_sources(root, spec, path, split, key):
        images = image_files(source)
        if not images:
            raise DataError(f"{source} holds no images ({', '.join(YOLO_IMAGE_SUFFIXES)})")
        listed: dict[Path, set[str]] = {}
        for image in images:
            folder = image.parent
            if folder not in listed:
                listed[folder] = list_files(folder)
            if image.name not in listed[folder]:
                raise DataError(f"{image} is missing (listed in {source})")
            width, height = displayed_size(image)
            boxes, labels = read_labels(label_path(image), width, height, names)
            entries.append(ImageEntry(path=str(image), width=width, height=height, boxes=boxes,
                                      names=labels, ignore=np.zeros(len(labels), dtype=bool),
                                      source=str(label_path(image))))
    return entries


def choose_split(root: Path, spec: dict[str, Any] | None, given: str | None, key: str) -> str:
    """``given``, or the first default split the data has."""
    if given is not None:
        return given
    for name in SPLIT_DEFAULTS[key]:
        if (spec and spec.get(name)) or (root / "images" / name).is_dir() or \
                (root / name / "images").is_dir():
            return name
    return SPLIT_DEFAULTS[key][0]


@DATASETS.register(
    "yolo", "YOLO-format data (Ultralytics layout, Roboflow exports) from data.root (detection)"
)
def yolo(cfg: DataConfig) -> DatasetBundle:
    """Train and val splits of a YOLO dataset; the module docstring gives the layouts."""
    check_detection_config(cfg)
    root = require_root(cfg, WHAT)
    spec, path = read_yaml(root)
    names = names_of(spec, path, cfg)
    train_split = choose_split(root, spec, cfg.train_split, "train_split")
    val_split = choose_split(root, spec, cfg.val_split, "val_split")
    train = read_split(root, spec, path, train_split, "train_split", names)
    if not cfg.background_images:  # as for COCO
        found = len(train)
        train = [e for e in train if len(e.boxes)]
        note_background_left_out("yolo", found - len(train))
    val = read_split(root, spec, path, val_split, "val_split", names)
    return detection_bundle(cfg, train, val, names)
