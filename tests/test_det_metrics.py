"""Detection metrics against numbers worked out by hand, and VOC07 against COCOeval in VOC mode."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunecli.metrics import (
    ImageAnnotations,
    ImageDetections,
    coco_metrics,
    coco_voc_settings_map,
    voc07_map,
)

NAMES = ["a", "b", "c"]


def gt(image_id, boxes, labels, ignore=None, areas=None, size=(200, 200)):
    return ImageAnnotations(image_id, size[0], size[1], boxes, labels,
                            np.zeros(0, bool) if ignore is None else ignore, areas)


def det(image_id, boxes, scores, labels=None):
    labels = [1] * len(scores) if labels is None else labels
    return ImageDetections(image_id, boxes, scores, labels)


def voc(g, d, k=1, **kw):
    return voc07_map(g, d, k, **kw)["voc07_map"]


# Two objects; detections TP 0.9, FP 0.8, TP 0.7 (TPs exactly on the objects, IoU 1).
TWO_GT = [gt(1, [[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1])]
THREE_DETS = [det(1, [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.7])]


def test_ground_truth_against_itself_is_100():
    images = [
        gt(1, [[0, 0, 10, 10], [20, 20, 70, 70], [0, 0, 150, 150]], [1, 2, 3]),
        gt(2, [[5, 5, 25, 40], [100, 100, 120, 110], [30, 60, 90, 200], [10, 0, 200, 190]],
           [1, 1, 2, 3]),
        gt(3, np.zeros((0, 4)), []),  # no objects and no detections: must not disturb anything
    ]
    # Two or more objects per class: COCOeval's precision tp / (tp + fp + 2.2e-16) is exactly 1
    # from tp = 2 on, but 1 - 2.2e-16 for a class with a single TP.
    dets = [det(a.image_id, a.boxes, np.ones(len(a.labels)), a.labels) for a in images]
    m = coco_metrics(images, dets, NAMES)
    assert m["map"] == m["map50"] == m["map75"] == 100.0
    assert m["mar_100"] == 100.0
    assert voc(images, dets, 3) == 100.0
    assert coco_voc_settings_map(images, dets, NAMES) == 100.0


def test_hand_made_ap():
    # cumulative tp = 1, 1, 2; fp = 0, 1, 1; npos = 2
    # recall = .5, .5, 1; precision = 1, 1/2, 2/3
    # 11-point: t = 0, .1, .., .5 (6 points) -> max precision at recall >= t = 1;
    #           t = .6, .., 1 (5 points) -> 2/3.   AP = (6 + 5 * 2/3) / 11 = 28/33
    assert voc(TWO_GT, THREE_DETS) == pytest.approx(100 * 28 / 33, abs=1e-9)
    assert coco_voc_settings_map(TWO_GT, THREE_DETS, ["a"]) == pytest.approx(100 * 28 / 33)
    # VOC2010+ area: recall 0 -> .5 at precision 1, .5 -> 1 at 2/3: .5 + .5 * 2/3 = 5/6
    area = voc07_map(TWO_GT, THREE_DETS, 1, use_07_metric=False)
    assert area["voc_map"] == pytest.approx(100 * 5 / 6)
    # COCO, 101 points: recall thresholds 0, .01, .., .50 (51 points) -> 1, .51 .. 1 (50) -> 2/3
    # AP = (51 + 50 * 2/3) / 101 = 253/303; the TPs have IoU 1, so every IoU threshold agrees.
    m = coco_metrics(TWO_GT, THREE_DETS, ["a"])
    for key in ("map", "map50", "map75"):
        assert m[key] == pytest.approx(100 * 253 / 303)
    assert m["mar_1"] == 50.0  # only the best detection per image: 1 of 2 objects
    assert m["mar_10"] == 100.0


def test_difficult_objects_voc():
    # object A, difficult object B; detections: on B (0.9), a far FP (0.85), on A (0.8)
    a, b, far = [0, 0, 20, 20], [100, 100, 140, 140], [60, 0, 80, 20]
    images = [gt(1, [a, b], [1, 1], ignore=[False, True])]
    dets = [det(1, [b, far, a], [0.9, 0.85, 0.8])]
    # B's detection is neither TP nor FP: FP, TP -> precision 0, 1/2 at recall 0, 1 -> AP 1/2.
    # (Were it an FP: precision 1/3 at recall 1 -> 33.3.)
    assert voc(images, dets) == pytest.approx(50.0)
    # Missing B costs nothing: the same 50. (Were B a normal object: recall 1/2, 6/11 * 1/2.)
    assert voc(images, [det(1, [far, a], [0.85, 0.8])]) == pytest.approx(50.0)
    normal = [gt(1, [a, b], [1, 1])]
    assert voc(normal, [det(1, [far, a], [0.85, 0.8])]) == pytest.approx(100 * 6 / 11 / 2)


def test_difficult_objects_coco_as_crowd():
    a, b, far = [0, 0, 20, 20], [100, 100, 140, 140], [60, 0, 80, 20]
    images = [gt(1, [a, b], [1, 1], ignore=[False, True])]
    # crowd B absorbs its detection; FP then TP: envelope 1/2 at every recall -> 50 at all IoUs
    m = coco_metrics(images, [det(1, [b, far, a], [0.9, 0.85, 0.8])], ["a"])
    assert m["map50"] == pytest.approx(50.0) and m["map"] == pytest.approx(50.0)
    m = coco_metrics(images, [det(1, [far, a], [0.85, 0.8])], ["a"])
    assert m["map50"] == pytest.approx(50.0)


def test_best_match_already_taken_is_a_false_positive_in_voc():
    # G1, G2 overlap. d1 = G1 (0.9). d2 = [0.5, 0, 10.5, 10]: IoU with G1 = 95/105 = .905,
    # with G2 = 85/115 = .739; both > .5, best is G1, already taken by d1.
    images = [gt(1, [[0, 0, 10, 10], [2, 0, 12, 10]], [1, 1])]
    dets = [det(1, [[0, 0, 10, 10], [0.5, 0, 10.5, 10]], [0.9, 0.8])]
    # VOC: TP, FP; recall .5, .5; precision 1, 1/2 -> 6 of 11 points at 1, the rest 0.
    assert voc(images, dets) == pytest.approx(100 * 6 / 11)
    # COCO falls back to the free G2 at IoU .5 (.739 >= .5): two TPs. At .75 it cannot:
    # precision 1 up to recall .5 -> 51 of 101 points.
    m = coco_metrics(images, dets, ["a"])
    assert m["map50"] == pytest.approx(100.0)
    assert m["map75"] == pytest.approx(100 * 51 / 101)


def test_iou_exactly_half_is_a_match_in_coco_only():
    # Known difference: COCOeval matches at IoU >= t, the VOC devkit needs IoU > t.
    images = [gt(1, [[0, 0, 10, 10]], [1])]
    dets = [det(1, [[0, 0, 10, 5]], [0.9])]  # intersection 50, union 100: IoU exactly .5
    m = coco_metrics(images, dets, ["a"])
    assert m["map50"] == pytest.approx(100.0) and m["map75"] == 0.0
    assert m["map"] == pytest.approx(10.0)  # a TP at 1 of the 10 IoU thresholds
    assert voc(images, dets) == 0.0
    assert coco_voc_settings_map(images, dets, ["a"]) == pytest.approx(100.0)


def test_coco_area_ranges():
    # a small (10x10 = 100 < 32^2) and a large (120x120 = 14400 > 96^2) object; only the small
    # one is found. No medium object: nan.
    images = [gt(1, [[0, 0, 10, 10], [50, 50, 170, 170]], [1, 1])]
    dets = [det(1, [[0, 0, 10, 10]], [0.9])]
    m = coco_metrics(images, dets, ["a"])
    # (COCOeval's precision is tp / (tp + fp + eps): one TP gives 1 - 2e-16, hence approx)
    assert m["map_small"] == pytest.approx(100.0) and m["mar_small"] == 100.0
    assert m["map_large"] == 0.0 and m["mar_large"] == 0.0
    assert math.isnan(m["map_medium"]) and math.isnan(m["mar_medium"])
    assert m["map"] == pytest.approx(100 * 51 / 101)  # precision 1 up to recall .5
    assert m["mar_100"] == 50.0
    # `areas` (a segment's area) decides the range, not the box: now the found one is medium.
    m = coco_metrics([gt(1, images[0].boxes, [1, 1], areas=[2000.0, 14400.0])], dets, ["a"])
    assert m["map_medium"] == pytest.approx(100.0) and math.isnan(m["map_small"])


def test_empty_detections_give_zero():
    images = [gt(1, [[0, 0, 10, 10]], [1]), gt(2, np.zeros((0, 4)), [])]
    m = coco_metrics(images, [], ["a"])
    for key in ("map", "map50", "map75", "map_small", "mar_1", "mar_100"):
        assert m[key] == 0.0, key
    assert voc(images, []) == 0.0
    assert voc(images, [det(1, np.zeros((0, 4)), [])]) == 0.0
    assert coco_voc_settings_map(images, [], ["a"]) == 0.0


def test_classes_without_ground_truth_do_not_count():
    # class 1 found perfectly; class 2 has no objects but a detection; class 3 has nothing.
    images = [gt(1, [[0, 0, 10, 10]], [1])]
    dets = [det(1, [[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [1, 2])]
    r = voc07_map(images, dets, 3)
    assert r["voc07_map"] == 100.0
    assert r["ap_per_class"][1] == 100.0
    assert math.isnan(r["ap_per_class"][2]) and math.isnan(r["ap_per_class"][3])
    assert coco_metrics(images, dets, NAMES)["map"] == pytest.approx(100.0)
    assert coco_voc_settings_map(images, dets, NAMES) == pytest.approx(100.0)
    assert math.isnan(voc(images[:0], [], 3))


def test_per_class_ap_comes_from_the_same_evaluation():
    # class "a" (label 1): the hand-made case above, 253/303; class "b": found perfectly; the
    # mean over the two is the mAP
    both = [*TWO_GT, gt(9, [[0, 0, 10, 10]], [2])]
    dets = [*THREE_DETS, det(9, [[0, 0, 10, 10]], [0.5], [2])]
    table: dict = {}
    m = coco_metrics(both, dets, ["a", "b"], per_class=table)
    assert list(table) == ["a", "b"]
    assert table["a"]["AP"] == pytest.approx(100 * 253 / 303)
    assert table["a"]["AP50"] == pytest.approx(100 * 253 / 303)
    assert table["b"] == {"AP": pytest.approx(100.0), "AP50": pytest.approx(100.0)}
    assert m["map"] == pytest.approx((table["a"]["AP"] + table["b"]["AP"]) / 2)
    table = {}
    coco_metrics(both, dets, ["a", "b", "c"], per_class=table)
    assert math.isnan(table["c"]["AP"])  # no objects of class c: no AP, left out of the mean


def test_bad_records_are_refused():
    images = [gt(1, [[0, 0, 10, 10]], [1])]
    with pytest.raises(ValueError):
        voc07_map(images, [det(2, [[0, 0, 1, 1]], [0.5])], 1)  # no such image
    with pytest.raises(ValueError):
        coco_metrics(images, [det(1, [[0, 0, 1, 1]], [0.5], [2])], ["a"])  # label 2 of 1


def _random_scenes(rng, n_images=50, k=3):
    """Same-class objects sit in distinct 100x100 cells, so they never overlap and a detection
    can have IoU > .5 with at most one of them: COCO's fallback to a free object never fires."""
    images, dets = [], []
    for i in range(n_images):
        boxes, labels = [], []
        for c in range(1, k + 1):
            for cell in rng.choice(9, size=rng.integers(0, 4), replace=False):
                x, y = 100 * (cell % 3) + rng.uniform(0, 40), 100 * (cell // 3) + rng.uniform(0, 40)
                w, h = rng.uniform(20, 60, 2)
                boxes.append([x, y, x + w, y + h])
                labels.append(c)
        boxes = np.array(boxes).reshape(-1, 4)
        d_boxes, d_labels = [], []
        for box, label in zip(boxes, labels, strict=True):
            for _ in range(int(rng.random() < 0.8) + int(rng.random() < 0.2)):  # miss / dup
                jittered = box + rng.normal(0, 6, 4)
                jittered[2:] = np.maximum(jittered[2:], jittered[:2] + 1)
                d_boxes.append(jittered)
                d_labels.append(label)
        for _ in range(rng.integers(0, 4)):  # false positives anywhere
            x, y = rng.uniform(0, 250, 2)
            d_boxes.append([x, y, x + rng.uniform(10, 50), y + rng.uniform(10, 50)])
            d_labels.append(int(rng.integers(1, k + 1)))
        images.append(gt(i, boxes, labels, size=(300, 300)))
        dets.append(det(i, np.array(d_boxes).reshape(-1, 4), np.zeros(len(d_labels)), d_labels))
    scores = rng.permutation(sum(len(d.scores) for d in dets)) + 1.0  # distinct everywhere
    start = 0
    for d in dets:
        d.scores = scores[start:start + len(d.scores)] / len(scores)
        start += len(d.scores)
    return images, dets


def _no_iou_near_half(images, dets):
    for a, d in zip(images, dets, strict=True):
        for box, label in zip(d.boxes, d.labels, strict=True):
            same = a.boxes[a.labels == label]
            lo, hi = np.maximum(same[:, :2], box[:2]), np.minimum(same[:, 2:], box[2:])
            inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
            union = np.prod(same[:, 2:] - same[:, :2], 1) + np.prod(box[2:] - box[:2]) - inter
            if np.any(np.abs(inter / union - 0.5) < 1e-6):
                return False
    return True


def test_voc07_equals_coco_in_voc_mode_on_random_scenes():
    images, dets = _random_scenes(np.random.default_rng(0))
    assert _no_iou_near_half(images, dets)  # else >= and > would disagree
    assert all(np.any(np.concatenate([a.labels for a in images]) == c) for c in (1, 2, 3))
    v = voc(images, dets, 3)
    assert 30.0 < v < 95.0  # misses, duplicates, FPs and loose boxes: a non-trivial value
    assert v == pytest.approx(coco_voc_settings_map(images, dets, NAMES), abs=1e-9)


def test_voc07_and_coco_differ_on_difficult_objects():
    # A small detection inside a large difficult box: IoU = 400/10000 = .04, so the devkit
    # counts an FP; COCO's crowd rule uses intersection over the DETECTION's area = 1, so the
    # detection is absorbed (ignored). Then the detection on A: VOC FP, TP -> 50; COCO TP -> 100.
    images = [gt(1, [[0, 0, 50, 50], [100, 100, 200, 200]], [1, 1], ignore=[False, True])]
    dets = [det(1, [[110, 110, 130, 130], [0, 0, 50, 50]], [0.9, 0.8])]
    assert voc(images, dets) == pytest.approx(50.0)
    assert coco_voc_settings_map(images, dets, ["a"]) == pytest.approx(100.0)


def test_pixel_plus_one_is_the_devkits_iou():
    # Raw 1-based devkit boxes: object (1,1,2,2) is 2x2 pixels, detection (1,1,3,2) is 3x2.
    # Devkit: intersection 2*2 = 4, union 4 + 6 - 4 = 6, IoU 2/3 -> TP.
    # Continuous coordinates: 1*1 / (1 + 2 - 1) = 1/2, not > 1/2 -> FP.
    images, dets = [gt(1, [[1, 1, 2, 2]], [1])], [det(1, [[1, 1, 3, 2]], [0.9])]
    assert voc(images, dets, pixel_plus_one=True) == 100.0
    assert voc(images, dets) == 0.0
    # Pin the devkit IoU between .66 and .67 with the threshold.
    assert voc(images, dets, pixel_plus_one=True, iou_threshold=0.66) == 100.0
    assert voc(images, dets, pixel_plus_one=True, iou_threshold=0.67) == 0.0
    # prunecli's reader shifts devkit boxes to (xmin - 1, ymin - 1, xmax, ymax): continuous IoU
    # is then the devkit's 2/3.
    shifted, shifted_dets = [gt(1, [[0, 0, 2, 2]], [1])], [det(1, [[0, 0, 3, 2]], [0.9])]
    assert voc(shifted, shifted_dets, iou_threshold=0.66) == 100.0
    assert voc(shifted, shifted_dets, iou_threshold=0.67) == 0.0


def test_max_dets_other_than_100():
    # COCOeval.summarize() hard-codes maxDets=100 for AP@[.5:.95] (-1 otherwise); not used here.
    m = coco_metrics(TWO_GT, THREE_DETS, ["a"], max_dets=200)
    assert m["map"] == pytest.approx(100 * 253 / 303) and m["mar_200"] == 100.0
    assert "mar_100" not in m
    # One detection per image: only the 0.9 TP; precision 1 up to recall .5 -> 51 of 101 points.
    m = coco_metrics(TWO_GT, THREE_DETS, ["a"], max_dets=1)
    assert m["map"] == pytest.approx(100 * 51 / 101) and m["mar_1"] == 50.0
