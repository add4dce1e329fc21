"""What the file-based detection datasets (VOC, COCO) share: packed annotations, the dataset
class that decodes and transforms one image, and the bundle built from two splits.

A reader (``voc.py``, ``coco.py``) parses its annotation format into :class:`ImageEntry` records
(original pixel coordinates, continuous XYXY) and hands them to :func:`detection_bundle`; all of
the contract in :mod:`prunecli.data.detection` is implemented once, here.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from prunecli.config.schema import DataConfig
from prunecli.data.detection import DetectionDataset, Target
from prunecli.data.images import to_rgb
from prunecli.data.registry import DatasetBundle
from prunecli.errors import ConfigError, DataError
from prunecli.metrics.types import ImageAnnotations

log = logging.getLogger("prunecli")
DEFAULT_DETECTION_SIZE = 300  # SSD300's input; data.image_size overrides it
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp", ".tif",
                    ".tiff")
# images of each split decoded when a dataset is built, against their annotated sizes (a few ms
# each); every image is checked again when it is read. `prunecli inspect data=` sets it to 0 and
# checks them all itself, listing every problem rather than stopping at the first
SIZE_CHECKS: ContextVar[int] = ContextVar("SIZE_CHECKS", default=8)


@dataclass
class ImageEntry:
    """One image as a reader found it: boxes XYXY in original pixels (continuous coordinates),
    one class name and one ``ignore`` flag per box. ``source`` is the annotation file, named in
    errors about this image."""

    path: str
    width: int
    height: int
    boxes: np.ndarray
    names: list[str]
    ignore: np.ndarray
    source: str
    areas: np.ndarray | None = None
    source_id: int | None = None


class PackedAnnotations:
    """The annotations of a split in a few flat numpy arrays (image ``i``'s objects are rows
    ``offsets[i]:offsets[i + 1]``). COCO train has 118k images and 860k objects: flat arrays
    keep that small, quick to slice, and free of per-object Python objects, whose reference
    counts would make forked DataLoader workers copy the memory pages they live in."""

    def __init__(self, entries: Sequence[ImageEntry], class_names: Sequence[str]) -> None:
        label_of = {name: i + 1 for i, name in enumerate(class_names)}
        labels: list[np.ndarray] = []
        for e in entries:
            try:
                labels.append(np.fromiter((label_of[n] for n in e.names), np.int64, len(e.names)))
            except KeyError as exc:
                raise DataError(
                    f"{e.source}: object class {exc.args[0]!r} is not one of data.class_names "
                    f"({', '.join(class_names)})"
                ) from None
        counts = [len(e.boxes) for e in entries]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self.paths = np.array([e.path for e in entries], dtype=str)
        self.sources = np.array([e.source for e in entries], dtype=str)
        self.sizes = np.array([(e.height, e.width) for e in entries], dtype=np.int64).reshape(-1, 2)
        self.boxes = _concat([e.boxes for e in entries], np.float64, (0, 4))
        self.labels = _concat(labels, np.int64, (0,))
        self.ignore = _concat([e.ignore for e in entries], bool, (0,))
        has_areas = bool(entries) and all(e.areas is not None for e in entries)
        self.areas = _concat([e.areas for e in entries], np.float64, (0,)) if has_areas else None
        has_ids = bool(entries) and all(e.source_id is not None for e in entries)
        self.source_ids = np.array([e.source_id for e in entries], np.int64) if has_ids else None

    def __len__(self) -> int:
        return len(self.paths)

    def objects(self, index: int) -> slice:
        return slice(int(self.offsets[index]), int(self.offsets[index + 1]))

    def head(self, n: int | None) -> PackedAnnotations:
        """The first ``n`` images (all of them if ``n`` is None or larger)."""
        if n is None or n >= len(self):
            return self
        out = copy.copy(self)
        end = int(self.offsets[n])
        out.offsets = self.offsets[: n + 1]
        for key in ("paths", "sources", "sizes", "source_ids"):
            if getattr(self, key) is not None:
                setattr(out, key, getattr(self, key)[:n])
        for key in ("boxes", "labels", "ignore", "areas"):
            if getattr(self, key) is not None:
                setattr(out, key, getattr(self, key)[:end])
        return out


def _concat(arrays: Sequence[np.ndarray | None], dtype: type, empty: tuple[int, ...]) -> np.ndarray:
    parts = [np.asarray(a, dtype=dtype).reshape(-1, *empty[1:]) for a in arrays]
    return np.concatenate(parts) if parts else np.zeros(empty, dtype=dtype)


Transform = Callable[..., tuple]


class FileDetectionDataset(DetectionDataset):
    """Images read from files, annotations from :class:`PackedAnnotations`.

    ``__getitem__`` decodes with ``torchvision.io.decode_image`` (libjpeg-turbo, no PIL), leaves
    out the ignored objects (VOC ``difficult``, COCO ``iscrowd``) as training code for SSD does,
    and applies ``transform`` to ``(tv_tensors.Image, {"boxes": BoundingBoxes, "labels"})``.
    """

    def __init__(
        self, annotations: PackedAnnotations, class_names: Sequence[str], transform: Transform
    ) -> None:
        self.annotations = annotations
        self.class_names = list(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        from torchvision import tv_tensors

        ann = self.annotations
        self.check_index(index)
        h, w = (int(v) for v in ann.sizes[index])
        image = tv_tensors.Image(self.read_image(index))
        objects = ann.objects(index)
        keep = ~ann.ignore[objects]
        boxes = torch.from_numpy(ann.boxes[objects][keep].astype(np.float32))
        # a box reaching past the border (COCO has some) is clipped for training only; the
        # ground truth stays as annotated
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = torch.from_numpy(ann.labels[objects][keep])[valid]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes[valid], format="XYXY", canvas_size=(h, w)),
            "labels": labels,
        }
        image, target = self.transform(image, target)
        return image.as_subclass(Tensor), {
            "boxes": target["boxes"].as_subclass(Tensor).to(torch.float32),
            "labels": target["labels"].to(torch.int64),
            "image_id": index,
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }

    def read_image(self, index: int) -> Tensor:
        """The uint8 ``3 x H x W`` RGB image, checked against the annotated size (a mismatch
        would put every box in the wrong place)."""
        path = str(self.annotations.paths[index])
        try:
            image = decode_rgb(path)
        except (RuntimeError, OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot decode {path}: {reason}") from None
        h, w = (int(v) for v in self.annotations.sizes[index])
        if tuple(image.shape[-2:]) == (w, h) and h != w:
            # a photo stored sideways with an EXIF orientation tag, annotated as displayed
            # (CVAT, Roboflow, most viewers turn it): turn it the same way
            image = decode_rgb(path, exif=True)
        if tuple(image.shape[-2:]) != (h, w):
            raise DataError(
                f"{path} is {image.shape[-1]}x{image.shape[-2]} pixels but "
                f"{self.annotations.sources[index]} says {w}x{h}"
            )
        return image

    def check_index(self, index: int) -> None:
        """Only ``0 <= index < len``: ``image_id`` is the index, so ``-1`` must not alias."""
        if not 0 <= index < len(self.annotations):
            raise IndexError(f"index {index} out of range for {len(self.annotations)} images")

    def ground_truth(self, index: int) -> ImageAnnotations:
        self.check_index(index)
        ann = self.annotations
        objects = ann.objects(index)
        h, w = (int(v) for v in ann.sizes[index])
        return ImageAnnotations(
            image_id=index,
            width=w,
            height=h,
            boxes=ann.boxes[objects],
            labels=ann.labels[objects],
            ignore=ann.ignore[objects],
            areas=None if ann.areas is None else ann.areas[objects],
            source_id=None if ann.source_ids is None else int(ann.source_ids[index]),
        )


def decode_rgb(path: str, exif: bool = False) -> Tensor:
    """A JPEG/PNG file as a uint8 ``3 x H x W`` RGB tensor, turned by its EXIF orientation tag
    when ``exif`` (off by default: VOC and COCO annotate the stored pixels).

    ``torchvision.io.decode_image`` (libjpeg-turbo straight into a tensor, ~1 ms for a 500x375
    JPEG) is deprecated since torchvision 0.29 in favour of TorchCodec and warns on every call;
    the warning is silenced here, and PIL takes over once torchvision drops the function.
    """
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:  # a torchvision without image decoding
        return decode_with_pil(path, exif)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(path, mode=ImageReadMode.RGB, apply_exif_orientation=exif)
    except RuntimeError:  # a format torchvision does not decode (BMP, TIFF): PIL reads it
        return decode_with_pil(path, exif)
    if image.dtype != torch.uint8:  # a 16-bit PNG: the transforms and the models take 8 bits
        from torchvision.transforms.v2.functional import to_dtype

        image = to_dtype(image, torch.uint8, scale=True)
    return image


def decode_with_pil(path: str, exif: bool) -> Tensor:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        array = np.asarray(to_rgb(ImageOps.exif_transpose(im) if exif else im))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def check_detection_config(cfg: DataConfig) -> int:
    """The input size ``S`` (``data.image_size`` or 300); detection images are RGB."""
    if cfg.channels not in (None, 3):
        raise ConfigError(
            f"data.channels={cfg.channels} is not supported by data={cfg.name}: detection "
            "images are RGB (leave data.channels unset or set it to 3)"
        )
    return cfg.image_size or DEFAULT_DETECTION_SIZE


def list_files(folder: Path) -> set[str]:
    """File names in ``folder`` (one directory read, instead of a stat per image)."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except OSError:
        return set()


