"""Finding the runs under the folders a user names and reading each into one table row.

A run is any folder holding ``results.json`` (a finished ``prunecli train``); the folders given
may be run folders, Hydra sweep folders or anything above them, so a run is found however the
sweeps were nested. The rows are plain dicts, so ``report.json`` is them verbatim.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunecli.errors import ConfigError
from prunecli.run_folders import (
    JOB_ERROR,
    RESULTS,
    find_run_dirs,
    keep_varying_overrides,
    natural_key,
    run_overrides,
)

BENCH = "bench.json"
DENSE = "none"  # results["method"] of a dense run


@dataclass(eq=False)  # compared and hashed by identity: one object per folder
class Run:
    """One run folder, read: its results, the overrides that made it and its bench.json."""

    path: Path
    job: str  # the folder relative to the folder above every run (unique, readable)
    results: dict[str, Any]
    overrides: str = ""  # command-line overrides; only the ones that vary once rows are built
    bench: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return str(self.results.get("method", DENSE))

    @property
    def dense(self) -> bool:
        return self.method == DENSE

    @property
    def model_data(self) -> tuple[str, str]:
        return str(self.results.get("model", "?")), str(self.results.get("data", "?"))


def number(value: Any) -> float | None:
    """A finite float, else None (results.json may hold NaN, null or a missing key)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def job_names(dirs: Sequence[Path]) -> list[str]:
    """Each folder relative to the deepest folder above all of them (``distill/chex/chex_0.5``);
    a single run is named by its folder."""
    if len(dirs) == 1:
        return [dirs[0].name]
    common = Path(os.path.commonpath([str(d) for d in dirs]))
    names = [str(d.relative_to(common)) for d in dirs]
    return [d.name if n == "." else n for n, d in zip(names, dirs, strict=True)]


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"`{path}` was skipped: it is not readable JSON ({type(exc).__name__}).")
        return None
    if not isinstance(data, dict):
        notes.append(f"`{path}` was skipped: it holds no JSON object.")
        return None
    return data


def read_runs(paths: Sequence[str | Path], notes: list[str]) -> list[Run]:
    """The runs at or below ``paths``; unreadable files are skipped with a note."""
    dirs = find_run_dirs(paths)
    runs = []
    for path, job in zip(dirs, job_names(dirs), strict=True):
        results = _read_json(path / RESULTS, notes)
        if results is None:
            continue
        bench = _read_json(path / BENCH, notes) if (path / BENCH).is_file() else None
        runs.append(Run(path, job, results, run_overrides(path), bench))
    if not runs:
        raise ConfigError(f"no readable runs in {', '.join(map(str, paths))}: every "
                          f"{RESULTS} found was damaged")
    notes += failed_jobs(paths)
    rows = [{"overrides": r.overrides} for r in runs]
    keep_varying_overrides(rows)  # the same rule as the sweep summary table
    for run, row in zip(runs, rows, strict=True):
        run.overrides = row["overrides"]
    return runs


def failed_jobs(paths: Sequence[str | Path]) -> list[str]:
    """A note per sweep job that ended with an error (its ``error.txt``, no results) at or below
    ``paths``: a report should say which points of a sweep are missing, and why."""
    notes = []
    for raw in paths:
        base = Path(raw).expanduser()
        base = base.parent if base.is_file() else base
        for f in sorted(base.rglob(JOB_ERROR), key=lambda f: natural_key(str(f.parent))):
            if (f.parent / RESULTS).is_file() or any(
                    p.startswith(".") for p in f.relative_to(base).parts[:-1]):
                continue
            overrides = run_overrides(f.parent)
            notes.append(f"Job {f.parent} ({overrides or 'no overrides'}) failed and is not in "
                         f"the table: {f.read_text().strip()}")
    return notes


def task_of(results: dict[str, Any]) -> str:
    """Older results have no ``task``: a detector's results have ``map``."""
    return str(results.get("task") or ("detection" if "map" in results else "classification"))


def check_one_task(runs: Sequence[Run]) -> str:
    """Classification and detection metrics share no axis, so a report holds one task."""
    tasks: dict[str, Run] = {}
    for run in runs:
        tasks.setdefault(task_of(run.results), run)
    if len(tasks) > 1:
        examples = ", ".join(f"{t} (e.g. {r.path})" for t, r in sorted(tasks.items()))
        raise ConfigError(f"the runs mix tasks: {examples}; their metrics are not comparable, "
                          "so report them separately (one `prunecli report` per task)")
    return next(iter(tasks))


