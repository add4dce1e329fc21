"""The training and validation loaders of a run, and the training sampler that can start an
epoch part-way (a run preempted mid-epoch resumes at the next batch, not at the epoch's start)."""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
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


_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()
_WORKER_PROCESSES: weakref.WeakSet = weakref.WeakSet()  # every worker those iterators started
_EXIT_HOOKED = False


class WorkerLoader(DataLoader):
    """A DataLoader whose worker processes are shut down before the interpreter exits.

    The workers ignore SIGTERM (:func:`ignore_preemption_signals`: a preempted run must write its
    checkpoint first), and multiprocessing's exit handler stops daemonic children with SIGTERM,
    then joins them. A process that still holds a multi-process iterator at exit (the persistent
    training workers) would wait for them forever: every run with ``data.num_workers > 0``
    (not ``trainer.deterministic``) hung after writing its results, found by the first GPU
    check. Each such iterator is recorded here and shut down the normal way (what its own
    ``__del__`` does) by an exit handler registered after multiprocessing's, so it runs first.
    """

    def __iter__(self) -> Any:
        it = super().__iter__()
        if self.num_workers > 0:
            _track(it)
        return it


def _track(iterator: Any) -> None:
    global _EXIT_HOOKED
    _LIVE_ITERATORS.add(iterator)
    _WORKER_PROCESSES.update(getattr(iterator, "_workers", ()))
    if not _EXIT_HOOKED:  # the workers have started, so multiprocessing's handler is registered
        atexit.register(_at_exit)
        _EXIT_HOOKED = True


def shutdown_workers(loader: DataLoader | None = None) -> None:
    """Stop the workers of ``loader``'s iterator, or of every live :class:`WorkerLoader`
    iterator (idempotent). A run calls it for its loaders when it ends, so that no worker is
    left to garbage collection: an iterator collected late (a process running several
    trainings, as a notebook or a test session) could leave a worker behind, and one that
    ignores SIGTERM holds the interpreter's exit forever."""
    if loader is not None:
        iterator = getattr(loader, "_iterator", None)
        iterators = [] if iterator is None else [iterator]
        loader._iterator = None  # type: ignore[attr-defined]  # a later epoch starts afresh
    else:
        iterators = list(_LIVE_ITERATORS)
    for iterator in iterators:
        stop = getattr(iterator, "_shutdown_workers", None)
        if stop is not None:
            stop()
        _LIVE_ITERATORS.discard(iterator)


@contextlib.contextmanager
def workers_stopped_after(loader_of: Callable[[], DataLoader]) -> Iterator[None]:
    """Stop the workers of the loader ``loader_of()`` returns when the block ends, however it
    ends (the training loop: its loader's persistent workers are not needed after it)."""
    try:
        yield
    finally:
        shutdown_workers(loader_of())


def _kill_stray_workers() -> None:
    """Workers still alive at exit whose iterator is gone (collected late, its shutdown
    incomplete): they ignore SIGTERM, so multiprocessing's exit handler would join them
    forever."""
    stray = [proc for proc in list(_WORKER_PROCESSES) if proc.is_alive()]
    if not stray:
        return
    # torch's SIGCHLD handler raises for a worker killed by a signal: not news at exit
    if hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for proc in stray:
        proc.kill()
    for proc in stray:
        proc.join(timeout=5)


def _at_exit() -> None:
    shutdown_workers()
    _kill_stray_workers()


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
    train = WorkerLoader(
        data.train, batch_size=dcfg.batch_size, sampler=sampler, num_workers=workers,
        pin_memory=pin, drop_last=shard > dcfg.batch_size,
        # persistent workers draw their seeds once, which a resumed run cannot replay
        persistent_workers=workers > 0 and not cfg.trainer.deterministic,
        worker_init_fn=ignore_preemption_signals if workers > 0 else None,
        collate_fn=collate_fn)
    val = WorkerLoader(
        data.val, batch_size=dcfg.eval_batch_size or 2 * dcfg.batch_size,
        sampler=ShardSampler(len(data.val), dist.rank, dist.world_size), num_workers=workers,
        pin_memory=pin, worker_init_fn=ignore_preemption_signals if workers > 0 else None,
        collate_fn=collate_fn)
    limit = cfg.trainer.limit_train_batches
    return Loaders(sampler, train, val, min(len(train), limit or len(train)))
