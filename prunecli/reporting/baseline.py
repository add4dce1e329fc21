"""An evaluation set beside another model's on the same images (``prunecli eval baseline=``).

A pruned model's whole-set figure can hide that a few classes paid for most of the loss; the
per-class rows are therefore merged with the baseline's and ordered by the change of the task's
primary figure, the classes that lost most first.
"""

from __future__ import annotations

import math
from typing import Any

#: the per-class figure that goes with each primary metric
PER_CLASS_KEY = {"top1": "top-1 %", "map": "AP", "map50": "AP50", "voc07_map": "VOC07 AP"}


def per_class_key(metric: str, row: dict[str, Any]) -> str:
    """The per-class figure to compare for ``metric`` (the row's first number otherwise)."""
    key = PER_CLASS_KEY.get(metric)
    if key in row:
        return key  # type: ignore[return-value]
    return next(k for k, v in row.items() if isinstance(v, float))


def merge_per_class(rows: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]],
                    metric: str) -> dict[str, dict[str, Any]]:
    """``rows`` with the baseline's figure and the change added to each class, the largest
    loss first; a class without samples (nan) goes last. Classes are matched by name."""
    if not rows:
        return {}
    key = per_class_key(metric, next(iter(rows.values())))
    merged = {}
    for name, row in rows.items():
        before = base.get(name, {}).get(key, math.nan)
        merged[name] = {**row, f"{key} baseline": before, "change": row[key] - before}

    def order(item: tuple[str, dict[str, Any]]) -> tuple[bool, float]:
        change = item[1]["change"]
        return (change != change, change if change == change else 0.0)

    return dict(sorted(merged.items(), key=order))


def against_baseline(results: dict[str, Any], base: dict[str, Any], path: str) -> dict[str, Any]:
    """``results`` with ``base`` (the baseline's results on the same images) folded in: a
    ``baseline`` entry, the MACs and params kept relative to it, and merged per-class rows."""
    metric = results["metric"]
    out = dict(results)
    out["baseline"] = {"checkpoint": path,
                       **{k: v for k, v in base.items() if k not in ("per_class", "metric")}}
    out["change"] = results[metric] - base[metric]
    out["dense_macs"], out["dense_params"] = base["macs"], base["params"]
    if results.get("per_class") and base.get("per_class"):
        out["per_class"] = merge_per_class(results["per_class"], base["per_class"], metric)
    return out
