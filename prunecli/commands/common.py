"""What every command shares: turning user errors into one clear line, and the run folder."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig

from prunecli.config.validate import check_known_keys, check_value_ranges
from prunecli.errors import PrunecliError
from prunecli.run_folders import JOB_ERROR, JOB_TRACEBACK

F = TypeVar("F", bound=Callable[..., Any])


def user_errors_as_one_line(fn: F) -> F:
    """Check the config's keys and value ranges first; a PrunecliError then ends the command
    with its message and exit status 2, no traceback. In a sweep (``-m``) it ends only that
    job: the message goes to the job's ``error.txt`` and the sweep goes on (one unreachable
    budget or one diverged run must not cost the other points); the sweep summary lists the
    failed jobs and the command exits with status 1. An error prunecli did not foresee keeps
    its traceback; in a sweep it too ends only its job, the traceback in ``traceback.txt``."""

    @functools.wraps(fn)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                check_known_keys(cfg)
                check_value_ranges(cfg)
                return fn(cfg, *args, **kwargs)
            except RuntimeError as exc:  # out of memory: a user's setting, said in one line
                command = fn.__module__.rsplit(".", 1)[-1]
                if (advice := out_of_memory(exc, command)) is None:
                    raise
                raise PrunecliError(advice) from None
        except PrunecliError as exc:
            message = one_line_message(exc)
            if in_sweep():
                return end_job(message)
            print(f"prunecli: error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except Exception as exc:
            if not in_sweep():
                raise
            text = traceback.format_exc()
            print(text, file=sys.stderr, flush=True)
            folder = run_dir()
            folder.mkdir(parents=True, exist_ok=True)
            (folder / JOB_TRACEBACK).write_text(text)
            first = (str(exc).strip().splitlines() or [""])[0]
            return end_job(f"{type(exc).__name__}: {first} (an error prunecli does not "
                           f"foresee: its traceback is in {folder / JOB_TRACEBACK}; please "
                           "report it with that file)")

    return wrapper  # type: ignore[return-value]


def end_job(message: str) -> None:
    """End a sweep job with ``message``: said on stderr with the job's overrides and written to
    its ``error.txt``, which the sweep summary and ``prunecli report`` read."""
    overrides = " ".join(o for o in task_overrides() if not o.startswith("hydra."))
    print(f"prunecli: error in job {HydraConfig.get().job.num} ({overrides}): {message}",
          file=sys.stderr, flush=True)
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JOB_ERROR).write_text(message + "\n")


#: what to lower when a command runs out of memory
MEMORY_ADVICE = {
    "train": "lower data.batch_size (trainer.grad_accum=N keeps the global batch) or use "
             "trainer.precision=bf16; the last checkpoint is kept: resume=RUN continues",
    "eval": "lower data.eval_batch_size or use trainer.precision=bf16",
    "bench": "lower batch_sizes",
    "lut": "lower batch_size",
}


def out_of_memory(exc: BaseException, command: str) -> str | None:
    """The one-line advice for torch's out-of-memory errors (CUDA's ``OutOfMemoryError``, the
    CPU allocator's "can't allocate memory", DataLoader workers out of shared memory) in
    ``command``, None for any other error."""
    text = str(exc).strip()
    if "shared memory" in text and "DataLoader worker" in text:  # Docker's 64 MB /dev/shm
        return ("the data loader's workers ran out of shared memory (/dev/shm): run the "
                "container with --shm-size=8g or --ipc=host, or set data.num_workers=0")
    cuda = type(exc).__name__ == "OutOfMemoryError"
    if not cuda and "can't allocate memory" not in text:
        return None
    first = text.splitlines()[0] if text else type(exc).__name__
    if "DefaultCPUAllocator" in first:  # "[enforce fail at alloc_cpu.cpp:127] err == 0. ..."
        first = first[first.find("DefaultCPUAllocator"):]
    return (f"out of memory ({first.rstrip('.')}): "
            f"{MEMORY_ADVICE.get(command, 'lower the batch size')}")


def in_sweep() -> bool:
    """True inside a job of a multirun (``-m``)."""
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def one_line_message(exc: BaseException) -> str:
    """The error's own line. A DataLoader worker re-raises a dataset's error with the worker's
    traceback in the message ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."); its last line is the original ``DataError: message``."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        # the traceback names the class with its module: prunecli.errors.DataError: ...
        name, sep, message = last.partition(": ")
        return message if sep and name.rsplit(".", 1)[-1] == type(exc).__name__ else last
    return text


def run_dir() -> Path:
    """This job's Hydra output folder (per job in a multirun)."""
    return Path(HydraConfig.get().runtime.output_dir)


def task_overrides() -> list[str]:
    """The ``key=value`` overrides the user typed for this job."""
    return list(HydraConfig.get().overrides.task)


def typed_keys() -> set[str]:
    """The config keys of :func:`task_overrides` (``+a.b=1``, ``~a.b`` -> ``a.b``)."""
    return {o.lstrip("~+").split("=", 1)[0] for o in task_overrides()}


def model_input(model_cfg: Any, input_size: Any, num_classes: int | None
                ) -> tuple[tuple[int, ...], int]:
    """``(C, H, W)`` and the class count to build a model with when no data says them: the
    given values, else a detector's native size and COCO's 80 classes, else 3x224x224 and
    ImageNet's 1000."""
    from prunecli.errors import ConfigError
    from prunecli.models.detection import native_input_size

    size = native_input_size(model_cfg)
    shape = tuple(input_size) if input_size else ((3, size, size) if size else (3, 224, 224))
    if len(shape) != 3:
        raise ConfigError(f"input_size={list(shape)} must be [C, H, W]")
    return shape, int(num_classes or (80 if size else 1000))
