"""Tiny detection datasets written in their real on-disk layouts (helpers, no tests here).

``make_voc`` writes a VOCdevkit (or one VOC-format folder), ``make_coco`` a COCO folder: noise
images with a random-colour rectangle where each object is, so a detector can learn them.
Both are deterministic for a given ``seed``. The first image of every split has the fixed
objects below, so tests can check exact numbers.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

VOC_FIXTURE_CLASSES = ("cat", "dog", "person")
# (W, H), cycled over the images; the first image of a split is always sizes[0]
SIZES = ((64, 48), (80, 60), (48, 64), (72, 56))
# first image of each VOC split: (class index, xmin, ymin, xmax, ymax 1-based inclusive, difficult)
VOC_FIRST_OBJECTS = ((0, 5, 7, 30, 25, False), (1, 20, 10, 60, 40, True))
COCO_CATEGORIES = ((1, "cat"), (3, "dog"), (7, "person"))  # non-contiguous ids, as in COCO
# first image of each COCO split: (category id, [x, y, w, h], iscrowd)
COCO_FIRST_OBJECTS = ((1, [5.0, 7.0, 25.0, 18.0], 0), (7, [10.5, 12.0, 30.0, 20.0], 0))


def draw_image(path: Path, size: tuple[int, int], boxes: Sequence[Sequence[float]],
               rng: np.random.Generator) -> None:
    """Noise with one flat random colour per box (``x1, y1, x2, y2`` continuous pixels)."""
    w, h = size
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:
        pixels[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = rng.integers(0, 256, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def random_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    """A 1-based inclusive box at least 8 pixels wide and high, inside a ``w x h`` image."""
    bw, bh = int(rng.integers(8, max(9, w // 2))), int(rng.integers(8, max(9, h // 2)))
    x1, y1 = int(rng.integers(1, w - bw + 1)), int(rng.integers(1, h - bh + 1))
    return x1, y1, x1 + bw - 1, y1 + bh - 1


def voc_xml(image_id: str, size: tuple[int, int], objects: Sequence[tuple]) -> str:
    """A VOC annotation: ``objects`` as ``(name, xmin, ymin, xmax, ymax, difficult)``."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size_el = ET.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (*size, 3), strict=True):
        ET.SubElement(size_el, tag).text = str(value)
    for name, x1, y1, x2, y2, difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        box = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2), strict=True):
            ET.SubElement(box, tag).text = str(value)
    return ET.tostring(root, encoding="unicode")


def write_voc_folder(folder: Path, prefix: str, n_trainval: int, n_test: int,
                     classes: Sequence[str], sizes: Sequence[tuple[int, int]], difficult: bool,
                     rng: np.random.Generator) -> None:
    """One ``VOC<year>``-style folder: Annotations/, ImageSets/Main/, JPEGImages/."""
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    counter = 0
    for split, n in (("trainval", n_trainval), ("test", n_test)):
        ids = []
        for i in range(n):
            counter += 1
            image_id = f"{prefix}{counter:06d}"
            size = sizes[0] if i == 0 else sizes[(counter - 1) % len(sizes)]
            if i == 0:
                objects = [(classes[c % len(classes)], x1, y1, x2, y2, d and difficult)
                           for c, x1, y1, x2, y2, d in VOC_FIRST_OBJECTS]
            else:
                objects = [(classes[int(rng.integers(len(classes)))], *random_box(rng, *size),
                            difficult and bool(rng.random() < 0.25))
                           for _ in range(int(rng.integers(1, 4)))]
            ids.append(image_id)
            (folder / "Annotations" / f"{image_id}.xml").write_text(
                voc_xml(image_id, size, objects))
            draw_image(folder / "JPEGImages" / f"{image_id}.jpg", size,
                       [(x1 - 1, y1 - 1, x2, y2) for _, x1, y1, x2, y2, _ in objects], rng)
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def make_voc(root: Path, *, years: Sequence[str] = ("2007",), n_trainval: int = 6,
             n_test: int = 4, classes: Sequence[str] = VOC_FIXTURE_CLASSES,
             sizes: Sequence[tuple[int, int]] = SIZES, difficult: bool = True, seed: int = 0,
             single_folder: bool = False) -> Path:
    """A VOCdevkit under ``root`` with ``VOC<year>/`` for each year (ids ``000001``... in 2007,
    ``<year>_000001``... in other years; trainval first, then test), or with
    ``single_folder=True`` one VOC-format folder. Returns the path to use as ``data.root``.
    About a quarter of the random objects are ``difficult`` (none if ``difficult=False``)."""
    rng = np.random.default_rng(seed)
    if single_folder:
        folder = root / "my_voc"
        write_voc_folder(folder, "", n_trainval, n_test, classes, sizes, difficult, rng)
        return folder
    devkit = root / "VOCdevkit"
    for year in years:
        write_voc_folder(devkit / f"VOC{year}", "" if year == "2007" else f"{year}_",
                         n_trainval, n_test, classes, sizes, difficult, rng)
    return devkit


