#!/usr/bin/env python
"""Build ``prunecli/data/embedded/fashion_mnist_20k_4k.xz``, the dataset that ships in the wheel.

The default dataset must work right after ``pip install`` with no network and no system
packages, so a class-balanced Fashion-MNIST subset is embedded in the package:

* train: the first 2,000 images of each class of the official training set (20,000 images),
* test: the first 400 images of each class of the official test set (4,000 images),

stored as uint8, grouped by class (source order within a class; this compresses ~1% better than
interleaving, and the loader interleaves on load), and compressed with xz (lzma preset
9|EXTREME).

Input: the four idx files (``*.gz`` or uncompressed) of Fashion-MNIST, by default from Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).

Output format (after xz decompression), read by :mod:`prunecli.data.embedded`::

    16 bytes   magic  b"PRUNECLI-ARRAYS\\0"
    4 bytes    header length N, little-endian uint32
    N bytes    JSON header (UTF-8, sorted keys): arrays (name, dtype, shape), classes, mean, std,
               sha256 of the decompressed source idx files
    ...        the arrays' raw bytes, C order, in the header's order

The output is byte-reproducible for a given liblzma version: the selection is deterministic and
the header contains no timestamps. Run from the repository root::

    python tools/make_embedded_dataset.py            # writes the file, prints mean/std
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import struct
import sys
import time
from pathlib import Path

import numpy as np

from prunecli.data.embedded import FASHION_MNIST_CLASSES as CLASSES
from prunecli.data.embedded import MAGIC

FORMAT_VERSION = 1
REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = REPO / "prunecli" / "data" / "embedded" / "fashion_mnist_20k_4k.xz"


def read_idx(folder: Path, stem: str) -> tuple[np.ndarray, str]:
    """Read one idx file (``stem`` or ``stem.gz``); return the array and the raw bytes' sha256."""
    for path, opener in ((folder / f"{stem}.gz", gzip.open), (folder / stem, open)):
        if path.is_file():
            with opener(path, "rb") as f:
                raw = f.read()
            break
    else:
        sys.exit(
            f"error: {folder / stem}[.gz] not found (install dataset-fashion-mnist or pass "
            f"--source FOLDER with the four Fashion-MNIST idx files)"
        )
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        sys.exit(f"error: {path} is not a uint8 idx file")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    array = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return array, hashlib.sha256(raw).hexdigest()


def select(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class, grouped by class."""
    picks = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) < per_class:
            sys.exit(f"error: class {c} has only {len(idx)} images, need {per_class}")
        picks.append(idx)
    return np.concatenate(picks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="folder with the Fashion-MNIST idx files (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    parser.add_argument("--train-per-class", type=int, default=2000)
    parser.add_argument("--test-per-class", type=int, default=400)
    args = parser.parse_args(argv)

    x_train, h_xtr = read_idx(args.source, "train-images-idx3-ubyte")
    y_train, h_ytr = read_idx(args.source, "train-labels-idx1-ubyte")
    x_test, h_xte = read_idx(args.source, "t10k-images-idx3-ubyte")
    y_test, h_yte = read_idx(args.source, "t10k-labels-idx1-ubyte")

    tr = select(y_train, args.train_per_class)
    te = select(y_test, args.test_per_class)
    arrays = {
        "train_images": x_train[tr],
        "train_labels": y_train[tr],
        "train_source_index": tr.astype("<u2"),
        "test_images": x_test[te],
        "test_labels": y_test[te],
        "test_source_index": te.astype("<u2"),
    }
    pixels = arrays["train_images"].astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())

    header = {
        "format": FORMAT_VERSION,
        "dataset": "fashion_mnist",
        "classes": CLASSES,
        "order": "grouped by class, official order within a class",
        "selection": f"first {args.train_per_class} per class of the official train set, "
        f"first {args.test_per_class} per class of the official test set",
        "mean": [round(mean, 6)],
        "std": [round(std, 6)],
        "arrays": [
            {"name": k, "dtype": v.dtype.str, "shape": list(v.shape)} for k, v in arrays.items()
        ],
        "source_sha256": {
            "train-images-idx3-ubyte": h_xtr,
            "train-labels-idx1-ubyte": h_ytr,
            "t10k-images-idx3-ubyte": h_xte,
            "t10k-labels-idx1-ubyte": h_yte,
        },
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    payload = b"".join(
        [MAGIC, struct.pack("<I", len(head)), head]
        + [np.ascontiguousarray(a).tobytes() for a in arrays.values()]
    )
    t0 = time.perf_counter()
    packed = lzma.compress(
        payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME
    )
    seconds = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(packed)

    print(f"wrote {args.out} ({len(packed):,} bytes from {len(payload):,}, {seconds:.1f} s)")
    print(f"sha256 {hashlib.sha256(packed).hexdigest()}")
    print(f"train {arrays['train_images'].shape}, test {arrays['test_images'].shape}")
    print(f"FASHION_MNIST_MEAN = ({mean:.4f},)")
    print(f"FASHION_MNIST_STD = ({std:.4f},)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