def note_background_left_out(name: str, left_out: int) -> None:
    """Say how many training images had no object and were left out (``data.background_images``
    keeps them)."""
    if left_out:
        log.info("data=%s: %d training image%s without objects left out "
                 "(data.background_images=true trains on them as background)", name, left_out,
                 "" if left_out == 1 else "s")


def describe_objects(ann: PackedAnnotations, class_names: Sequence[str], most: int = 8) -> str:
    """``"60 images, 123 objects (square 63, circle 60)"``: what a split holds, per class (the
    commonest first), to show at a glance that a dataset was read as meant."""
    counts = np.bincount(ann.labels[~ann.ignore], minlength=len(class_names) + 1)[1:]
    order = sorted(range(len(class_names)), key=lambda k: -counts[k])
    shown = ", ".join(f"{class_names[k]} {counts[k]}" for k in order[:most])
    more = f", {len(class_names) - most} more classes" if len(class_names) > most else ""
    ignored = f", {int(ann.ignore.sum())} ignored" if ann.ignore.any() else ""
    # images with no object to learn from or find (background images, or only ignored regions)
    per_image = np.add.reduceat(np.append(~ann.ignore, False).astype(np.int64),
                                ann.offsets[:-1]) if len(ann) else np.zeros(0, np.int64)
    per_image[ann.offsets[:-1] == ann.offsets[1:]] = 0  # reduceat's value for an empty range
    empty = int((per_image == 0).sum())
    without = f" ({empty} without objects)" if empty else ""
    return (f"{len(ann)} images{without}, {int(counts.sum())} objects "
            f"({shown}{more}){ignored}")


