"""``prunecli report runs=[DIR,...]``: one report of many training runs (a sweep folder, several
sweeps or single runs): report.md with a table of every run and figures (metric vs MACs and
vs measured latency with each method's Pareto front, pruned architectures, training curves),
plus report.json for scripts."""

from __future__ import annotations

from pathlib import Path

import hydra
import rich
from omegaconf import DictConfig, OmegaConf

from prunecli.commands.common import run_dir, user_errors_as_one_line
from prunecli.errors import PrunecliError
from prunecli.run_folders import folders_arg


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="report")
@user_errors_as_one_line
def main(cfg: DictConfig) -> str:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PrunecliError("prunecli report draws its figures with matplotlib, which is not "
                            "installed: pip install matplotlib") from None
    from prunecli.reporting import build_report
    from prunecli.reporting.markdown import metric_label, rich_table

    paths = folders_arg(OmegaConf.select(cfg, "runs", throw_on_missing=False))
    if cfg.out:
        out = Path(cfg.out)
    elif len(paths) == 1 and Path(paths[0]).is_dir():
        out = Path(paths[0]) / "report"
    else:
        out = run_dir()
    report = build_report(paths, out, cfg.metric, list(cfg.architecture), cfg.format)
    console = rich.get_console()
    console.print(rich_table(report.rows, f"report: {len(report.rows)} runs, "
                                          f"{metric_label(report.metric)}"))
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(f"{len(report.figures)} figures; report: "
                  f"[bold]{report.markdown.resolve()}[/bold] (and report.json)")
    return str(report.markdown)
