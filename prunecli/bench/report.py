"""Rows, table and files of a bench (``bench.json`` + ``bench.txt``), shared by
``prunecli bench ckpt=...`` and ``prunecli bench runs=...`` so both write the same format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from prunecli.bench.timing import Timing


def timing_rows(batch: int, timings: dict[str, Timing], stats: dict[str, dict[str, int]]
                ) -> list[dict[str, Any]]:
    """One row per timed model. Its speed-ups are against its ``dense`` counterpart (``slim
    full`` against ``dense full``, ``slim (onnxruntime)`` against ``dense (onnxruntime)``; any
    other name against ``dense``), measured in the same interleaved rounds."""
    rows = []
    for name, t in timings.items():
        base = name.split(" ")[0]
        ref_name = name.replace(base, "dense", 1)
        ref = timings.get(ref_name, t)
        speedup = ref.median_ms / t.median_ms
        macs_speedup = stats[ref_name]["macs"] / max(1, stats[name]["macs"])
        rows.append({"batch": batch, "model": name, "macs": stats[name]["macs"],
                     "params": stats[name]["params"], "median_ms": t.median_ms,
                     "p90_ms": t.p90_ms, "images_per_s": t.throughput,
                     "speedup": speedup, "macs_speedup": macs_speedup,
                     "delivered": speedup / macs_speedup if macs_speedup else None})
    return rows


def bench_title(cfg: DictConfig, name: str, device: torch.device, shape: Sequence[int]) -> str:
    """What was timed and how: model, input, device, dtype, layout, compile, threads."""
    return (f"bench {name} {'x'.join(map(str, shape))} on {device} ({cfg.dtype}"
            f"{', channels_last' if cfg.channels_last else ''}"
            f"{', compiled' if cfg.compile else ''}, {torch.get_num_threads()} threads)")


def bench_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """The rows of :func:`timing_rows` as a Rich table."""
    table = Table(title=title, title_justify="left")
    for col in ("batch", "model", "MACs", "params", "median ms", "p90 ms", "img/s",
                "speed-up", "MACs speed-up", "delivered"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        delivered = "-" if r["delivered"] is None else f"{100 * r['delivered']:.0f} %"
        table.add_row(str(r["batch"]), r["model"], f"{r['macs'] / 1e6:.1f} M",
                      f"{r['params'] / 1e6:.2f} M", f"{r['median_ms']:.2f}",
                      f"{r['p90_ms']:.2f}", f"{r['images_per_s']:.1f}", f"{r['speedup']:.2f}x",
                      f"{r['macs_speedup']:.2f}x", delivered)
    return table


def bench_meta(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """Where and how the numbers were measured (they mean little without it)."""
    meta: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                            "threads": torch.get_num_threads(),
                            "config": OmegaConf.to_container(cfg, resolve=True)}
    if torch.cuda.is_available() and device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    return meta


def write_bench(folder: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any],
                table: Table, stem: str = "bench") -> None:
    """``<folder>/<stem>.json`` (``{"meta", "rows"}``) and the table as ``<stem>.txt``."""
    from prunecli.report import save_table

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "rows": list(rows)}, indent=2) + "\n")
    save_table(table, folder / f"{stem}.txt")
