"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and primitive values (model/optimizer/scheduler/scaler
state, RNG states, epoch, step, the resolved config, the method's state), so loading it never
executes code. A crash while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from prunecli.errors import CheckpointError

LAST = "last.pt"
CHECKPOINT_VERSION = 1


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over ``path``: a crash or a
    failed write (disk full, read-only folder) never leaves a half file, and the previous
    ``path`` stays as it was; a failed write is a one-line :class:`CheckpointError`."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only or vanished folder: the old file is intact
        _discard(tmp)
        before = "the previous file is intact" if path.exists() else "nothing was written"
        raise CheckpointError(
            f"could not write {path} ({exc.strerror or exc}); {before}; free disk space or "
            "write elsewhere (hydra.run.dir=...)") from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Accept a checkpoint file, or a run directory holding ``last.pt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        candidate = p / LAST
        if not candidate.is_file():
            raise CheckpointError(
                f"no {LAST} in run directory {p}; pass the checkpoint file itself or a run "
                "directory written by `prunecli train`"
            )
        return candidate
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; check the path")
    return p


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load safely; a truncated or foreign file is a one-line error, not a traceback."""
    p = resolve_checkpoint(path)
    with open(p, "rb") as f:
        head = f.read(16)
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: zip, or pickle
        raise CheckpointError(f"checkpoint {p} is corrupt or not a file written by torch.save "
                              f"(it starts with {head[:12]!r}); pass a run directory, its "
                              "last.pt or a slim.pt")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():  # torch's refusal of a global in the pickle
            raise CheckpointError(
                f"checkpoint {p} holds pickled Python objects besides tensors and plain values "
                f"({refused_global(exc)}): refused, loading them could run code; use a file "
                "written by prunecli or torch.save of a state_dict") from None
        raise CheckpointError(f"checkpoint {p} is corrupt or not a prunecli/torch checkpoint "
                              f"({_first_line(exc)}); use an earlier checkpoint or retrain"
                              ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {p} is corrupt or not a prunecli/torch checkpoint ({first}); "
            "use an earlier checkpoint or retrain"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(obj).__name__}, not a dict")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def refused_global(exc: BaseException) -> str:
    """The object torch refused (``Unsupported global: GLOBAL builtins.exec ...``)."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"{match.group(1)} is not allowed" if match else "not allowed by weights_only"


def require_training_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Check that ``ckpt`` was written by the training engine before resuming from it."""
    missing = [k for k in ("model", "optimizer", "epoch", "config") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a prunecli training checkpoint (missing {', '.join(missing)}); "
            "resume needs the last.pt of a `prunecli train` run"
        )
