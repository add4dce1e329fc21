"""COCO, or any dataset with COCO instances JSON (Roboflow exports, ...), from a local folder.

For a split ``S`` (``data.train_split``, default ``train2017``, else ``train``;
``data.val_split``, default ``val2017``, else ``valid`` or ``val``) the annotations are the first
that exists of ``annotations/instances_S.json`` (COCO), ``S/_annotations.coco.json`` (Roboflow)
and ``annotations/S.json`` (CVAT writes ``instances_default.json``: ``data.train_split=default``);
the images lie in ``S/``, ``images/S/``, ``images/`` (CVAT) or, for file names that include their
folder, the root. A split ending in ``.json`` names the file itself (``data.train_split=
result.json`` for Label Studio's export), its images beside it or in ``images/``. Nothing is
downloaded.

Classes: the categories sorted by id become labels ``1..K`` (COCO's ids run to 90 with gaps);
``data.class_names`` picks and orders them by name, and annotations of other categories are left
out. ``iscrowd`` regions stay in the ground truth flagged ``ignore`` (COCOeval's rule) and never
reach training targets. The training split leaves out images without a non-crowd object, as
torchvision's detection references do (``data.background_images=true`` keeps them, as
Ultralytics does); the validation split keeps every image, since a false positive on an empty
image counts too.
"""

from __future__ import annotations

import contextlib
import io
import json
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
from prunecli.data.registry import DATASETS, DatasetBundle, require_root
from prunecli.errors import ConfigError, DataError

DEFAULT_SPLITS = ("train2017", "val2017")
# tried in turn when a split is not given: COCO 2017's names, then Roboflow's and the usual ones
DEFAULT_CHOICES = {"train_split": ("train2017", "train"), "val_split": ("val2017", "valid", "val")}
WHAT = "a COCO folder with annotations/instances_<split>.json and <split>/ image folders"


def annotation_candidates(root: Path, split: str) -> list[Path]:
    return [
        root / "annotations" / f"instances_{split}.json",
        root / split / "_annotations.coco.json",
        root / "annotations" / f"{split}.json",
    ]


def splits_found(root: Path) -> list[str]:
    """The split names that have an annotation file under ``root``, for error messages."""
    found = [p.name.removeprefix("instances_").removesuffix(".json")
             for p in root.glob("annotations/*.json")]
    found += [p.parent.name for p in root.glob("*/_annotations.coco.json")]
    return sorted(set(found))


def choose_split(root: Path, given: str | None, key: str) -> str:
    """``given``, or the first of :data:`DEFAULT_CHOICES` that has an annotation file (COCO's
    ``train2017``/``val2017``; a Roboflow export's ``train``/``valid``)."""
    if given is not None:
        return given
    choices = DEFAULT_CHOICES[key]
    found = (c for c in choices if any(p.is_file() for p in annotation_candidates(root, c)))
    return next(found, choices[0])


def find_split(root: Path, split: str, key: str) -> Path:
    """The annotation file of a split, or a DataError listing what was tried. A split that
    ends in ``.json`` is that file, relative to the root (Label Studio's ``result.json``)."""
    if split.endswith(".json"):
        if not (root / split).is_file():
            raise DataError(f"data.{key}={split}: {root / split} is not a file")
        return root / split
    if not split or "/" in split or "\\" in split:
        raise ConfigError(f"data.{key}={split!r} must be a split name such as {DEFAULT_SPLITS[0]}")
    tried = annotation_candidates(root, split)
    ann = next((p for p in tried if p.is_file()), None)
    if ann is None:
        found = splits_found(root)
        hint = (f"; splits found there: {', '.join(found)} (set data.{key})" if found
                else f"; data=coco expects {WHAT}")
        raise DataError(f"no annotation file for data.{key}={split} in {root} (tried "
                        f"{', '.join(str(p.relative_to(root)) for p in tried)}){hint}")
    return ann


def image_folder(root: Path, split: str, key: str, coco: Any, ann: Path) -> Path:
    """The folder the split's ``file_name`` entries are relative to: ``S/`` (COCO, Roboflow),
    ``images/S/``, ``images/`` (CVAT's export) or the root itself (file names that start with
    ``images/``, as Label Studio writes them): the first that holds the first image."""
    folders = [root / split, root / "images" / split, root / "images", root]
    if split.endswith(".json"):  # the file's own folder first
        folders = [ann.parent, ann.parent / "images", root / "images", root]
    first = next((coco.imgs[i] for i in sorted(coco.imgs)), None)
    if first is None:  # no images: nothing to look for
        return next((p for p in folders if p.is_dir()), root)
    name = str(first.get("file_name", ""))
    found = next((p for p in folders if p.is_dir() and (p / name).is_file()), None)
    if found is None:  # the split's own folder without that image: the missing file is named
        found = next((p for p in folders[:2] if p.is_dir()), None)
    if found is None:
        raise DataError(f"no image folder for data.{key}={split} in {root}: {name} (the first "
                        f"image of {ann}) is in none of "
                        f"{', '.join(str(p.relative_to(root)) + '/' for p in folders[:3])} or "
                        "the root")
    return found


