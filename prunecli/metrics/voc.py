"""Pascal VOC's detection AP, exactly as the devkit's ``voc_eval`` computes it, vectorised.

The devkit loops over detections in Python; here the only sequential rule (a detection whose
best-IoU ground truth is already taken is a false positive) becomes "the first detection, in
score order, that picks a given object is its true positive", so everything is numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from prunecli.metrics.types import ImageAnnotations, ImageDetections

_EPS = np.finfo(np.float64).eps


def _pair_iou(a: np.ndarray, b: np.ndarray, pixel_plus_one: bool) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` (xyxy); the devkit's ``+1`` on every length if asked."""
    one = 1.0 if pixel_plus_one else 0.0
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + one, 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + one, 0.0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    union = area_a + area_b - inter
    # Degenerate boxes (zero union) overlap nothing, instead of the devkit's 0/0 warning.
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = True) -> float:
    """The devkit's ``voc_ap``: 11-point interpolated AP (VOC2007) or the area under the
    monotone precision envelope (VOC2010+). A fraction in [0, 1]."""
    if use_07_metric:
        # The devkit adds p / 11 eleven times; the mean is the same number without the rounding
        # (a perfect detector gets exactly 1.0 instead of 1.0000000000000002).
        points = [float(np.max(prec[rec >= t])) if np.any(rec >= t) else 0.0
                  for t in np.arange(0.0, 1.1, 0.1)]
        return float(np.mean(points))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _flatten_gt(ground_truth: Sequence[ImageAnnotations], num_classes: int):
    index: dict[int, int] = {}
    for i, ann in enumerate(ground_truth):
        if ann.image_id in index:
            raise ValueError(f"image {ann.image_id} appears twice in the ground truth")
        index[ann.image_id] = i
    counts = [len(a.labels) for a in ground_truth]
    img = np.repeat(np.arange(len(ground_truth)), counts)
    boxes = np.concatenate([a.boxes for a in ground_truth] + [np.zeros((0, 4))])
    labels = np.concatenate([a.labels for a in ground_truth] + [np.zeros(0, np.int64)])
    ignore = np.concatenate([a.ignore for a in ground_truth] + [np.zeros(0, bool)])
    _check_labels(labels, num_classes, "ground truth")
    return index, img, boxes, labels, ignore


def _flatten_dets(detections: Sequence[ImageDetections], index: dict[int, int],
                  num_classes: int):
    missing = [d.image_id for d in detections if d.image_id not in index]
    if missing:
        raise ValueError(f"detections for images without ground truth records: {missing[:5]}")
    counts = [len(d.labels) for d in detections]
    img = np.repeat(np.array([index[d.image_id] for d in detections], np.int64), counts)
    boxes = np.concatenate([d.boxes for d in detections] + [np.zeros((0, 4))])
    scores = np.concatenate([d.scores for d in detections] + [np.zeros(0)])
    labels = np.concatenate([d.labels for d in detections] + [np.zeros(0, np.int64)])
    _check_labels(labels, num_classes, "detection")
    return img, boxes, scores, labels


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"{what} labels must be in 1..{num_classes}, got "
                         f"{labels.min()}..{labels.max()}")


