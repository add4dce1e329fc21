"""Hydra callback: after a multirun, one table of every job's results in the sweep folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import rich
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from prunecli.report import results_table, save_table


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows from ``<sweep>/<job>/results.json``, in job order, each with its overrides."""
    rows = []
    jobs = [d for d in sweep_dir.iterdir() if (d / "results.json").is_file()]
    for job in sorted(jobs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit()
                                           else 0, d.name)):
        row = json.loads((job / "results.json").read_text())
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        row["job"] = job.name
        row["overrides"] = " ".join(o for o in overrides if not o.startswith("hydra."))
        rows.append(row)
    _keep_varying_overrides(rows)
    return rows


def _keep_varying_overrides(rows: list[dict[str, Any]]) -> None:
    """Show only the overrides that differ between jobs (the swept values)."""
    if len(rows) < 2:
        return
    common = set.intersection(*(set(r["overrides"].split()) for r in rows))
    for r in rows:
        r["overrides"] = " ".join(o for o in r["overrides"].split() if o not in common)


class SweepSummary(Callback):
    """Prints the summary and writes ``summary.json`` / ``summary.txt`` into the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = collect(sweep_dir)
        if not rows:
            return
        (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
        table = results_table(rows, f"sweep: {len(rows)} runs", extra=("job", "overrides"))
        save_table(table, sweep_dir / "summary.txt")
        rich.get_console().print(table)
        rich.get_console().print(f"sweep outputs: [bold]{sweep_dir.resolve()}[/bold] "
                                 "(summary.json, summary.txt, one folder per job)")
