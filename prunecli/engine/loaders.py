"""The training and validation loaders of a run, and the training sampler that can start an
epoch part-way (a run preempted mid-epoch resumes at the next batch, not at the epoch's start)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from prunecli.engine.distributed import DistEnv
from prunecli.engine.evaluate import ShardSampler
from prunecli.engine.preempt import ignore_preemption_signals


class ResumableSampler(DistributedSampler):
    """A DistributedSampler whose next epoch can skip its first ``n`` indices: the batches that
    follow are exactly those of the unbroken epoch (same order, same batch boundaries)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def skip_next(self, n: int) -> None:
        """The next ``__iter__`` (only) starts at index ``n`` of this rank's shard."""
        self._skip = n

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


@dataclass
class Loaders:
    sampler: ResumableSampler
    train: DataLoader
    val: DataLoader
    batches_per_epoch: int  # training batches per epoch, after trainer.limit_train_batches


def build_loaders(data: Any, cfg: Any, dist: DistEnv, device: torch.device,
                  collate_fn: Any) -> Loaders:
    """``data``: a DatasetBundle; ``cfg``: the run config (data, trainer, seed)."""
    dcfg = cfg.data
    pin = dcfg.pin_memory and device.type == "cuda"
    sampler = ResumableSampler(data.train, num_replicas=dist.world_size, rank=dist.rank,
                               shuffle=True, seed=cfg.seed)
    shard = len(sampler)
    workers = dcfg.num_workers
    train = DataLoader(
        data.train, batch_size=dcfg.batch_size, sampler=sampler, num_workers=workers,
        pin_memory=pin, drop_last=shard > dcfg.batch_size,
        # persistent workers draw their seeds once, which a resumed run cannot replay
        persistent_workers=workers > 0 and not cfg.trainer.deterministic,
        worker_init_fn=ignore_preemption_signals if workers > 0 else None,
        collate_fn=collate_fn)
    val = DataLoader(
        data.val, batch_size=dcfg.eval_batch_size or 2 * dcfg.batch_size,
        sampler=ShardSampler(len(data.val), dist.rank, dist.world_size), num_workers=workers,
        pin_memory=pin, worker_init_fn=ignore_preemption_signals if workers > 0 else None,
        collate_fn=collate_fn)
    limit = cfg.trainer.limit_train_batches
    return Loaders(sampler, train, val, min(len(train), limit or len(train)))
