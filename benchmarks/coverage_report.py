"""The coverage benchmark's records and reports: ``coverage.md`` (summary and table) and
``coverage.json`` (every row, which ``--merge`` updates in place)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from coverage_models import (
    CNN_TARGET,
    KEEP_RATIO,
    MIN_CHANGE,
    MODELS,
    TOLERANCE,
    TRANSFORMER_TARGET,
)


@dataclass
class TPResult:
    """Torch-Pruning on one model."""

    status: str = "not run"  # ok / error: ... / hang (>120 s) / bad output: ...
    macs_after: int | None = None
    seconds: float | None = None
    times: list[float] = field(default_factory=list)


@dataclass
class Record:
    """prunecli on one model (plus the Torch-Pruning reference)."""

    model: str
    source: str
    input: list[int]
    kind: str = "cnn"
    measured: str = ""  # when (rows can be re-measured alone with --merge)
    status: str = "not run"  # ok / mismatch / error: first line
    groups: int | None = None
    prunable_groups: int | None = None
    prunable_share: float | None = None
    prunable_macs: float | None = None  # share of conv/linear MACs touching a prunable group
    macs_before: int | None = None
    macs_after: int | None = None
    max_rel_diff: float | None = None
    output_change: float | None = None  # unpruned vs slimmed: the check is void if ~0
    trace_s: float | None = None
    slim_s: float | None = None
    total_s: float | None = None
    times: list[tuple[float, float]] = field(default_factory=list)  # (trace, slim) per run
    unknown_ops: list[str] = field(default_factory=list)
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    tp: TPResult = field(default_factory=TPResult)


def now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "timm", "torch-pruning"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def macs(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.1f}"


def short(text: str, width: int = 60) -> str:
    text = text.replace("op not understood: ", "op: ").replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


# every model has one input group and one output group (the logits); not worth a note
EXPECTED_REASONS = {("model input", 1), ("reaches the model output", 1)}


def notes(rec: Record) -> str:
    parts = [f"unknown: {', '.join(rec.unknown_ops)}"] if rec.unknown_ops else []
    parts += [f"{short(r)} ×{n}" for r, n in rec.top_reasons if (r, n) not in EXPECTED_REASONS]
    return short("; ".join(parts), 200) if parts else ""


HEADER = ("| Model | Source | Kind | Input | Groups | Prunable | Prunable ch. | Prunable MACs "
          "| MACs M | MACs after M "
          "| Max rel diff | Output change | Trace s | Slim s | Trace+slim s | Status | TP "
          "| TP MACs after M | TP s | Not pruned because |")


def table_row(rec: Record) -> str:
    share = "-" if rec.prunable_share is None else f"{100 * rec.prunable_share:.0f}%"
    size = f"{rec.input[-1]}²"
    mac_share = "-" if rec.prunable_macs is None else f"{100 * rec.prunable_macs:.0f}%"
    cells = [rec.model, rec.source, rec.kind, size, fmt(rec.groups, "d"),
             fmt(rec.prunable_groups, "d"), share, mac_share, macs(rec.macs_before),
             macs(rec.macs_after), fmt(rec.max_rel_diff, ".1e"),
             fmt(rec.output_change, ".2f"),
             fmt(rec.trace_s, ".3f"), fmt(rec.slim_s, ".3f"), fmt(rec.total_s, ".3f"),
             short(rec.status, 80), short(rec.tp.status, 80), macs(rec.tp.macs_after),
             fmt(rec.tp.seconds, ".3f"), notes(rec)]
    return "| " + " | ".join(cells) + " |"


def summary(records: list[Record], with_tp: bool, repeats: int) -> list[str]:
    ok = sum(r.status == "ok" for r in records)
    lines = [f"- prunecli: **{ok}/{len(records)}** models slim exactly (masked == slimmed within "
             f"{TOLERANCE:g} relative, pruning changing the output)."]
    for kind, target in (("cnn", CNN_TARGET), ("transformer", TRANSFORMER_TARGET)):
        rows = [r for r in records if r.kind == kind]
        below = [f"{r.source}/{r.model} ({fmt(r.prunable_macs and 100 * r.prunable_macs, '.0f')}%)"
                 for r in rows if r.status != "ok" or (r.prunable_macs or 0) < target]
        lines.append(f"- {kind.upper() if kind == 'cnn' else 'Transformers'}: "
                     f"{len(rows) - len(below)}/{len(rows)} with at least {target:.0%} of their "
                     f"MACs prunable exactly" + (f"; below: {', '.join(below)}." if below else "."))
    none = [r.model for r in records if r.prunable_groups == 0]
    if none:
        lines.append(f"- Nothing prunable: {', '.join(none)}.")
    if with_tp:
        tp_ok = sum(r.tp.status == "ok" for r in records)
        lines.append(f"- Torch-Pruning: {tp_ok}/{len(records)} models pruned with a working "
                     "forward pass.")
    r50 = next((r for r in records if r.model == "resnet50" and r.source == "torchvision"), None)
    if r50 is not None:
        lines.append(f"- ResNet-50 trace+slim (median of {repeats}): prunecli "
                     f"{fmt(r50.total_s, '.3f')} s vs Torch-Pruning {fmt(r50.tp.seconds, '.3f')} s "
                     "(deep copy + dependency graph + step).")
    return lines


DESCRIPTION = (
    "Random init, eval mode, batch 1. A random keep-set removes {removed}% of every prunable "
    "group. *Max rel diff*: masked original vs slimmed copy, max |diff| / max |masked| (pass: "
    "<= {tol}). *Output change*: the same between the unpruned and the slimmed model; it must "
    "not be ~0 (< {change}: *void*), or the check proves nothing, so norm affines, "
    "constant-initialised per-channel parameters (zero-init last BN, layer scale) and BN "
    "statistics are randomised / re-estimated first. Times are medians of {repeats} runs, "
    "prunecli and Torch-Pruning interleaved (TP: BasePruner, L1 magnitude, ratio 0.3, "
    "classifier ignored; deep copy + dependency graph + step). *Prunable ch.*: share of all "
    "channels (logits included) in prunable groups. *Prunable MACs*: share of the conv/linear "
    "MACs in layers that read or write a prunable group (their cost shrinks with pruning). "
    "*Not pruned because*: ops prunecli did not "
    "understand and the most common reasons groups stay unpruned (the model input and the "
    "logits, unprunable in every model, are left out). Generated by "
    "`python benchmarks/coverage.py`."
)


def load_previous(path: Path) -> tuple[dict[str, Any], list[Record]]:
    """Meta and rows of an earlier ``coverage.json`` (empty if there is no such file)."""
    if not path.exists():
        return {}, []
    data = json.loads(path.read_text(encoding="utf-8"))
    records = []
    for row in data["models"]:
        tp = TPResult(**row.pop("tp"))
        records.append(Record(**row, tp=tp))
    return data["meta"], records


def merge(old: list[Record], new: list[Record]) -> list[Record]:
    """``old`` with the rows of ``new`` replacing same-model rows, in the order of MODELS."""
    rows = {(r.source, r.model): r for r in old} | {(r.source, r.model): r for r in new}
    order = [(s.source, s.name) for s in MODELS]
    return sorted(rows.values(), key=lambda r: order.index((r.source, r.model))
                  if (r.source, r.model) in order else len(order))


def write_reports(records: list[Record], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    v = meta["versions"]
    when = meta["date"]
    if meta.get("remeasured"):
        when += f" (re-measured later with --merge: {', '.join(meta['remeasured'])})"
    lines = [
        "# Channel-structure coverage",
        "",
        f"{when} · torch {v['torch']} · torchvision {v['torchvision']} · timm {v['timm']}"
        f" · torch-pruning {v['torch-pruning']} · {meta['threads']} CPU threads ({meta['cpu']})",
        "",
        DESCRIPTION.format(removed=f"{100 * (1 - KEEP_RATIO):.0f}", tol=f"{TOLERANCE:g}",
                           change=f"{MIN_CHANGE:g}", repeats=meta["repeats"]),
        "",
        *summary(records, meta["torch_pruning"], meta["repeats"]),
        "",
        HEADER,
        "|" + "---|" * HEADER.count(" | ") + "---|",
        *(table_row(r) for r in records),
        "",
    ]
    (out / "coverage.md").write_text("\n".join(lines), encoding="utf-8")
    payload = {"meta": meta, "models": [asdict(r) for r in records]}
    (out / "coverage.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