#: how far past its image a box may reach (a fraction of the image's side, and one pixel) before
#: the annotations are suspected of another box format
BOX_SLACK = 0.02


def boxes_past_their_image(ann: PackedAnnotations) -> str | None:
    """A warning when boxes reach well past their image: the usual sign of corners written
    where COCO's ``[x, y, width, height]`` belongs, or of images resized after labelling."""
    if not len(ann.boxes):
        return None
    counts = np.diff(ann.offsets)
    h, w = (np.repeat(ann.sizes[:, k], counts).astype(np.float64) for k in (0, 1))
    x1, y1, x2, y2 = ann.boxes.T
    past = ((x1 < -BOX_SLACK * w - 1) | (y1 < -BOX_SLACK * h - 1)
            | (x2 > (1 + BOX_SLACK) * w + 1) | (y2 > (1 + BOX_SLACK) * h + 1))
    if not past.any():
        return None
    first = int(np.flatnonzero(past)[0])
    image = int(np.searchsorted(ann.offsets, first, side="right") - 1)
    box = ", ".join(f"{v:g}" for v in ann.boxes[first])
    return (f"{int(past.sum())} of {len(past)} boxes reach past their image (e.g. "
            f"{ann.paths[image]}: [{box}] (x1, y1, x2, y2) in a {int(w[first])}x{int(h[first])} "
            f"image, from {ann.sources[image]}); check the box format (COCO's bbox is [x, y, "
            "width, height], YOLO's fractions of the image) and that the images were not "
            "resized after labelling")


