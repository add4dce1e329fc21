"""scikit-learn's handwritten digits as an ImageFolder tree: a second dataset for the benchmarks.

The 1,797 8x8 digit images ship inside scikit-learn (``sklearn.datasets.load_digits``: no
download), so a benchmark can check on a dataset it was not designed on that what it found on
the embedded Fashion-MNIST subset carries over. prunecli reads them as any ImageFolder dataset
(``data=imagefolder``); the split is fixed (class-balanced, seed 0), written once per folder.
"""

from __future__ import annotations

import json
from pathlib import Path

TRAIN_SIZE = 1000  # the rest (797) is the test split
# ImageFolder settings for these images: 1 channel, resized to 36 then centre-cropped to 32
# (the eval transform, used for training too: no random crops of an 8x8 digit), batch 25 so
# that 1,000 images make the 40 steps per epoch the fine-tune schedules are written for.
OVERRIDES = ["data=imagefolder", "data.image_size=32", "data.channels=1", "data.augment=false",
             "data.hflip=false", "data.batch_size=25", "data.num_workers=0"]


def write_digits(root: Path) -> list[str]:
    """Write ``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png`` (unless already there);
    the ``prunecli train`` overrides that read them."""
    marker = root / "split.json"
    if not marker.is_file():
        try:
            import numpy as np
            from PIL import Image
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise SystemExit(f"the digits dataset needs scikit-learn ({exc}): "
                             "pip install scikit-learn") from None
        digits = load_digits()
        rng = np.random.default_rng(0)
        per_class = TRAIN_SIZE // 10
        counts: dict[str, int] = {"train": 0, "val": 0}
        for label in range(10):
            idx = rng.permutation(np.flatnonzero(digits.target == label))
            for split, part in (("train", idx[:per_class]), ("val", idx[per_class:])):
                folder = root / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                for i in part:
                    pixels = np.clip(digits.images[i] * 16, 0, 255).astype(np.uint8)
                    Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
                counts[split] += len(part)
        marker.write_text(json.dumps(counts) + "\n")
    return [*OVERRIDES, f"data.root={root}"]