def load_coco(path: Path) -> Any:
    """pycocotools' ``COCO`` index of a JSON file, quietly, with errors naming the file. The
    JSON is read here (as UTF-8, whatever the locale) and handed to ``COCO.createIndex``."""
    from pycocotools.coco import COCO

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    missing = [k for k in ("images", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path} has no {' or '.join(repr(k) for k in missing)}; data=coco "
                        "expects a COCO instances file (images, annotations, categories)")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a COCO instances file: an entry lacks {exc}") from None
    return coco


def category_names(coco: Any, path: Path) -> dict[int, str]:
    """Category id -> name, without Roboflow's dataset-level category: exports list the dataset
    itself as a category (id 0) that is the supercategory of all the others and labels
    nothing; as a class it would only be a never-seen output."""
    cats = {int(c["id"]): str(c["name"]) for c in coco.dataset["categories"]}
    supers = {str(c.get("supercategory")) for c in coco.dataset["categories"]}
    used = {int(a["category_id"]) for a in coco.dataset.get("annotations", [])}
    if not cats:
        raise DataError(f"{path} lists no categories")
    return {i: n for i, n in cats.items() if n not in supers or i in used or len(cats) == 1}


def class_names_of(cfg: DataConfig, cats: dict[int, str], path: Path) -> list[str]:
    """Category names by id, or ``data.class_names`` checked against them."""
    found = list(dict.fromkeys(cats[i] for i in sorted(cats)))
    if not cfg.class_names:
        return found
    names = [str(n) for n in cfg.class_names]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.class_names has duplicates: {names}")
    unknown = [n for n in names if n not in found]
    if unknown:
        raise DataError(f"{path} has no category {unknown[0]!r} (data.class_names); its "
                        f"categories: {', '.join(found)}")
    return names


def read_split(
    coco: Any, ann_path: Path, image_dir: Path, class_names: Sequence[str], restricted: bool,
    objects_only: bool,
) -> list[ImageEntry]:
    """The images of one split in image-id order (as torchvision's CocoDetection);
    ``objects_only``: only those with an object to learn from (a training split's)."""
    try:
        return _entries(coco, ann_path, image_dir, class_names, restricted, objects_only)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{ann_path}: malformed image or annotation entry "
                        f"({type(exc).__name__}: {exc})") from None


def _entries(
    coco: Any, ann_path: Path, image_dir: Path, class_names: Sequence[str], restricted: bool,
    objects_only: bool,
) -> list[ImageEntry]:
    cats = {int(c["id"]): str(c["name"]) for c in coco.dataset["categories"]}
    wanted = set(class_names)
    files = list_files(image_dir)
    entries = []
    for image_id in sorted(coco.imgs):
        img = coco.imgs[image_id]
        boxes, names, crowd, areas = [], [], [], []
        for a in coco.imgToAnns.get(image_id, []):
            name = cats.get(int(a["category_id"]))
            if name is None:
                raise DataError(f"{ann_path}: annotation {a.get('id')} has category_id "
                                f"{a['category_id']}, which its categories do not list")
            if name not in wanted:
                if restricted:
                    continue
                raise DataError(f"{ann_path}: category {name!r} is not among the classes of "
                                f"the training split ({', '.join(class_names)})")
            x, y, w, h = (float(v) for v in a["bbox"])
            if w <= 0 or h <= 0:
                continue
            boxes.append((x, y, x + w, y + h))
            names.append(name)
            crowd.append(bool(a.get("iscrowd", 0)))
            areas.append(float(a.get("area", w * h)))
        if objects_only and all(crowd):  # no object to learn from (crowd regions are never targets)
            continue
        path = image_dir / str(img["file_name"])
        exists = path.name in files if path.parent == image_dir else path.is_file()
        if not exists:
            raise DataError(f"{path} is missing; data=coco expects every image of {ann_path} "
                            f"(its file_name) in {image_dir}")
        entries.append(ImageEntry(
            path=str(path),
            width=int(img["width"]),
            height=int(img["height"]),
            boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            names=names,
            ignore=np.asarray(crowd, dtype=bool),
            source=str(ann_path),
            areas=np.asarray(areas, dtype=np.float64),
            source_id=int(image_id),
        ))
    return entries


@DATASETS.register(
    "coco", "COCO instances JSON (COCO 2017, Roboflow exports) from data.root (detection)"
)
def coco(cfg: DataConfig) -> DatasetBundle:
    """COCO 2017 train/val by default; see the module docstring for the layouts."""
    check_detection_config(cfg)
    root = require_root(cfg, WHAT)
    train_split = choose_split(root, cfg.train_split, "train_split")
    val_split = choose_split(root, cfg.val_split, "val_split")
    train_ann = find_split(root, train_split, "train_split")
    val_ann = find_split(root, val_split, "val_split")
    restricted = bool(cfg.class_names)
    index = load_coco(train_ann)  # COCO train2017: ~450 MB of JSON, read once and let go
    names = class_names_of(cfg, category_names(index, train_ann), train_ann)
    images = image_folder(root, train_split, "train_split", index, train_ann)
    train = read_split(index, train_ann, images, names, restricted,
                       objects_only=not cfg.background_images)
    if not cfg.background_images:
        note_background_left_out("coco", len(index.imgs) - len(train))
    del index
    index = load_coco(val_ann)
    images = image_folder(root, val_split, "val_split", index, val_ann)
    val = read_split(index, val_ann, images, names, restricted, objects_only=False)
    return detection_bundle(cfg, train, val, names)
