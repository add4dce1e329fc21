"""``method=none``: dense training, the baseline every pruning method is compared with."""

from __future__ import annotations

from typing import Any

from prunecli.engine.events import TrainingHooks


class NoPruning(TrainingHooks):
    """Uses every default (no-op) hook."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
