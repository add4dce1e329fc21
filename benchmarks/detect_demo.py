"""The embedded detection demo against a trivial baseline, on the test scenes.

The baseline sees no pixels: for every test image it predicts, for every class, the 10 most
typical training boxes (k-means of the training boxes), scored by class frequency x cluster
size. A detector that learnt nothing from the images cannot beat it.

    prunecli train experiment=detect_demo hydra.run.dir=runs/detect_demo   # (time it)
    python benchmarks/detect_demo.py --run runs/detect_demo --wall-s 215
writes benchmarks/results/detect_demo.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from prunecli.data import build_datasets
from prunecli.metrics import coco_metrics, voc07_map
from prunecli.metrics.types import ImageDetections

KEYS = (("map", "mAP@[.5:.95]"), ("map50", "AP50"), ("map75", "AP75"), ("voc07_map", "VOC07 mAP"))


def kmeans(points: np.ndarray, k: int, iters: int = 50, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centres = points[rng.choice(len(points), k, replace=False)]
    for _ in range(iters):
        assign = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack([points[assign == j].mean(0) if (assign == j).any() else centres[j]
                            for j in range(k)])
    return centres, np.bincount(assign, minlength=k) / len(points)


def prior_baseline(train, test, k: int = 10) -> list[ImageDetections]:
    truth = [train.ground_truth(i) for i in range(len(train))]
    boxes = np.concatenate([t.boxes for t in truth])
    labels = np.concatenate([t.labels for t in truth])
    centres, share = kmeans(boxes, k)
    classes = np.arange(1, labels.max() + 1)
    freq = np.bincount(labels, minlength=len(classes) + 1)[1:] / len(labels)
    det_boxes = np.tile(centres, (len(classes), 1))
    det_labels = np.repeat(classes, k)
    det_scores = (freq[:, None] * share[None]).reshape(-1)
    return [ImageDetections(test.ground_truth(i).image_id, det_boxes, det_scores, det_labels)
            for i in range(len(test))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a `prunecli train experiment=detect_demo` run")
    parser.add_argument("--wall-s", type=float, help="the run's measured wall time (`time`)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/detect_demo.md"))
    args = parser.parse_args()
    bundle = build_datasets({"name": "fashion_det"})
    test = bundle.val
    truth = [test.ground_truth(i) for i in range(len(test))]
    dets = prior_baseline(bundle.train, test)
    base = coco_metrics(truth, dets, bundle.class_names)
    base["voc07_map"] = voc07_map(truth, dets, bundle.num_classes)["voc07_map"]
    rows = [("trivial baseline (10 box priors per class, no pixels)", base, "-")]
    if args.run:
        res = json.loads((args.run / "results.json").read_text())
        wall = f"{args.wall_s:.0f} s" if args.wall_s else f"{res['wall_time_s']:.0f} s (in-run)"
        rows.append((f"ssd_tiny, {res['epochs']} epochs (experiment=detect_demo)", res, wall))
    lines = [
        "# Embedded detection demo (fashion_det, 1,000 test scenes of unseen items)", "",
        "`prunecli train experiment=detect_demo` on 2 shared CPU cores; the baseline by "
        "`python benchmarks/detect_demo.py`. COCO metrics from pycocotools' COCOeval, VOC07 "
        "11-point mAP at IoU 0.5.", "",
        "| detector | " + " | ".join(name for _, name in KEYS) + " | wall time |",
        "|---|" + "---:|" * (len(KEYS) + 1),
    ]
    for name, m, wall in rows:
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.1f}" for k, _ in KEYS) + f" | {wall} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
