"""The report's table, one column list for both outputs: ``report.md`` (Markdown, with the
figures and how to read each) and the Rich table printed at the end of the command."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from prunecli.report import METRIC_LABELS

Row = dict[str, Any]


@dataclass
class Column:
    header: str
    cell: Callable[[Row], str]
    left: bool = False  # text columns; numbers are right-aligned
    terminal: bool = True  # also in the printed table (long or constant columns are not)


def si(value: float | None) -> str:
    """31021952 -> 31.0 M."""
    if value is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def metric_label(metric: str) -> str:
    """``top1`` -> ``top-1 %`` (the results tables' header)."""
    return METRIC_LABELS.get(metric, metric)


def _delta(row: Row) -> str:
    if row["delta"] is None:
        return "-"
    if row["dense_ref"] == row["job"]:
        return "ref"
    return f"{row['delta']:+.2f}"


def _budget(row: Row) -> str:
    if row["method"] == "none":
        return "dense"
    if row["cost_target"] is None and row.get("channels_target") is not None:
        return f"channels {100 * row['channels_target']:.0f} %"  # no cost budget
    if row["cost"] is None:
        return "-"
    target = "" if row["cost_target"] is None else f" {100 * row['cost_target']:.0f} %"
    return f"{row['cost']}{target}"


def _macs(row: Row) -> str:
    kept = "" if row["macs_kept"] is None else f" ({100 * row['macs_kept']:.0f} %)"
    return si(row["macs"]) + kept


def _params(row: Row) -> str:
    kept = "" if row["params_kept"] is None else f" ({100 * row['params_kept']:.0f} %)"
    return si(row["params"]) + kept


def _latency_header(rows: Sequence[Row]) -> str:
    batches = sorted({r["latency_batch"] for r in rows if r["latency_batch"] is not None})
    return f"latency ms (batch {'/'.join(map(str, batches))})"


def _latency(row: Row, batches: int) -> str:
    if row["latency_ms"] is None:
        return "-"
    which = f" (b{row['latency_batch']})" if batches > 1 else ""
    return f"{row['latency_ms']:.2f}{which}"


def columns(rows: Sequence[Row]) -> list[Column]:
    """The report's columns; overrides and latency only where some run has them."""
    label = metric_label(rows[0]["metric"])
    cols = [Column("job", lambda r: r["job"], left=True)]
    if any(r["overrides"] for r in rows):
        cols.append(Column("overrides", lambda r: r["overrides"] or "-", left=True,
                           terminal=False))
    cols += [
        Column("method", lambda r: "dense" if r["method"] == "none" else r["method"], left=True),
        Column("model", lambda r: r["model"], left=True,
               terminal=len({r["model"] for r in rows}) > 1),
        Column("data", lambda r: r["data"], left=True,
               terminal=len({r["data"] for r in rows}) > 1),
        Column("budget", _budget, left=True),
        Column("cost kept", lambda r: pct(r["cost_kept"])),
        Column(label, lambda r: "-" if r["value"] is None else f"{r['value']:.2f}"),
        Column("Δ vs dense", _delta),
        Column("MACs (% dense)", _macs),
        Column("params (% dense)", _params),
    ]
    if any(r["latency_ms"] is not None for r in rows):
        batches = len({r["latency_batch"] for r in rows if r["latency_batch"] is not None})
        cols += [Column(_latency_header(rows), lambda r: _latency(r, batches)),
                 Column("speed-up", lambda r: "-" if r["speedup"] is None
                        else f"{r['speedup']:.2f}x")]
    cols.append(Column("wall time", lambda r: duration(r["wall_time_s"])))
    return cols


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Row]) -> str:
    cols = columns(rows)
    lines = ["| " + " | ".join(c.header for c in cols) + " |",
             "|" + "|".join(":---" if c.left else "---:" for c in cols) + "|"]
    lines += ["| " + " | ".join(_md_cell(c.cell(r)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def rich_table(rows: Sequence[Row], title: str) -> Table:
    """The table for the terminal: no overrides, model and data only when they vary."""
    table = Table(title=title, title_justify="left")
    cols = [c for c in columns(rows) if c.terminal]
    for c in cols:
        # job names are the key to report.md: never cut them; other columns wrap instead
        width = min(40, max(len(r["job"]) for r in rows)) if c.header == "job" else None
        table.add_column(c.header, justify="left" if c.left else "right", min_width=width,
                         overflow="fold")
    for r in rows:
        table.add_row(*(c.cell(r) for c in cols))
    return table


def dense_sentence(rows: Sequence[Row]) -> str:
    """Which dense model each Δ is measured against."""
    counts: dict[str, int] = {}
    for r in rows:
        if r["dense_ref"] is not None and r["dense_ref"] != r["job"]:
            key = ("its own dense_" + r["metric"] + " (the pretrained start)"
                   if r["dense_ref"].startswith("dense_") else f"`{r['dense_ref']}`")
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return "No dense reference: Δ vs dense is empty."
    used = ", ".join(f"{k} ({n} run{'s' if n > 1 else ''})" for k, n in counts.items())
    return (f"Δ vs dense is in points against the dense run of the same model and data in the "
            f"closest folder (`ref` marks a dense run itself): {used}.")


@dataclass
class FigureEntry:
    """A figure of the report and the sentence that says how to read it."""

    path: Path
    title: str
    how_to_read: str


def render(rows: Sequence[Row], figures: Sequence[FigureEntry], notes: Sequence[str],
           sources: Sequence[str], out: Path) -> str:
    """The whole report.md text; figure links are relative, so the folder can be moved."""
    metric = rows[0]["metric"]
    parts = [f"# Report of {len(rows)} runs", "",
             "Runs from: " + ", ".join(f"`{s}`" for s in sources), "",
             f"Primary metric: **{metric_label(metric)}** (`{metric}`). {dense_sentence(rows)} "
             "MACs and params are of the final (slimmed) model, with their share of the dense "
             "model's; cost kept is the share of the budget's cost (`budget` = cost and "
             "target).", "", markdown_table(rows), ""]
    for fig in figures:
        rel = fig.path.relative_to(out) if fig.path.is_relative_to(out) else fig.path
        parts += [f"## {fig.title}", "", f"![{fig.title}]({rel.as_posix()})", "",
                  fig.how_to_read, ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)
