"""COCO's detection metrics through pycocotools' own ``COCOeval``, built in memory.

Using the reference implementation (not a re-implementation) keeps the numbers comparable with
published COCO results, quirks included: a match needs IoU >= threshold, ``iscrowd`` objects are
matched by intersection over the DETECTION's area, area ranges are closed at both ends.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from prunecli.metrics.types import ImageAnnotations, ImageDetections

_AREAS = ("all", "small", "medium", "large")


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    return np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).tolist()


def _check_labels(labels: np.ndarray, num_classes: int, what: str, image_id: int) -> None:
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"image {image_id}: {what} labels must be in 1..{num_classes}")


def _index(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _build(ground_truth: Sequence[ImageAnnotations], detections: Sequence[ImageDetections],
           class_names: Sequence[str]) -> tuple[COCO, COCO]:
    """The ground truth and result ``COCO`` objects. Results are indexed like the ground truth
    rather than through ``loadRes``, which fails on an empty list (it reads ``anns[0]``).
    Annotation ids start at 1: ``COCOeval`` stores matches as ids and reads 0 as "unmatched"."""
    k = len(class_names)
    images, gt_anns, image_ids = [], [], set()
    for ann in ground_truth:
        if ann.image_id in image_ids:
            raise ValueError(f"image {ann.image_id} appears twice in the ground truth")
        image_ids.add(ann.image_id)
        _check_labels(ann.labels, k, "ground truth", ann.image_id)
        images.append({"id": int(ann.image_id), "width": int(ann.width),
                       "height": int(ann.height)})
        boxes = ann.boxes
        areas = ann.areas if ann.areas is not None else (
            (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        for box, label, ignore, area in zip(_xywh(boxes), ann.labels.tolist(),
                                            ann.ignore.tolist(), areas.tolist(), strict=True):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": int(ann.image_id),
                            "category_id": label, "bbox": box, "area": area,
                            "iscrowd": int(ignore)})
    dt_anns = []
    for det in detections:
        if det.image_id not in image_ids:
            raise ValueError(f"detections for image {det.image_id}, which has no ground truth "
                             "record")
        _check_labels(det.labels, k, "detection", det.image_id)
        for box, label, score in zip(_xywh(det.boxes), det.labels.tolist(),
                                     det.scores.tolist(), strict=True):
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": int(det.image_id),
                            "category_id": label, "bbox": box, "score": score,
                            "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": i + 1, "name": str(name)} for i, name in enumerate(class_names)]
    gt = _index({"images": images, "categories": categories, "annotations": gt_anns})
    dt = _index({"images": list(images), "categories": categories, "annotations": dt_anns})
    return gt, dt


def _run(gt: COCO, dt: COCO, params: dict | None = None) -> COCOeval:
    ev = COCOeval(gt, dt, iouType="bbox")
    for name, value in (params or {}).items():
        setattr(ev.params, name, value)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return ev


def _mean(values: np.ndarray) -> float:
    """Percent mean over the entries COCOeval filled in (-1 marks "no ground truth")."""
    valid = values[values > -1]
    return 100.0 * float(np.mean(valid)) if valid.size else float("nan")


def coco_metrics(ground_truth: Sequence[ImageAnnotations], detections: Sequence[ImageDetections],
                 class_names: Sequence[str], max_dets: int = 100,
                 per_class: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """COCO's 12 box metrics in percent: ``map`` (AP@[.5:.95]), ``map50``, ``map75``,
    ``map_small``, ``map_medium``, ``map_large``, ``mar_1``, ``mar_10``, ``mar_{max_dets}``,
    ``mar_small``, ``mar_medium``, ``mar_large``; nan where no ground truth is in that range.

    Objects with ``ignore`` become ``iscrowd=1``, the only way COCOeval ignores an object. A
    crowd region is then matched by intersection over the detection's area (not IoU) and can
    absorb any number of detections. ``areas`` (else box areas) decide the area ranges.
    ``per_class``, a dict given by the caller, is filled with each class's ``AP`` and ``AP50``.
    The summary is read from ``eval`` directly: ``summarize()`` hard-codes maxDets=100 for
    ``map`` and would report -1 for any other ``max_dets``.
    """
    if max_dets < 1:
        raise ValueError("max_dets must be >= 1")
    gt, dt = _build(ground_truth, detections, class_names)
    ev = _run(gt, dt, {"maxDets": sorted({1, 10, max_dets})})
    p = ev.params
    m = {n: p.maxDets.index(n) for n in (1, 10, max_dets)}
    precision, recall = ev.eval["precision"], ev.eval["recall"]  # TxRxKxAxM, TxKxAxM
    t50 = np.flatnonzero(np.isclose(p.iouThrs, 0.5))
    t75 = np.flatnonzero(np.isclose(p.iouThrs, 0.75))
    last = m[max_dets]
    out = {"map": _mean(precision[:, :, :, 0, last]),
           "map50": _mean(precision[t50][:, :, :, 0, last]),
           "map75": _mean(precision[t75][:, :, :, 0, last])}
    for a in (1, 2, 3):
        out[f"map_{_AREAS[a]}"] = _mean(precision[:, :, :, a, last])
    for n in (1, 10, max_dets):
        out[f"mar_{n}"] = _mean(recall[:, :, 0, m[n]])
    for a in (1, 2, 3):
        out[f"mar_{_AREAS[a]}"] = _mean(recall[:, :, a, last])
    if per_class is not None:  # filled from the same evaluation: AP and AP50 of each class
        for k, name in enumerate(class_names):
            per_class[name] = {"AP": _mean(precision[:, :, k, 0, last]),
                               "AP50": _mean(precision[t50][:, :, k, 0, last])}
    return out


def coco_voc_settings_map(ground_truth: Sequence[ImageAnnotations],
                          detections: Sequence[ImageDetections], class_names: Sequence[str],
                          iou: float = 0.5, recall_points: int = 11,
                          max_dets: int = 10_000) -> float:
    """COCOeval set to VOC07's thresholds (one IoU, ``recall_points`` recall points, area 'all',
    no practical limit on detections): the cross-check of :func:`voc07_map`, in percent.

    Mean over the classes with at least one non-ignored object (nan if none). Remaining
    differences to the devkit: IoU >= ``iou`` (VOC: >), a detection whose best object is taken
    falls back to the next free one (VOC: FP), ignored objects are crowd regions (see
    :func:`coco_metrics`), and no +1 pixel.
    """
    gt, dt = _build(ground_truth, detections, class_names)
    ev = _run(gt, dt, {"iouThrs": np.array([float(iou)]),
                       "recThrs": np.linspace(0.0, 1.0, recall_points),
                       "maxDets": [max_dets], "areaRng": [[0.0, 1e5**2]],
                       "areaRngLbl": ["all"]})
    precision = ev.eval["precision"][0, :, :, 0, 0]  # R x K
    filled = (precision > -1).all(axis=0)
    if not filled.any():
        return float("nan")
    return 100.0 * float(np.mean(precision[:, filled].mean(axis=0)))
