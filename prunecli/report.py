"""Results tables: printed with Rich and saved next to the run (JSON + text)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rich
from rich.console import Console
from rich.table import Table

log = logging.getLogger("prunecli")

# (key, header, formatter)
def _ap_or_none(v: float) -> str:
    """COCO's AP of an area range with no object in the ground truth is undefined, not 0."""
    return "no objects" if v != v else f"{v:.2f}"


COLUMNS: list[tuple[str, str, Any]] = [
    ("model", "model", str),
    ("data", "data", str),
    ("method", "method", str),
    ("epochs", "epochs", str),
    ("top1", "top-1 %", lambda v: f"{v:.2f}"),
    ("top5", "top-5 %", lambda v: f"{v:.2f}"),
    ("map", "mAP", lambda v: f"{v:.2f}"),
    ("map50", "AP50", lambda v: f"{v:.2f}"),
    ("map75", "AP75", lambda v: f"{v:.2f}"),
    ("map_small", "AP small", _ap_or_none),
    ("map_medium", "AP medium", _ap_or_none),
    ("map_large", "AP large", _ap_or_none),
    ("voc07_map", "VOC07 mAP", lambda v: f"{v:.2f}"),
    ("macs", "MACs", lambda v: _si(v)),
    ("params", "params", lambda v: _si(v)),
    ("train_time_s", "train s", lambda v: f"{v:.1f}"),
    ("wall_time_s", "wall s", lambda v: f"{v:.1f}"),
]


# a sweep table also shows what each run's budget gave (one column per run's cost kept)
_SWEEP_SKIP = ("map75", "map_small", "map_medium", "map_large")  # the run table has them
_SPLIT = [k for k, _, _ in COLUMNS].index("macs")
SWEEP_COLUMNS = [c for c in COLUMNS[:_SPLIT + 2] if c[0] not in _SWEEP_SKIP] + [
    ("cost", "cost", str),
    ("cost_kept", "cost kept", lambda v: f"{100 * v:.1f} %"),
] + COLUMNS[_SPLIT + 2:]
METRIC_LABELS = {key: header for key, header, _ in COLUMNS}


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f}"


def results_table(rows: Sequence[dict[str, Any]], title: str, extra: Sequence[str] = ()) -> Table:
    """One row per run; ``extra`` names further keys (e.g. the swept overrides) shown first.
    A text column (model, data, method, cost, ...) with one value for every run of several goes
    into the title instead, so that what differs fits a terminal."""
    columns = [c for c in SWEEP_COLUMNS if c[0] not in extra
               and any(r.get(c[0]) is not None for r in rows)]
    shared = [c for c in columns if len(rows) > 1 and c[2] is str
              and len({"-" if r.get(c[0]) is None else str(r[c[0]]) for r in rows}) == 1]
    if shared:
        title += " (" + ", ".join(f"{h} {rows[0].get(k)}" for k, h, _ in shared) + ")"
        columns = [c for c in columns if c not in shared]
    table = Table(title=title, title_justify="left")
    for key in extra:
        table.add_column(key)
    for _, header, fmt in columns:
        table.add_column(header, justify="left" if fmt is str else "right")
    for r in rows:
        cells = [str(r.get(k, "")) for k in extra]
        cells += ["-" if r.get(k) is None else fmt(r[k]) for k, _, fmt in columns]
        table.add_row(*cells)
    return table


