"""A run's ``metrics.jsonl`` as curves on one axis, optimizer steps: training loss, validation
metric and the cost kept after each pruning event.

Epoch records carry the step at the epoch's end; older ones do not, and then it is
``epoch * steps_per_epoch``, with steps per epoch inferred from the train records (each says its
1-based epoch and the global step it was logged at) or, failing those, the pruning events (their
epoch is 0-based). A killed run may leave a truncated last line: unparsable lines are skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunecli.reporting.runs import number

METRICS = "metrics.jsonl"


@dataclass
class Curves:
    """What the training-curve figure draws for one run."""

    loss: list[tuple[float, float]] = field(default_factory=list)  # (step, training loss)
    val: list[tuple[float, float]] = field(default_factory=list)  # (step, validation metric)
    # (step, cost kept fraction) after each pruning event
    prune: list[tuple[float, float]] = field(default_factory=list)
    last_step: float | None = None
    steps_per_epoch: float | None = None
    skipped_lines: int = 0  # truncated or damaged lines (a killed run)
    val_unplaced: bool = False  # validation records, but nothing tells their step

    @property
    def empty(self) -> bool:
        return not (self.loss or self.val or self.prune)


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON-lines file and the number of lines that were not one."""
    records, bad = [], 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    return records, bad


def steps_per_epoch(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Steps per epoch from ``(1-based epoch, global step)`` pairs: a step logged in epoch ``e``
    lies in ``((e-1) * n, e * n]``, so ``n >= step / e``; the smallest whole ``n`` that fits
    every pair (exact once a record falls on an epoch's last step, a little low otherwise)."""
    pairs = [(e, s) for e, s in pairs if e >= 1 and s > 0]
    if not pairs:
        return None
    low = max(s / e for e, s in pairs)
    high = min((s / (e - 1) for e, s in pairs if e > 1), default=math.inf)
    n = math.ceil(low - 1e-9)
    # on the boundary is allowed: a pruning event at an epoch's start has step == (e-1) * n
    return float(n) if n <= high + 1e-9 else low  # inconsistent records: the bound itself


def _int_epoch(value: Any) -> float | None:
    v = number(value)
    return v if v is not None and v == int(v) else None


def read_curves(run_dir: Path, metric: str, epochs: Any = None) -> Curves | None:
    """The run's curves, or None without a metrics.jsonl."""
    path = run_dir / METRICS
    if not path.is_file():
        return None
    records, bad = read_jsonl(path)
    curves = Curves(skipped_lines=bad)
    train, epoch_records, prune = [], [], []
    for r in records:
        kind = r.get("kind")
        step = number(r.get("step"))
        if kind == "train" and step is not None:
            train.append(r)
        elif kind == "epoch" and number(r.get("epoch")) is not None:
            epoch_records.append(r)
        elif kind == "prune" and step is not None:
            prune.append(r)
    spe = steps_per_epoch([(e, float(r["step"])) for r in train
                           if (e := _int_epoch(r.get("epoch"))) is not None])
    if spe is None:  # a short run logs no train records; prune events say epoch and step too
        spe = steps_per_epoch([(e + 1, float(r["step"])) for r in prune
                               if (e := _int_epoch(r.get("epoch"))) is not None])
    curves.steps_per_epoch = spe

    def at_end(r: dict[str, Any]) -> float | None:
        """The step at an epoch record's end: its own, else inferred."""
        step = number(r.get("step"))
        if step is None and spe is not None:
            step = float(r["epoch"]) * spe
        return step

    curves.loss = [(float(r["step"]), v) for r in train if (v := number(r.get("loss"))) is not None]
    if not curves.loss:  # no step records: the epoch means
        curves.loss = [(s, v) for r in epoch_records if (s := at_end(r)) is not None
                       and (v := number(r.get("train_loss"))) is not None]
    val = [(at_end(r), v) for r in epoch_records
           if (v := number(r.get(f"val_{metric}"))) is not None]
    curves.val = [(s, v) for s, v in val if s is not None]
    curves.val_unplaced = len(curves.val) < len(val)
    curves.prune = [(float(r["step"]), v) for r in prune
                    if (v := number(r.get("cost_kept"))) is not None]
    steps = [s for s, _ in curves.loss + curves.val + curves.prune]
    if spe is not None and number(epochs) is not None:
        steps.append(float(epochs) * spe)
    curves.last_step = max(steps, default=None)
    for items in (curves.loss, curves.val, curves.prune):
        items.sort()
    return curves