def make_coco(root: Path, *, splits: Sequence[str] = ("train2017", "val2017"),
              n_images: int = 6, categories: Sequence[tuple[int, str]] = COCO_CATEGORIES,
              sizes: Sequence[tuple[int, int]] = SIZES, seed: int = 0,
              roboflow: bool = False) -> Path:
    """A COCO folder: ``annotations/instances_<split>.json`` and ``<split>/*.jpg`` (with
    ``roboflow=True``: ``<split>/_annotations.coco.json``). Image ids are ``100 + 7 i``; in each
    split image 0 has :data:`COCO_FIRST_OBJECTS`, image 1 no object, image 2 only a crowd
    region, image 3 a normal object, a crowd region and a zero-width box; the rest 1-3 random
    objects. ``area`` is 0.8 of the box area (a segment's area, not the box's)."""
    rng = np.random.default_rng(seed)
    cat_ids = [c for c, _ in categories]
    for split in splits:
        images, annotations = [], []
        for i in range(n_images):
            image_id = 100 + 7 * i
            w, h = sizes[i % len(sizes)]  # image 0: sizes[0]
            objects: list[tuple[int, list[float], int]] = []
            if i == 0:
                objects = [(c if c in cat_ids else cat_ids[0], list(b), crowd)
                           for c, b, crowd in COCO_FIRST_OBJECTS]
            elif i > 1:
                n = 1 if i == 2 else int(rng.integers(1, 4))
                for k in range(n):
                    x1, y1, x2, y2 = random_box(rng, w, h)
                    box = [float(x1 - 1), float(y1 - 1), float(x2 - x1 + 1), float(y2 - y1 + 1)]
                    crowd = int(i == 2 or (i == 3 and k == 0))
                    objects.append((cat_ids[int(rng.integers(len(cat_ids)))], box, crowd))
                if i == 3:
                    objects.append((cat_ids[0], [3.0, 4.0, 0.0, 10.0], 0))  # dropped: w = 0
            file_name = f"{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for cat, (x, y, bw, bh), crowd in objects:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                    "bbox": [x, y, bw, bh], "area": 0.8 * bw * bh, "iscrowd": crowd,
                })
            draw_image(root / split / file_name, (w, h),
                       [(x, y, x + bw, y + bh) for _, (x, y, bw, bh), _ in objects], rng)
        data = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c, "name": n, "supercategory": "thing"} for c, n in categories],
        }
        path = (root / split / "_annotations.coco.json" if roboflow
                else root / "annotations" / f"instances_{split}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return root


YOLO_NAMES = ("cat", "dog", "person")


def make_yolo(root: Path, *, roboflow: bool = False, n_images: int = 5, seed: int = 0
              ) -> tuple[Path, dict[str, list[list[tuple[str, tuple[float, ...]]]]]]:
    """A YOLO dataset with ``train`` and ``val`` splits: Ultralytics' ``images/<split>`` and
    ``labels/<split>`` with a ``data.yaml`` whose names are a mapping, or (``roboflow``)
    Roboflow's ``<split>/images`` with ``valid`` for val and ``../`` paths in a list of names.
    Image 1 of each split has no label file, image 2 a polygon; the rest 1-3 boxes. Returns the
    root and, per split, each image's expected ``(name, (x1, y1, x2, y2) pixels)``."""
    rng = np.random.default_rng(seed)
    expected: dict[str, list[list[tuple[str, tuple[float, ...]]]]] = {}
    for split in ("train", "val"):
        folder = "valid" if roboflow and split == "val" else split
        images = root / folder / "images" if roboflow else root / "images" / folder
        labels = root / folder / "labels" if roboflow else root / "labels" / folder
        labels.mkdir(parents=True, exist_ok=True)
        expected[split] = []
        for i in range(n_images):
            w, h = SIZES[i % len(SIZES)]
            objects, lines = [], []
            for _ in range(0 if i == 1 else int(rng.integers(1, 4))):
                x1, y1, x2, y2 = random_box(rng, w, h)
                x1, y1 = x1 - 1, y1 - 1  # continuous pixels
                cls = int(rng.integers(len(YOLO_NAMES)))
                if i == 2:  # a polygon (a diamond in the box): its bounding box is the box
                    xm, ym = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
                    pts = [(xm, y1 / h), (x2 / w, ym), (xm, y2 / h), (x1 / w, ym)]
                    lines.append(f"{cls} " + " ".join(f"{x!r} {y!r}" for x, y in pts))
                else:
                    lines.append(f"{cls} {(x1 + x2) / 2 / w!r} {(y1 + y2) / 2 / h!r} "
                                 f"{(x2 - x1) / w!r} {(y2 - y1) / h!r}")
                objects.append((YOLO_NAMES[cls], (x1, y1, x2, y2)))
            draw_image(images / f"{split}_{i:03d}.jpg", (w, h), [b for _, b in objects], rng)
            if i != 1:
                (labels / f"{split}_{i:03d}.txt").write_text("\n".join(lines) + "\n")
            expected[split].append(objects)
    if roboflow:
        (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 3\n"
                                        f"names: {list(YOLO_NAMES)}\n")
    else:
        names = "".join(f"  {i}: {n}\n" for i, n in enumerate(YOLO_NAMES))
        (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\n"
                                        f"names:\n{names}")
    return root, expected