def run_table(results: dict[str, Any], title: str) -> Table:
    """One run as a two-column table (fits a narrow terminal or a log file)."""
    table = Table()
    table.add_column(title)
    table.add_column("", justify="right")
    for key, header, fmt in COLUMNS:
        if results.get(key) is not None:
            table.add_row(header, fmt(results[key]))
    dense = results.get("dense_macs")
    if dense and results.get("macs") is not None and results["macs"] != dense:
        table.add_row("MACs kept", f"{100.0 * results['macs'] / dense:.1f} %")
    if results.get("dense_params") and results.get("params") != results.get("dense_params"):
        table.add_row("params kept", f"{100.0 * results['params'] / results['dense_params']:.1f} %")
    if results.get("cost_kept") is not None and results.get("cost_target") is not None:
        table.add_row(f"{results['cost']} kept (target)",
                      f"{100 * results['cost_kept']:.1f} % ({100 * results['cost_target']:.1f} %)")
    if results.get("channels_target") is not None and results.get("channels_prunable"):
        kept = results["channels_kept"] / results["channels_prunable"]
        table.add_row("channels kept (target)",
                      f"{100 * kept:.1f} % ({100 * results['channels_target']:.1f} %)")
    if results.get("slimmed_at_step") is not None:
        table.add_row("fine-tuned slim from step", str(results["slimmed_at_step"]))
    if results.get("groups_dropped"):
        table.add_row("groups dropped whole", str(len(results["groups_dropped"])))
    if results.get("distill"):
        kd = results["distill"]
        boxes = f", boxes {kd['box_weight']:g}" if kd.get("box_weight") else ""
        table.add_row(f"distilled (alpha {kd['alpha']:g}, T {kd['temperature']:g}{boxes})",
                      f"teacher {kd['teacher_ms_per_batch']:.1f} ms/batch, "
                      f"{100 * kd['teacher_share_of_train_time']:.0f} % of training")
    metric = results.get("metric", "top1")
    label = METRIC_LABELS.get(metric, metric)
    for key, header in ((f"dense_{metric}", f"dense {label}"),
                        (f"{metric}_before_pruning", f"{label} before pruning"),
                        (f"slim_{metric}", f"slim model {label}")):
        if results.get(key) is not None:
            table.add_row(header, f"{results[key]:.2f}")
    if results.get("baseline") and results["baseline"].get(metric) is not None:
        table.add_row(f"baseline {label} (change)",
                      f"{results['baseline'][metric]:.2f} ({results['change']:+.2f})")
    return table


def save_table(table: Table, path: Path, *more: Table) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, force_terminal=False, color_system=None)
    for t in (table, *more):
        console.print(t)
    path.write_text(buffer.getvalue())


#: per-class rows printed to the terminal (all of them go to results.txt and results.json)
CLASS_ROWS_SHOWN = 40


def per_class_table(rows: dict[str, dict[str, float]], limit: int | None = None) -> Table:
    """One row per class, a column per metric (``prunecli eval``'s per-class results): which
    classes a pruned model lost, which the whole-set figure hides. ``limit``: the first rows
    only (ImageNet's 1000 would flood a terminal), the rest counted in a caption."""
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    # with a baseline (``prunecli eval baseline=``) the rows come largest loss first
    table = Table(title="per class, largest loss against the baseline first"
                  if "change" in keys else None, title_justify="left")
    if limit is not None and len(rows) > limit:
        table.caption = f"{len(rows) - limit} more classes in results.txt and results.json"
        rows = dict(list(rows.items())[:limit])
    table.add_column("class")
    for key in keys:
        table.add_column(key, justify="right")
    for name, row in rows.items():
        cells = [(k, row.get(k)) for k in keys]
        table.add_row(name, *("-" if v is None or v != v else  # nan: no objects of the class
                              f"{v:+.2f}" if k == "change" else
                              f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in cells))
    return table


def report_run(results: dict[str, Any], run_dir: Path, title: str = "results") -> None:
    """Print the results table (and the per-class one, when the results have it) and write
    ``results.json`` and ``results.txt`` into the run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    tables = [run_table(results, title)]
    if results.get("per_class"):
        tables.append(per_class_table(results["per_class"]))
    save_table(tables[0], run_dir / "results.txt", *tables[1:])
    if results.get("per_class"):  # the terminal gets the first rows only
        tables[1] = per_class_table(results["per_class"], limit=CLASS_ROWS_SHOWN)
    for table in tables:
        rich.get_console().print(table)
    files = ", ".join(n for n in ("results.json", "results.txt", "metrics.jsonl", "last.pt",
                                  "slim.pt") if (run_dir / n).is_file())
    rich.get_console().print(f"outputs: [bold]{run_dir.resolve()}[/bold] ({files})")
