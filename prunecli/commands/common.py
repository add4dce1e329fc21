"""What every command shares: turning user errors into one clear line, and the run folder."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig

from prunecli.config.validate import check_known_keys
from prunecli.errors import PrunecliError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors_as_one_line(fn: F) -> F:
    """Check the config's keys first; a PrunecliError then ends the command with its message
    and exit status 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            check_known_keys(cfg)
            return fn(cfg, *args, **kwargs)
        except PrunecliError as exc:
            print(f"prunecli: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def run_dir() -> Path:
    """This job's Hydra output folder (per job in a multirun)."""
    return Path(HydraConfig.get().runtime.output_dir)


def task_overrides() -> list[str]:
    """The ``key=value`` overrides the user typed for this job."""
    return list(HydraConfig.get().overrides.task)
