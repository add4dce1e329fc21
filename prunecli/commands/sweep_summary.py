"""Hydra callback: after a multirun, one table of every job's results in the sweep folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import rich
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prunecli.report import results_table, save_table
from prunecli.run_folders import (
    JOB_ERROR,
    RESULTS,
    keep_varying_overrides,
    natural_key,
    run_overrides,
)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows from ``<sweep>/<job>/results.json``, in job order, each with its overrides."""
    rows = []
    jobs = [d for d in sweep_dir.iterdir() if (d / RESULTS).is_file()]
    for job in sorted(jobs, key=lambda d: natural_key(d.name)):
        row = json.loads((job / RESULTS).read_text())
        row["job"] = job.name
        row["overrides"] = run_overrides(job)
        rows.append(row)
    keep_varying_overrides(rows)
    return rows


def swept_columns(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows with one key per swept override (``cost.ratio`` -> ``0.3``), and those keys in
    command-line order: a column each reads better than one wrapped overrides column."""
    keys: list[str] = []
    shown = []
    for row in rows:
        values = {}
        for item in row["overrides"].split():
            key, _, value = item.partition("=")
            values[key] = value if _ else "yes"
            if key not in keys:
                keys.append(key)
        shown.append({**row, **values})
    return [{**{k: "-" for k in keys}, **r} for r in shown], keys


def failures(sweep_dir: Path) -> list[dict[str, Any]]:
    """The jobs that ended with an error (``error.txt``, no results), in job order."""
    jobs = [d for d in sweep_dir.iterdir()
            if (d / JOB_ERROR).is_file() and not (d / RESULTS).is_file()]
    return [{"job": d.name, "overrides": run_overrides(d),
             "error": (d / JOB_ERROR).read_text().strip()}
            for d in sorted(jobs, key=lambda d: natural_key(d.name))]


class SweepSummary(Callback):
    """Prints the summary and writes ``summary.json`` / ``summary.txt`` into the sweep folder;
    lists the jobs that failed and then exits with status 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows, failed = collect(sweep_dir), failures(sweep_dir)
        if not rows and not failed:
            return
        (sweep_dir / "summary.json").write_text(json.dumps(rows + failed, indent=2) + "\n")
        console = rich.get_console()
        lines = [f"{len(failed)} of {len(rows) + len(failed)} jobs failed:"] + [
            f"  job {f['job']} ({f['overrides']}): {f['error']}" for f in failed]
        if rows:
            shown, keys = swept_columns(rows)
            table = results_table(shown, f"sweep: {len(rows)} runs", extra=("job", *keys))
            save_table(table, sweep_dir / "summary.txt")
            console.print(table)
        if failed:
            with (sweep_dir / "summary.txt").open("a") as f:
                f.write("\n".join(lines) + "\n")
            console.print("\n".join(lines), markup=False, highlight=False)
        console.print(f"sweep outputs: [bold]{sweep_dir.resolve()}[/bold] "
                      "(summary.json, summary.txt, one folder per job)")
        if failed:
            raise SystemExit(1)
