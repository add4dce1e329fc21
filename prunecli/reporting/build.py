"""From folders of runs to ``report.md``, ``report.json`` and the figures: which figures a set
of runs gets, which runs each shows and the notes on what could not be drawn."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunecli.errors import ConfigError
from prunecli.reporting import figures as F
from prunecli.reporting.history import read_curves
from prunecli.reporting.markdown import FigureEntry, metric_label, render
from prunecli.reporting.runs import (
    Run,
    check_one_task,
    nearest_dense,
    pick_metric,
    read_runs,
    table_rows,
)

FORMATS = ("png", "svg", "pdf")
MAX_ARCH = 6  # default architecture panels: enough to compare methods, few enough to read
MAX_CURVES = 8  # runs per training-curve figure: more lines are hard to tell apart


@dataclass
class Report:
    """What ``prunecli report`` wrote."""

    out: Path
    markdown: Path
    json: Path
    metric: str
    rows: list[dict[str, Any]]
    figures: list[FigureEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _combos(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["model"], r["data"]) for r in rows))


def _tradeoff_figures(rows: list[dict[str, Any]], out: Path, fmt: str,
                      styles: dict[str, tuple[str, str]], notes: list[str]) -> list[FigureEntry]:
    label = metric_label(rows[0]["metric"])
    combos = _combos(rows)
    entries = []
    for model, data in combos:
        mine = [r for r in rows if (r["model"], r["data"]) == (model, data)]
        suffix = "" if len(combos) == 1 else f"_{slug(model)}_{slug(data)}"
        where = f"{model} on {data}"
        dense_value = next((r["dense_value"] for r in mine if r["dense_value"] is not None), None)
        points = [F.Point(r["method"], 100 * r["macs_kept"], r["value"]) for r in mine
                  if r["method"] != "none" and r["macs_kept"] is not None
                  and r["value"] is not None]
        stars = [F.Star(100.0, r["value"], "dense") for r in mine
                 if r["method"] == "none" and r["value"] is not None]
        if not stars and dense_value is not None:
            stars = [F.Star(100.0, dense_value, "dense (pretrained start)")]
        if points or stars:
            path = F.plot_tradeoff(points, stars, styles, x_label="MACs kept (% of dense)",
                                   y_label=label, title=f"{label} vs MACs — {where}",
                                   path=out / f"pareto_macs{suffix}.{fmt}")
            entries.append(FigureEntry(
                path, f"{label} vs MACs kept ({where})",
                f"Each marker is a run; up and to the left is better (higher {label}, fewer "
                "MACs). Each method's line is its Pareto front, the best it reached at or "
                "below that share of the dense MACs; the star is the dense model."))
        timed = [r for r in mine if r["latency_ms"] is not None and r["value"] is not None]
        if not timed:
            continue
        batches = sorted({r["latency_batch"] for r in timed})
        devices = sorted({str(r["bench_device"]) for r in timed if r["bench_device"]})
        x_label = (f"measured latency (ms, batch {'/'.join(map(str, batches))}"
                   + (f", {', '.join(devices)}" if devices else "") + ")")
        points = [F.Point(r["method"], r["latency_ms"], r["value"]) for r in timed
                  if r["method"] != "none"]
        stars = [F.Star(r["latency_ms"], r["value"], "dense") for r in timed
                 if r["method"] == "none"]
        path = F.plot_tradeoff(points, stars, styles, x_label=x_label, y_label=label,
                               title=f"{label} vs latency — {where}",
                               path=out / f"pareto_latency{suffix}.{fmt}")
        entries.append(FigureEntry(
            path, f"{label} vs measured latency ({where})",
            f"As above with the measured median latency of the slimmed model (from each run's "
            f"bench.json) on the x axis: up and to the left is better. Only the "
            f"{len(timed)} of {len(mine)} runs with a bench.json are shown."))
    if not any(r["latency_ms"] is not None for r in rows):
        notes.append("No run has a bench.json, so there is no latency column or figure; "
                     "`prunecli bench runs=DIR` measures them.")
    return entries


def _widths(run: Run) -> F.ArchPanel | None:
    widths = run.results.get("widths")
    if not isinstance(widths, list) or not widths:
        return None
    try:
        groups = [str(w["group"]) for w in widths]
        size = [int(w["size"]) for w in widths]
        kept = [int(w["kept"]) for w in widths]
    except (TypeError, KeyError, ValueError):
        return None
    return F.ArchPanel(run_label(run), groups, size, kept)


def run_label(run: Run) -> str:
    """``3 (halp, macs 50 %)``: Hydra's numbered job folders say nothing by themselves."""
    if run.dense:
        return run.job if "dense" in run.job else f"{run.job} (dense)"
    target = run.results.get("cost_target")
    budget = (f", {run.results.get('cost')} {100 * target:.0f} %"
              if isinstance(target, (int, float)) else "")
    return f"{run.job} ({run.method}{budget})"