#: an object whose shorter side is under this many pixels at the model's input is "tiny"
TINY_PX = 8
#: the share of tiny training objects above which a run is warned
TINY_SHARE = 0.25


def object_sizes(annotations: PackedAnnotations, input_size: int) -> dict[str, int]:
    """Objects (not ignored) by COCO's size ranges in the original images, and those whose
    shorter side is under :data:`TINY_PX` pixels once the image is resized to the input."""
    counts = np.diff(annotations.offsets)
    h, w = (np.repeat(annotations.sizes[:, k], counts).astype(np.float64) for k in (0, 1))
    keep = ~annotations.ignore
    boxes = annotations.boxes[keep]
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = bw * bh
    at_input = np.minimum(bw * input_size / w[keep], bh * input_size / h[keep])
    return {"small": int((area < 32 ** 2).sum()),
            "medium": int(((area >= 32 ** 2) & (area < 96 ** 2)).sum()),
            "large": int((area >= 96 ** 2).sum()),
            "tiny": int((at_input < TINY_PX).sum())}


def detection_bundle(
    cfg: DataConfig,
    train: Sequence[ImageEntry],
    val: Sequence[ImageEntry],
    class_names: Sequence[str],
) -> DatasetBundle:
    """Both splits as :class:`FileDetectionDataset` (the first ``data.train_size`` /
    ``data.val_size`` images of each), with SSD augmentation on the training split."""
    from prunecli.data.detection_transforms import eval_transform, train_transform

    size = check_detection_config(cfg)
    # packed in full first, so that a class-name error anywhere in a split shows at once
    train_ann = PackedAnnotations(train, class_names).head(cfg.train_size)
    val_ann = PackedAnnotations(val, class_names).head(cfg.val_size)
    train_tf = train_transform(size, augment=cfg.augment, hflip=cfg.hflip is not False)
    datasets = (FileDetectionDataset(train_ann, class_names, train_tf),
                FileDetectionDataset(val_ann, class_names, eval_transform(size)))
    for ds in datasets:  # images resized after labelling show here, not in a worker hours later
        for i in range(min(SIZE_CHECKS.get(), len(ds))):
            ds.read_image(i)
    log.info("data=%s: %s", cfg.name, "; ".join(
        f"{split} {describe_objects(ann, class_names)}"
        for split, ann in (("train", train_ann), ("val", val_ann))))
    for split, ann in (("train", train_ann), ("val", val_ann)):
        if advice := boxes_past_their_image(ann):
            log.warning("data=%s, %s split: %s", cfg.name, split, advice)
    sizes = object_sizes(train_ann, size)
    objects = int((~train_ann.ignore).sum())
    if objects and sizes["tiny"] > TINY_SHARE * objects:
        log.warning("data=%s: %d%% of the training objects are under %d px at the %d px input "
                    "(data.image_size); a detector finds few of them: a larger input keeps "
                    "them (prunecli inspect data=... shows the sizes)", cfg.name,
                    round(100 * sizes["tiny"] / objects), TINY_PX, size)
    return DatasetBundle(
        train=datasets[0],
        val=datasets[1],
        num_classes=len(class_names),
        channels=3,
        image_size=size,
        class_names=list(class_names),
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        task="detection",
    )
