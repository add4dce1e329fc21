"""The run's log of figures: ``metrics.jsonl`` always (the source of ``prunecli report``), and
TensorBoard scalars beside it with ``logger=tensorboard``.

Records are ``write(kind=..., **fields)``: ``train`` (every ``trainer.log_every`` steps),
``epoch`` (after each evaluation), ``prune`` (each pruning event: cost kept, channels kept) and
``results`` (once, at the end). Only rank 0 gets a real log.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from prunecli.errors import ConfigError

LOGGERS = ("jsonl", "tensorboard")
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class RunLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and, when asked, mirrors the
    numbers to TensorBoard (``<run>/tensorboard``), with the optimizer step as the x axis."""

    def __init__(self, run_dir: Path | None, logger: str = "jsonl", fresh: bool = False) -> None:
        """``fresh``: a new run, whose log starts empty (an earlier attempt that crashed before
        its first checkpoint leaves lines that are not this run's); a resumed run appends."""
        if logger not in LOGGERS:
            raise ConfigError(f"logger={logger} is not one of {', '.join(LOGGERS)}")
        self.path = None if run_dir is None else Path(run_dir) / METRICS_FILE
        if fresh and self.path is not None:
            self.path.unlink(missing_ok=True)
        self.start = time.time()
        self.tensorboard: Any = None
        if logger == "tensorboard" and run_dir is not None:
            self.tensorboard = _tensorboard_writer(Path(run_dir) / TENSORBOARD_DIR)

    def write(self, **record: Any) -> None:
        if self.path is None:
            return
        record.setdefault("time", round(time.time() - self.start, 3))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self._scalars(record)

    def _scalars(self, record: dict[str, Any]) -> None:
        kind, step = record.get("kind"), record.get("step")
        if step is None or kind not in ("train", "epoch", "prune"):
            return
        prefix = {"train": "train_step", "epoch": "", "prune": "pruning"}[kind]
        for key, value in record.items():
            if key in ("kind", "step", "time", "epoch") or isinstance(value, bool) \
                    or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            # epoch records: train_loss -> train/loss, val_top1 -> val/top1
            tag = key.replace("_", "/", 1) if not prefix and "_" in key else key
            self.tensorboard.add_scalar(f"{prefix}/{tag}" if prefix else tag, value, int(step))
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("logger=tensorboard needs the tensorboard package: pip install "
                          "tensorboard (or pip install 'prunecli[tensorboard]'), or use "
                          "logger=jsonl") from None
    return SummaryWriter(log_dir=str(folder))