def _best_gt(g_img, g_box, g_lab, d_img, d_box, d_lab, num_classes, pixel_plus_one):
    """Per detection: the highest IoU with the same-class objects of its image and the index of
    the first object reaching it (``np.argmax``'s tie rule); -inf / -1 where there are none."""
    width = num_classes + 1
    g_key = g_img * width + g_lab
    g_order = np.argsort(g_key, kind="stable")  # keeps each image's annotation order
    g_key_sorted = g_key[g_order]
    d_key = d_img * width + d_lab
    start = np.searchsorted(g_key_sorted, d_key, side="left")
    count = np.searchsorted(g_key_sorted, d_key, side="right") - start
    first = np.cumsum(count) - count  # where each detection's pairs begin
    pair_det = np.repeat(np.arange(len(d_key)), count)
    offset = np.arange(len(pair_det)) - np.repeat(first, count)
    pair_gt = g_order[np.repeat(start, count) + offset]
    iou = _pair_iou(d_box[pair_det], g_box[pair_gt], pixel_plus_one)

    ovmax = np.full(len(d_key), -np.inf)
    jmax = np.full(len(d_key), -1, dtype=np.int64)
    has = count > 0
    if has.any():
        ovmax[has] = np.maximum.reduceat(iou, first[has])
        at_max = np.flatnonzero(iou == ovmax[pair_det])
        dets, where = np.unique(pair_det[at_max], return_index=True)
        jmax[dets] = pair_gt[at_max[where]]
    return ovmax, jmax


def voc07_map(ground_truth: Sequence[ImageAnnotations], detections: Sequence[ImageDetections],
              num_classes: int, iou_threshold: float = 0.5, use_07_metric: bool = True,
              pixel_plus_one: bool = False) -> dict[str, Any]:
    """Pascal VOC mAP in percent, with the devkit's rules (SMCP and the SSD papers report it).

    Per class, detections go in descending score order (stable); each takes the same-class
    object of its image with the highest IoU. IoU > ``iou_threshold`` (strictly): on an ignored
    (difficult) object it is neither TP nor FP, on a free object a TP that takes it, on a taken
    one an FP, even if another free object also overlaps enough (unlike COCO). Otherwise FP.
    Recall is over the non-ignored objects. ``pixel_plus_one`` adds the devkit's one pixel to
    every length, for raw 1-based devkit boxes; prunecli's reader already shifts them to
    ``(xmin - 1, ymin - 1, xmax, ymax)``, where continuous IoU equals the devkit's.

    Returns ``{"voc07_map" (or "voc_map" for the VOC2010+ area AP): mean over the classes with
    objects (nan if none), "ap_per_class": {label: AP or nan where the class has no objects}}``.
    """
    index, g_img, g_box, g_lab, g_ign = _flatten_gt(ground_truth, num_classes)
    d_img, d_box, d_score, d_lab = _flatten_dets(detections, index, num_classes)
    ovmax, jmax = _best_gt(g_img, g_box, g_lab, d_img, d_box, d_lab, num_classes,
                           pixel_plus_one)

    order = np.lexsort((-d_score, d_lab))  # by class, then by descending score; stable
    best = jmax[order]
    hit = ovmax[order] > iou_threshold
    ignored = np.zeros(len(order), dtype=bool)
    ignored[hit] = g_ign[best[hit]]
    claims = np.flatnonzero(hit & ~ignored)
    tp = np.zeros(len(order), dtype=bool)
    _, first_claim = np.unique(best[claims], return_index=True)
    tp[claims[first_claim]] = True  # later claims on the same object are duplicates: FP
    fp = ~tp & ~ignored

    labels_sorted = d_lab[order]
    bounds = np.searchsorted(labels_sorted, np.arange(1, num_classes + 2))
    ap_per_class: dict[int, float] = {}
    for c in range(1, num_classes + 1):
        npos = int(np.count_nonzero((g_lab == c) & ~g_ign))
        if npos == 0:
            ap_per_class[c] = float("nan")
            continue
        lo, hi = bounds[c - 1], bounds[c]
        tp_c = np.cumsum(tp[lo:hi], dtype=np.float64)
        fp_c = np.cumsum(fp[lo:hi], dtype=np.float64)
        rec = tp_c / npos
        prec = tp_c / np.maximum(tp_c + fp_c, _EPS)
        ap_per_class[c] = 100.0 * voc_ap(rec, prec, use_07_metric)

    valid = [v for v in ap_per_class.values() if not np.isnan(v)]
    key = "voc07_map" if use_07_metric else "voc_map"
    return {key: float(np.mean(valid)) if valid else float("nan"),
            "ap_per_class": ap_per_class}
