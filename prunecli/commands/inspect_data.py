"""``prunecli inspect data=NAME data.root=DIR``: read a dataset as training would, decode every
image, and report what is there and every file that training would stop at.

Training finds a broken or mis-sized image only when an epoch reaches it (the first 8 of each
split are checked when the dataset is built), and stops at the first; this finds all of them in
one pass, before hours of training. For detection it also says how large the objects are at the
model's input size, where SSD-style detectors lose the smallest ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import rich
from rich.table import Table

from prunecli.data.detection_files import TINY_PX, object_sizes
from prunecli.errors import DataError, PrunecliError

#: problems listed one per line (the rest are counted)
LISTED = 20


def image_reader(dataset: Any) -> tuple[int, Callable[[int], Any]] | None:
    """``(count, read(i))`` for a dataset read from files: a detection split (decoded and
    checked against its annotated size) or an ImageFolder (decoded); None for data held in
    memory (the embedded sets, CIFAR), which has nothing to decode."""
    if hasattr(dataset, "read_image"):
        return len(dataset), dataset.read_image
    indices = None
    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # a Subset (train_size)
        indices, dataset = list(dataset.indices), dataset.dataset
    if hasattr(dataset, "samples") and hasattr(dataset, "loader"):
        paths = [dataset.samples[i][0] for i in (indices or range(len(dataset.samples)))]
        return len(paths), lambda i: dataset.loader(paths[i])
    return None


def find_problems(dataset: Any, threads: int) -> tuple[int, list[str]] | None:
    """Decode every image of ``dataset`` (``threads`` at a time): the count and the message of
    each one that fails; None when the data is in memory."""
    reader = image_reader(dataset)
    if reader is None:
        return None
    count, read = reader

    def attempt(i: int) -> str | None:
        try:
            read(i)
        except PrunecliError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        problems = [m for m in pool.map(attempt, range(count)) if m]
    return count, problems


def inspect_data(data_cfg: Any, threads: int | None = None) -> None:
    """Build ``data_cfg``'s dataset (its readers' checks and descriptions run), decode every
    image, print a table per split and the problems; a DataError naming them if any."""
    from prunecli.data import build_datasets
    from prunecli.data.detection_files import SIZE_CHECKS

    threads = threads or min(8, os.cpu_count() or 1)
    token = SIZE_CHECKS.set(0)  # every image is checked below, all problems listed
    try:
        bundle = build_datasets(data_cfg)
    finally:
        SIZE_CHECKS.reset(token)
    detection = bundle.task == "detection"
    table = Table(title=f"data={data_cfg.name}: {bundle.num_classes} classes, "
                        f"{bundle.channels} channels, input {bundle.image_size} px "
                        "(data.image_size)",
                  title_justify="left")
    for column in ("split", "images", "decoded") + (
            ("objects", "small / medium / large", f"under {TINY_PX} px at input")
            if detection else ("per class (fewest / most)",)):
        table.add_column(column, justify="left" if column == "split" else "right")
    problems: list[str] = []
    from_files = False
    for split, ds in (("train", bundle.train), ("val", bundle.val)):
        found = find_problems(ds, threads)
        from_files |= found is not None
        decoded = "in memory" if found is None else (
            f"{found[0] - len(found[1])} of {found[0]}")
        if found is not None:
            problems += [f"{split}: {m}" for m in found[1]]
        if detection and hasattr(ds, "annotations"):
            sizes = object_sizes(ds.annotations, bundle.image_size)
            objects = int((~ds.annotations.ignore).sum())
            table.add_row(split, str(len(ds)), decoded, str(objects),
                          f"{sizes['small']} / {sizes['medium']} / {sizes['large']}",
                          f"{sizes['tiny']} ({100 * sizes['tiny'] / max(1, objects):.0f}%)")
        elif detection:
            table.add_row(split, str(len(ds)), decoded, "-", "-", "-")
        else:
            table.add_row(split, str(len(ds)), decoded, per_class_range(ds))
    console = rich.get_console()
    console.print(table)
    if not problems:
        console.print("nothing to decode: the images are held in memory" if not from_files else
                      "every image decodes" + (" at its annotated size" if detection else ""))
        return
    for line in problems[:LISTED]:
        console.print(line, markup=False, highlight=False)
    more = f" ({len(problems) - LISTED} more not listed)" if len(problems) > LISTED else ""
    raise DataError(f"{len(problems)} images of data={data_cfg.name} would stop training{more}; "
                    "fix or remove them (listed above)")


def per_class_range(dataset: Any) -> str:
    """``"fewest / most"`` images per class of a labelled dataset, ``-`` when unknown."""
    targets = getattr(dataset, "targets", None)
    if targets is None and hasattr(dataset, "dataset") and hasattr(dataset, "indices"):
        inner = getattr(dataset.dataset, "targets", None)
        targets = None if inner is None else [inner[i] for i in dataset.indices]
    if targets is None:
        return "-"
    counts = np.bincount(np.asarray(targets, dtype=np.int64))
    return f"{counts.min()} / {counts.max()}"
