"""SSD's training augmentation per sample: torchvision's IoU-crop sampler against prunecli's.

Run on demand (not a test; about a minute)::

    python benchmarks/augment_speed.py [--samples 400] [--repeats 5] [--sizes 96 512]

Reads VOC-format samples (``digits_voc.py``'s folder, written if missing) through ``data=voc``'s
training pipeline (decode, photometric distortion, zoom-out, IoU crop, flip, resize) on one
thread, once with ``SafeRandomIoUCrop`` as it is (its trials drawn as one array) and once with
its parameters drawn by torchvision's ``RandomIoUCrop`` (trials one by one), interleaved, and
prints the median milliseconds per sample; ``--out`` writes the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_voc import write_digits_voc  # noqa: E402

from prunecli.data import build_datasets  # noqa: E402
from prunecli.data.detection_transforms import SafeRandomIoUCrop  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("benchmarks/runs_det_digits/digits_voc"))
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 512])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    write_digits_voc(args.root)
    ours = SafeRandomIoUCrop.make_params

    def torchvisions(self, flat_inputs):  # noqa: ANN001, ANN202
        # the empty-boxes shortcut stays, or torchvision's sampler loops for ~18 ms
        boxes = next(x for x in flat_inputs if type(x).__name__ == "BoundingBoxes")
        return {} if boxes.numel() == 0 else v2.RandomIoUCrop.make_params(self, flat_inputs)

    lines = ["| input size | torchvision's sampler, ms/sample | prunecli's, ms/sample | ratio |",
             "|---:|---:|---:|---:|"]
    for size in args.sizes:
        train = build_datasets({"name": "voc", "root": str(args.root), "train_split": "train",
                                "val_split": "val", "image_size": size}).train
        times: dict[str, list[float]] = {"torchvision": [], "prunecli": []}
        for _ in range(args.repeats):
            for name, fn in (("torchvision", torchvisions), ("prunecli", ours)):
                SafeRandomIoUCrop.make_params = fn
                torch.manual_seed(0)
                t0 = time.perf_counter()
                for i in range(args.samples):
                    train[i]
                times[name].append((time.perf_counter() - t0) / args.samples * 1e3)
        SafeRandomIoUCrop.make_params = ours
        a, b = statistics.median(times["torchvision"]), statistics.median(times["prunecli"])
        lines.append(f"| {size} | {a:.2f} | {b:.2f} | {a / b:.1f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(
            "# SSD training augmentation per sample (one thread)\n\n"
            f"`python benchmarks/augment_speed.py {' '.join(sys.argv[1:])}`: {args.samples} "
            "samples of `benchmarks/digits_voc.py`'s VOC folder (photographs 112-176 x 88-144 px "
            "with 1-4 digits of 16-48 px) through data=voc's training pipeline, median of "
            f"{args.repeats} interleaved passes, torch {torch.__version__}.\n\n{table}\n")


if __name__ == "__main__":
    main()