def _select(runs: Sequence[Run], names: Sequence[str], notes: list[str]) -> list[Run]:
    """The runs named (job, folder name or path), else up to MAX_ARCH pruned runs with
    widths: round-robin over the methods, most pruned first."""
    if names:
        chosen = []
        for name in names:
            hit = [r for r in runs if name in (r.job, r.path.name, str(r.path))
                   or Path(name).expanduser().resolve() == r.path]
            if not hit:
                raise ConfigError(f"architecture: no run '{name}' in the report; the runs are: "
                                  + ", ".join(r.job for r in runs[:12])
                                  + (", ..." if len(runs) > 12 else ""))
            chosen += [r for r in hit if r not in chosen]
        return chosen
    pruned = [r for r in runs if not r.dense]
    missing = [r.job for r in pruned if _widths(r) is None]
    if missing:
        some = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4
                                         else "")
        notes.append(f"No architecture figure for {some}: results.json has no `widths` (runs "
                     "made before they were recorded).")
    drawable = [r for r in pruned if _widths(r) is not None]
    by_method: dict[str, list[Run]] = {}
    for r in sorted(drawable, key=lambda r: r.results.get("cost_kept") or 1.0):
        by_method.setdefault(r.method, []).append(r)
    chosen: list[Run] = []
    while len(chosen) < min(MAX_ARCH, len(drawable)):
        for method_runs in by_method.values():
            if method_runs and len(chosen) < MAX_ARCH:
                chosen.append(method_runs.pop(0))
    if len(drawable) > len(chosen):
        notes.append(f"The architecture figure shows {len(chosen)} of {len(drawable)} pruned "
                     "runs; pick others with `architecture=[JOB,...]`.")
    return [r for r in runs if r in chosen]  # in the table's order


def _architecture_figures(runs: Sequence[Run], names: Sequence[str], out: Path, fmt: str,
                          notes: list[str]) -> list[FigureEntry]:
    chosen = _select(runs, names, notes)
    panels: dict[str, list[F.ArchPanel]] = {}
    for run in chosen:
        panel = _widths(run)
        if panel is None:
            if names:
                notes.append(f"No architecture figure for {run.job}: its results.json has no "
                             "`widths` (a dense run, or one made before they were recorded).")
            continue
        panels.setdefault(run.model_data[0], []).append(panel)
    entries = []
    for model, model_panels in panels.items():
        for k in range(0, len(model_panels), MAX_ARCH):
            chunk = model_panels[k:k + MAX_ARCH]
            part = "" if k == 0 else f"_{k // MAX_ARCH + 1}"
            name = f"architecture{'' if len(panels) == 1 else '_' + slug(model)}{part}.{fmt}"
            path = F.plot_architecture(chunk, f"kept channels per group — {model}", out / name)
            entries.append(FigureEntry(
                path, f"Pruned architecture ({model})",
                "Light bars are each channel group's dense width in network order, dark bars "
                "the width the run kept: a short dark bar is a layer the method thinned "
                "strongly."))
    return entries


