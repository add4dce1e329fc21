"""Evaluation over a (possibly sharded) loader, shared by training and `prunecli eval`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import Sampler

from prunecli.engine.metrics import ClassificationMeter
from prunecli.engine.precision import Precision


class ShardSampler(Sampler[int]):
    """Rank r takes indices r, r+W, r+2W, ...: every sample exactly once over all ranks (a
    DistributedSampler pads with duplicates, which would bias the reduced accuracy)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, precision: Precision,
             channels_last: bool = False, limit: int | None = None) -> dict[str, float]:
    """Loss / top-1 / top-5 of ``model`` (the unwrapped module: no DDP collectives in eval)."""
    was_training = model.training
    model.eval()
    meter = ClassificationMeter(device)
    criterion = nn.CrossEntropyLoss()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for i, (images, targets) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
        targets = targets.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(images)
        logits = logits.float()
        meter.update(logits, targets, criterion(logits, targets))
    model.train(was_training)
    return meter.compute()
