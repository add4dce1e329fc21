"""Preemption: a signal asks the run to stop; it finishes the current optimizer step, writes its
checkpoint and exits with :data:`EXIT_PREEMPTED`, so that the same command with ``resume=auto``
continues where it stopped.

Signals: SIGTERM (SLURM's preemption and time limit, ``kill``, torchrun passing on its own),
SIGUSR1 (the usual ``#SBATCH --signal=USR1@90`` warning) and, inside a submitit job, submitit's
preemption signal (SIGUSR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise). A handler that was
installed before ours (submitit's, which requeues the job) is called after the checkpoint is
written. Ctrl-C (SIGINT, where Python's own handler is in place) stops the same way, with exit
status 130; a second Ctrl-C stops at once (KeyboardInterrupt), losing the unsaved steps. Under
DDP every rank stops at the same step: the flag is reduced over a host-side (gloo) group once per
optimizer step, which never waits for the GPU.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("prunecli")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, run the command again
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


class Preempted(Exception):  # noqa: N818 - it is an event, not an error
    """Raised after the checkpoint of a preempted run is written; the CLI exits with
    :data:`EXIT_PREEMPTED`."""

    exit_code = EXIT_PREEMPTED


def preemption_signals() -> list[signal.Signals]:
    """SIGTERM, SIGUSR1, and submitit's preemption signal inside a submitit job."""
    names = ["SIGTERM", "SIGUSR1"]
    if any(k.startswith("SUBMITIT_") for k in os.environ):
        names.append("SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
                     .removeprefix("SIG"))
    return [getattr(signal, n) for n in dict.fromkeys(names) if hasattr(signal, n)]


class PreemptionWatch:
    """Catches the preemption signals while training (``with watch:``) and answers
    :meth:`requested` the same on every rank."""

    def __init__(self, distributed: bool = False) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._group: Any = None
        if distributed and dist.is_available() and dist.is_initialized():
            # a CPU group: reducing a flag there needs no GPU synchronisation
            self._group = (None if dist.get_backend() == "gloo"
                           else dist.new_group(backend="gloo"))
            self._reduce = True
        else:
            self._reduce = False

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not in the main thread: preemption signals are not caught")
            return self
        for sig in preemption_signals():
            self._previous[sig] = signal.signal(sig, self._catch)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not a notebook's own
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._catch)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _catch(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: now
        if self.signum is None:
            self.signum = signum
            if signum == signal.SIGINT:
                log.warning("Ctrl-C: finishing this step, then writing the checkpoint (Ctrl-C "
                            "again stops at once, without it)")
            else:
                log.warning("received %s: finishing this step, then writing the checkpoint",
                            signal.Signals(signum).name)

    @property
    def interrupted(self) -> bool:
        """The stop is a Ctrl-C, not a preemption (the words and exit status differ)."""
        return self.signum == signal.SIGINT

    def requested(self) -> bool:
        """Whether any rank received a preemption signal (a collective under DDP: every rank
        calls it at the same point)."""
        if not self._reduce:
            return self.signum is not None
        flag = torch.tensor([0 if self.signum is None else 1], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def stop(self, step: int, where: str, run_dir: Any) -> Preempted:
        """After the checkpoint ``where`` is written: the log line, the previous handler's turn
        (:meth:`hand_over`), and the :class:`Preempted` that ends the run."""
        what = "interrupted" if self.interrupted else "preempted"
        log.warning("%s: checkpoint %s written; run the same command with resume=auto "
                    "(or resume=%s) to continue", what, where, run_dir)
        self.hand_over()
        stop = Preempted(f"{what} at step {step}; checkpoint {where}; continue with "
                         f"resume=auto (same run folder) or resume={run_dir}")
        stop.exit_code = EXIT_INTERRUPTED if self.interrupted else EXIT_PREEMPTED
        return stop

    def hand_over(self) -> None:
        """Call the handler that was installed before ours for the signal received (submitit's
        requeue); the default action and 'ignore' are not called."""
        previous = self._previous.get(self.signum) if self.signum is not None else None
        if callable(previous) and not self.interrupted:  # Python's would raise KeyboardInterrupt
            previous(self.signum, None)


def ignore_preemption_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SLURM and ``kill -TERM -PGID`` signal every process, and a
    data worker killed by it would end the run before its checkpoint is written; the workers
    stop when the loader shuts them down (or, orphaned, by their parent watchdog). A Ctrl-C
    reaches every process of the terminal's group: the workers leave it to the main process."""
    for sig in (*preemption_signals(), signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