def pick_metric(runs: Sequence[Run], metric: str | None) -> str:
    """The given metric, else the primary metric most runs name."""
    if metric is None:
        named = Counter(str(r.results["metric"]) for r in runs if r.results.get("metric"))
        task = task_of(runs[0].results)
        metric = named.most_common(1)[0][0] if named else ("map" if task == "detection"
                                                           else "top1")
    if not any(number(r.results.get(metric)) is not None for r in runs):
        keys = sorted({k for r in runs for k, v in r.results.items()
                       if number(v) is not None and not k.startswith(("dense_", "cost_", "slim_"))})
        raise ConfigError(f"metric={metric}: no run has a value for it; the runs have: "
                          f"{', '.join(keys)}")
    return metric


def bench_point(bench: dict[str, Any] | None, dense: bool) -> dict[str, Any] | None:
    """The measured latency of the run's own model (``slim``; a dense run: ``dense``) at the
    smallest batch size measured: the one closest to serving single requests."""
    if not bench or not isinstance(bench.get("rows"), list):
        return None
    want = "dense" if dense else "slim"
    rows = [r for r in bench["rows"] if isinstance(r, dict) and r.get("model") == want
            and number(r.get("median_ms")) is not None and isinstance(r.get("batch"), int)]
    if not rows:
        return None
    row = min(rows, key=lambda r: r["batch"])
    meta = bench.get("meta") if isinstance(bench.get("meta"), dict) else {}
    return {"batch": row["batch"], "median_ms": float(row["median_ms"]),
            "speedup": number(row.get("speedup")), "device": meta.get("device"),
            "threads": meta.get("threads")}


def nearest_dense(run: Run, runs: Sequence[Run]) -> Run | None:
    """The dense run of the same model and data in the closest folder (a sweep's own dense
    job before one of another sweep); a dense run is its own reference."""
    same = [d for d in runs if d.dense and d.model_data == run.model_data]
    if not same:
        return None
    return max(same, key=lambda d: len(Path(os.path.commonpath([run.path, d.path])).parts))


def _fraction(part: Any, whole: Any) -> float | None:
    part, whole = number(part), number(whole)
    return part / whole if part is not None and whole else None


def table_rows(runs: Sequence[Run], metric: str) -> list[dict[str, Any]]:
    """One JSON-ready row per run, sorted by method (dense first), cost, then budget."""
    with_metric = [r for r in runs if number(r.results.get(metric)) is not None]
    rows = []
    for run in runs:
        r = run.results
        value = number(r.get(metric))
        dense_run = nearest_dense(run, with_metric)
        dense_value, source = None, None
        if dense_run is not None:
            dense_value, source = number(dense_run.results[metric]), dense_run.job
        elif number(r.get(f"dense_{metric}")) is not None:
            dense_value, source = number(r[f"dense_{metric}"]), f"dense_{metric}"
        bench = bench_point(run.bench, run.dense)
        widths = r.get("widths")
        rows.append({
            "job": run.job, "path": str(run.path), "overrides": run.overrides,
            "method": run.method, "model": run.model_data[0], "data": run.model_data[1],
            "task": task_of(r), "epochs": r.get("epochs"),
            "cost": None if run.dense else r.get("cost"),
            "cost_target": None if run.dense else number(r.get("cost_target")),
            "channels_target": None if run.dense else number(r.get("channels_target")),
            "cost_kept": 1.0 if run.dense else number(r.get("cost_kept")),
            "metric": metric, "value": value, "dense_value": dense_value,
            "dense_ref": source,  # a dense run's job, or dense_<metric> (pretrained start)
            "delta": None if value is None or dense_value is None else value - dense_value,
            "macs": number(r.get("macs")), "dense_macs": number(r.get("dense_macs")),
            "macs_kept": _fraction(r.get("macs"), r.get("dense_macs")),
            "params": number(r.get("params")), "dense_params": number(r.get("dense_params")),
            "params_kept": _fraction(r.get("params"), r.get("dense_params")),
            "latency_ms": bench["median_ms"] if bench else None,
            "latency_batch": bench["batch"] if bench else None,
            "speedup": bench["speedup"] if bench else None,
            "bench_device": bench["device"] if bench else None,
            "wall_time_s": number(r.get("wall_time_s")),
            "train_time_s": number(r.get("train_time_s")),
            "prune_events": r.get("prune_events"), "stopped_early": r.get("stopped_early"),
            "has_widths": isinstance(widths, list) and bool(widths),
        })
    return sorted(rows, key=sort_key)


def sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Dense first, then by method, cost and budget (lightest pruning first), then job."""
    target = row["cost_target"]
    return (row["method"] != DENSE, row["method"], row["model"], row["data"], row["cost"] or "",
            -(target if target is not None else 2.0), natural_key(row["job"]))