def _curve_figures(runs: Sequence[Run], metric: str, out: Path, fmt: str,
                   notes: list[str]) -> list[FigureEntry]:
    curves = {}
    for run in runs:
        c = read_curves(run.path, metric, run.results.get("epochs"))
        if c is None:
            notes.append(f"{run.job} has no metrics.jsonl: no training curves.")
            continue
        if c.skipped_lines:
            notes.append(f"{run.job}: {c.skipped_lines} unreadable line(s) of metrics.jsonl "
                         "skipped (a run killed while writing leaves a truncated last line).")
        if c.val_unplaced:
            notes.append(f"{run.job}: no train or prune records to place epochs on the step "
                         "axis, so its validation curve is left out.")
        if not c.empty:
            curves[run.path] = c
    dense = [r for r in runs if r.dense and r.path in curves]
    pruned = [r for r in runs if not r.dense and r.path in curves]
    label = metric_label(metric)
    entries = []
    chunks = _curve_chunks(pruned or dense)
    for n, chunk in enumerate(chunks, 1):
        methods = list(dict.fromkeys(r.method for r in chunk))
        which = ", ".join("dense" if m == "none" else m for m in methods)
        same = [r for r in runs if r.method == methods[0] and r.path in curves]
        if len(same) > len(chunk):  # a part of one large method
            first = same.index(chunk[0]) + 1
            which += f", runs {first}-{first + len(chunk) - 1} of {len(same)}"
        name = "curves" if len(chunks) == 1 else f"curves_{n}"
        wanted = {nearest_dense(r, runs) for r in chunk if not r.dense} - {None}
        refs = [r for r in dense if r in wanted]
        lines = [F.CurveRun(run_label(r), curves[r.path], None, True) for r in refs]
        lines += [F.CurveRun(run_label(r), curves[r.path], r.results.get("cost_target"),
                             r.dense) for r in chunk]
        costs = sorted({str(r.results.get("cost")) for r in chunk if r.results.get("cost")})
        path = F.plot_curves(lines, metric_label=label, cost_label="/".join(costs) or "cost",
                             title=f"training curves — {which}", path=out / f"{name}.{fmt}")
        entries.append(FigureEntry(
            path, f"Training curves ({which})",
            f"Top: training loss; middle: validation {label} at each epoch's end; bottom: the "
            "share of the budget's cost kept after each pruning event (dotted: the target). "
            "Triangles on the step axis mark pruning events; the grey dashed line is the dense "
            "run they are compared with."))
    return entries


def _curve_chunks(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs per training-curve figure: whole methods packed together up to MAX_CURVES runs
    (six one-run methods: one figure), a larger method split evenly (12 runs: 6 + 6)."""
    by_method: dict[str, list[Run]] = {}
    for r in runs:
        by_method.setdefault(r.method, []).append(r)
    chunks: list[list[Run]] = []
    open_chunk = False  # the last chunk holds whole methods and may take more
    for members in by_method.values():
        if len(members) > MAX_CURVES:
            size = math.ceil(len(members) / math.ceil(len(members) / MAX_CURVES))
            chunks += [members[k:k + size] for k in range(0, len(members), size)]
            open_chunk = False
        elif open_chunk and len(chunks[-1]) + len(members) <= MAX_CURVES:
            chunks[-1] += members
        else:
            chunks.append(list(members))
            open_chunk = True
    return chunks


def _json_ready(value: Any) -> Any:
    """NaN becomes null: report.json is strict JSON for any reader."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def build_report(paths: Sequence[str | Path], out: Path, metric: str | None = None,
                 architecture: Sequence[str] = (), fmt: str = "png") -> Report:
    """Read the runs at or below ``paths`` and write report.md, report.json and the figures
    into ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is not supported; use one of {', '.join(FORMATS)}")
    if not paths:
        raise ConfigError("runs=[] names no folder; give runs=DIR or runs=[DIR,...]")
    notes: list[str] = []
    runs = read_runs(paths, notes)
    check_one_task(runs)
    metric = pick_metric(runs, metric)
    rows = table_rows(runs, metric)
    order = {r["path"]: i for i, r in enumerate(rows)}
    runs = sorted(runs, key=lambda r: order[str(r.path)])
    out.mkdir(parents=True, exist_ok=True)
    styles = F.method_styles([r["method"] for r in rows])
    figures = _tradeoff_figures(rows, out, fmt, styles, notes)
    figures += _architecture_figures(runs, architecture, out, fmt, notes)
    figures += _curve_figures(runs, metric, out, fmt, notes)
    report = Report(out, out / "report.md", out / "report.json", metric, rows, figures, notes)
    report.markdown.write_text(render(rows, figures, notes, [str(p) for p in paths], out))
    payload = {"metric": metric, "rows": rows, "notes": notes,
               "figures": [{"path": str(f.path), "title": f.title} for f in figures]}
    report.json.write_text(json.dumps(_json_ready(payload), indent=2) + "\n")
    return report
