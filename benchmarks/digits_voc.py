"""A second detection dataset, written as a Pascal VOC folder: handwritten digits on photographs.

The detection benchmarks were designed on the embedded Fashion-MNIST scenes, which the package
builds in memory. This writes a dataset none of them used, in VOC's on-disk layout, so that
``data=voc`` reads it through the same code a user's VOC copy goes through (XML annotations,
JPEG decoding, images of many sizes and aspect ratios resized to the detector's input,
``difficult`` objects, SSD's augmentation, VOC07 mAP):

- objects: scikit-learn's 1,797 real 8x8 handwritten digits (``load_digits``, shipped inside
  scikit-learn, no download), upscaled to 16-48 px, in a random colour, alpha-blended by their
  ink; class = the digit ("0" .. "9");
- backgrounds: random crops of scikit-learn's two sample photographs (``china.jpg``,
  ``flower.jpg``), 112-176 px wide and 88-144 px high, randomly flipped;
- 1-4 digits per image, boxes (the ink's tight box) overlapping by IoU <= 0.2; a digit smaller
  than 20 px is marked ``difficult`` (VOC: ignored by the metric, left out of training targets);
- splits (``ImageSets/Main``): ``train`` (8,000 images) of 900 training digits, ``val`` (1,000)
  of the other 100 training digits, for choosing settings, and ``test`` (1,000) of the 797
  held-out digits; the digit split is class-balanced (seed 0), as in ``digits_folder.py``.

Everything follows from fixed seeds; the folder is written once (a few seconds) and reused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.det_fixtures import voc_xml  # noqa: E402  (the tests' VOC annotation writer)

TRAIN_DIGITS_PER_CLASS, VAL_DIGITS_PER_CLASS = 90, 10  # 1,000 training digits, as digits_folder
SCENES = {"train": 8000, "val": 1000, "test": 1000}
WIDTH, HEIGHT = (112, 176), (88, 144)
SIDE = (16, 48)  # an 8x8 digit is drawn as a SIDE x SIDE patch
DIFFICULT_BELOW = 20  # px: smaller digits are marked difficult
MAX_DIGITS, MAX_OVERLAP = 4, 0.2
INK = 4  # of 16: a digit pixel at or above this is in its box
# the overrides that read the folder (VOC07 mAP is data=voc's default metric; the benchmark
# reports COCO mAP as the primary one, as for the embedded demo)
OVERRIDES = ["data=voc", "data.train_split=train", "data.val_split=test"]


def _split_digits(target: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(target == label))
        cut = TRAIN_DIGITS_PER_CLASS + VAL_DIGITS_PER_CLASS
        parts["train"] += idx[:TRAIN_DIGITS_PER_CLASS].tolist()
        parts["val"] += idx[TRAIN_DIGITS_PER_CLASS:cut].tolist()
        parts["test"] += idx[cut:].tolist()
    return {k: np.asarray(v) for k, v in parts.items()}


def _iou(box: np.ndarray, others: np.ndarray) -> float:
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return float((inter / (area(box) + area(others) - inter)).max())


def _scene(rng: np.random.Generator, photos: list[np.ndarray], digits: np.ndarray,
           labels: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, list[tuple]]:
    """One image (uint8 H x W x 3) and its objects ``(name, x1, y1, x2, y2, difficult)`` with
    VOC's 1-based inclusive pixel coordinates."""
    from PIL import Image

    w, h = int(rng.integers(*WIDTH, endpoint=True)), int(rng.integers(*HEIGHT, endpoint=True))
    photo = photos[int(rng.integers(len(photos)))]
    y0, x0 = int(rng.integers(photo.shape[0] - h + 1)), int(rng.integers(photo.shape[1] - w + 1))
    image = photo[y0:y0 + h, x0:x0 + w].astype(np.float32)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    objects: list[tuple] = []
    boxes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, MAX_DIGITS + 1))):
        d = int(pool[rng.integers(len(pool))])
        ink = digits[d] >= INK
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        for _try in range(20):
            side = int(rng.integers(*SIDE, endpoint=True))
            if side > min(w, h):
                continue
            px, py = int(rng.integers(w - side + 1)), int(rng.integers(h - side + 1))
            cell = side / 8
            box = np.array([px + cols[0] * cell, py + rows[0] * cell,
                            px + (cols[-1] + 1) * cell, py + (rows[-1] + 1) * cell])
            if boxes and _iou(box, np.stack(boxes)) > MAX_OVERLAP:
                continue
            alpha = np.asarray(Image.fromarray((digits[d] * 255 / 16).astype(np.uint8))
                               .resize((side, side), Image.BILINEAR), dtype=np.float32) / 255
            colour = rng.integers(0, 256, 3).astype(np.float32)
            region = image[py:py + side, px:px + side]
            image[py:py + side, px:px + side] = (region * (1 - alpha[..., None])
                                                 + colour * alpha[..., None])
            boxes.append(box)
            x1, y1 = int(np.floor(box[0])) + 1, int(np.floor(box[1])) + 1
            x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
            objects.append((str(labels[d]), x1, y1, x2, y2, side < DIFFICULT_BELOW))
            break
    return np.clip(image, 0, 255).astype(np.uint8), objects


def write_digits_voc(root: Path, scenes: dict[str, int] | None = None) -> list[str]:
    """Write the VOC folder at ``root`` (unless already there) and return the ``prunecli train``
    overrides that read it; ``scenes`` changes the number of images per split (tests)."""
    scenes = scenes or SCENES
    marker = root / "digits_voc.json"
    if not marker.is_file() or json.loads(marker.read_text()).get("scenes") != scenes:
        try:
            from PIL import Image
            from sklearn.datasets import load_digits, load_sample_images
        except ImportError as exc:
            raise SystemExit(f"the digits VOC dataset needs scikit-learn ({exc}): "
                             "pip install scikit-learn") from None
        digits = load_digits()
        photos = list(load_sample_images().images)
        split = _split_digits(digits.target)
        for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        counts: dict[str, dict[str, int]] = {}
        for seed, (name, count) in enumerate(scenes.items(), start=1):
            rng = np.random.default_rng(seed)
            ids, objects_seen = [], 0
            for i in range(count):
                image_id = f"{name}_{i:05d}"
                image, objects = _scene(rng, photos, digits.images, digits.target, split[name])
                Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=92)
                size = (image.shape[1], image.shape[0])
                (root / "Annotations" / f"{image_id}.xml").write_text(
                    voc_xml(image_id, size, objects))
                ids.append(image_id)
                objects_seen += len(objects)
            (root / "ImageSets/Main" / f"{name}.txt").write_text("\n".join(ids) + "\n")
            counts[name] = {"images": count, "objects": objects_seen,
                            "digits": len(split[name])}
        marker.write_text(json.dumps({"scenes": scenes, "counts": counts}, indent=2) + "\n")
    return [*OVERRIDES, f"data.root={root}"]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/runs_det_digits/digits_voc")
    print(" ".join(write_digits_voc(out)))
    print((out / "digits_voc.json").read_text())
