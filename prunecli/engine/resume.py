"""Resuming a run: which config keys come from the checkpoint and which from the command line.

A resumed run must train the same model the same way, so the checkpoint's config wins; only
how this session runs, and the run-defining keys the user typed, come from today's command.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prunecli.config.paths import anchor_paths

log = logging.getLogger("prunecli")

# Keys a resumed run takes from the command line; everything else comes from the checkpoint.
# How this session runs (device, threads, logging, where to stop): always today's values.
SESSION_KEYS = ("resume", "trainer.progress", "trainer.stop_after_epoch", "trainer.log_every",
                "logger")
# What the run is, changeable on resume: today's value only where the user typed it (a default
# must not shorten a 6-epoch run to the default 5, lose the data folder the run was given, or
# change the thread count and with it the float rounding of a deterministic run).
TYPED_KEYS = ("trainer.epochs", "trainer.device", "trainer.threads", "data.num_workers",
              "data.root")
RUN_CONTROL_KEYS = SESSION_KEYS + TYPED_KEYS


def merge_resume_config(current: DictConfig, saved: dict[str, Any],
                        typed: Collection[str] | None = None) -> DictConfig:
    """The saved run's config, with the run-control keys taken from ``current`` (those of
    :data:`TYPED_KEYS` only if they are in ``typed``, the keys on the command line; ``None``:
    all of them, for a config built in Python); other differences are reported (a resumed run
    must train the same model the same way)."""
    merged = OmegaConf.create(saved)
    for key in RUN_CONTROL_KEYS:
        if key in TYPED_KEYS and typed is not None and key not in typed:
            continue
        value = OmegaConf.select(current, key)
        if key in TYPED_KEYS and value != OmegaConf.select(merged, key):
            log.info("resume: %s=%s (the checkpoint's run had %s)", key, value,
                     OmegaConf.select(merged, key))
        OmegaConf.update(merged, key, value, merge=False)
    # what the command says, as the run saved it: paths made absolute (anchor_paths), and a
    # key left unset (None) is no difference: the run filled it in (a detector's image size)
    shown = OmegaConf.create(OmegaConf.to_container(current, resolve=True))
    anchor_paths(shown)
    cur, old = _flat(OmegaConf.to_container(shown)), _flat(saved)
    diffs = [k for k in cur if k not in RUN_CONTROL_KEYS and cur[k] is not None
             and cur[k] != old.get(k) and _typed_here(k, typed)]
    # another choice of a whole group (method=halp on a Taylor run) is named once, not as
    # every key of the group that differs
    swapped = sorted({k.split(".")[0] for k in diffs if k.count(".") == 1 and k.endswith(".name")})
    for group in swapped:
        log.warning("resume: keeping the checkpoint's %s=%s (the command line says %s=%s)",
                    group, old[f"{group}.name"], group, cur[f"{group}.name"])
    diffs = [k for k in diffs if k.split(".")[0] not in swapped]
    if diffs:
        log.warning("resume: keeping the checkpoint's value for %s (the command line differs)",
                    ", ".join(sorted(diffs)[:10]))
    return merged


def _typed_here(key: str, typed: Collection[str] | None) -> bool:
    """Whether today's command set ``key``: typed itself or through its group (``method=``
    sets ``method.*``; an ``experiment=`` may set anything). A key the command left at its
    default is no difference worth a warning: ``prunecli train resume=RUN`` alone warned
    about every key the run's experiment had set."""
    if typed is None or "experiment" in typed:
        return True
    return any(key == t or key.startswith(f"{t}.") for t in typed)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def refuse_to_overwrite(run_dir: str | Path, resuming: Path | None = None) -> None:
    """A run in a folder that holds another run's checkpoint would replace its ``last.pt`` and
    results and append to its ``metrics.jsonl``: an error instead, which names the ways on.
    ``resuming``: the checkpoint a resumed run continues; the folder may hold that run."""
    from prunecli.engine.checkpoint import LAST
    from prunecli.errors import ConfigError

    last = Path(run_dir) / LAST
    if not last.is_file():
        return
    if resuming is None:
        raise ConfigError(f"{run_dir} already holds a run ({LAST}); continue it with "
                          "resume=auto, or start the new run in another hydra.run.dir (or "
                          "delete that folder)")
    if Path(resuming).resolve().parent != last.resolve().parent:
        raise ConfigError(f"{run_dir} holds another run ({LAST}) than the one resumed "
                          f"({resuming}); continue {resuming} in its own folder "
                          f"(hydra.run.dir={Path(resuming).parent}) or in an empty one")


def auto_resume(run_dir: str | Path) -> Path | None:
    """``resume=auto``: the run folder's ``last.pt`` when it has one (the run was stopped,
    killed or preempted), else None: the run starts. A requeued job runs the same command and
    simply continues."""
    from prunecli.engine.checkpoint import LAST

    path = Path(run_dir) / LAST
    if path.is_file():
        log.info("resume=auto: continuing from %s", path)
        return path
    log.info("resume=auto: no %s in %s yet, starting the run", LAST, run_dir)
    return None


def finished_results(run_dir: str | Path) -> dict[str, Any] | None:
    """The results of a run that already ran to its end in ``run_dir`` (``results.json``, not
    stopped early), else None: a sweep relaunched with ``resume=auto`` skips those points."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a half-written file: run (or resume) the point again
    if not isinstance(results, dict) or results.get("stopped_early", True):
        return None
    return results
