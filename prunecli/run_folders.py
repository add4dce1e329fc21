"""Run folders, as the commands that read many runs find them (``prunecli report``, ``prunecli
bench runs=``, the sweep summary): a run is a folder holding ``results.json`` (a finished or
stopped ``prunecli train``), wherever it sits below the folders a user names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from prunecli.errors import ConfigError

RESULTS = "results.json"
JOB_ERROR = "error.txt"  # a sweep job's one-line error (the job ended without results)
JOB_TRACEBACK = "traceback.txt"  # and, for an error prunecli did not foresee, its traceback
MODEL_FILES = ("slim.pt", "last.pt")


def folders_arg(runs: Any) -> list[str]:
    """``runs=DIR`` or ``runs=[DIR,...]`` as a list of paths (one-line errors otherwise);
    ``None``: the key was not given (read a ``???`` key with ``OmegaConf.select``)."""
    if runs is None:
        raise ConfigError("runs is required: runs=SWEEP_DIR or runs=[RUN_OR_SWEEP_DIR,...]")
    if isinstance(runs, (str, int, float)):
        return [str(runs)]
    items = list(runs) if OmegaConf.is_list(runs) or isinstance(runs, (list, tuple)) else None
    if items is None or not all(isinstance(r, (str, int, float)) for r in items):
        shown = OmegaConf.to_yaml(runs).strip() if OmegaConf.is_config(runs) else runs
        raise ConfigError(f"runs={shown} must be a folder or a list of folders")
    if not items:
        raise ConfigError("runs=[] names no folder; give runs=DIR or runs=[DIR,...]")
    return [str(r) for r in items]


def natural_key(text: str) -> list[Any]:
    """Sort job folders 2 before 10, as Hydra numbers them."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def find_run_dirs(paths: Sequence[str | Path], with_model: bool = False) -> list[Path]:
    """Every folder holding results.json at or below the given paths (hidden folders such as
    ``.hydra`` skipped), each once, in the order of the paths given. ``with_model``: only those
    that also hold a model file (``prunecli eval`` folders have results but no model). A path
    that does not exist or holds no run is an error naming it: leaving out a mistyped folder
    silently would mislead."""
    found: dict[Path, None] = {}
    what = f"{RESULTS} with {' or '.join(MODEL_FILES)}" if with_model else RESULTS
    for raw in paths:
        base = Path(raw).expanduser()
        if not base.exists():
            raise ConfigError(f"runs: {raw} does not exist; give run or sweep folders")
        if base.is_file():
            if base.name != RESULTS:
                raise ConfigError(f"runs: {raw} is a file; give a run folder (one holding "
                                  f"{RESULTS}) or a folder above run folders")
            base = base.parent
        hits = [f.parent for f in base.rglob(RESULTS)
                if f.is_file() and not any(p.startswith(".")
                                           for p in f.relative_to(base).parts[:-1])
                and (not with_model or any((f.parent / m).is_file() for m in MODEL_FILES))]
        if not hits:
            raise ConfigError(f"no runs in {raw}: found no {what} in it or in any folder below "
                              "it (a training run writes them when it ends)")
        for hit in sorted(hits, key=lambda p: natural_key(str(p))):
            found.setdefault(hit.resolve(), None)
    return list(found)


def run_overrides(run_dir: Path) -> str:
    """The run's own command-line overrides (Hydra's record), without ``hydra.*`` ones."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    try:
        items = OmegaConf.load(path)
    except Exception:  # a damaged Hydra record only costs the overrides column
        return ""
    if not OmegaConf.is_list(items):
        return ""
    return " ".join(str(o) for o in items if not str(o).startswith("hydra."))


def keep_varying_overrides(rows: list[dict[str, Any]]) -> None:
    """Show only the overrides that differ between runs (the swept values), in place."""
    if len(rows) < 2:
        return
    common = set.intersection(*(set(r["overrides"].split()) for r in rows))
    for r in rows:
        r["overrides"] = " ".join(o for o in r["overrides"].split() if o not in common)
