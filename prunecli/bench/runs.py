"""``prunecli bench runs=[DIR,...]``: the final model of every run of a sweep, timed against one
dense reference *interleaved in one process*, so a load burst on the machine slows them all
alike and their latencies can be compared with each other, not only with dense.

Each run folder (a folder with ``results.json`` and a model) gets a ``bench.json`` in the format
of ``prunecli bench ckpt=...``: a pruned run rows ``dense`` (the shared reference) and ``slim``
(its ``slim.pt``, or its masked ``last.pt`` slimmed), a dense run (``method: none``) one
``dense`` row, its own trained model. The sweep gets ``bench_runs.json`` / ``bench_runs.txt`` in
the command's run dir. A detector is timed as its core (what pruning shrinks); the ``full``
variants of ``bench ckpt=`` (anchors, decoding, NMS, whose time depends on the boxes found) are
left out here: bench one run with ``ckpt=`` for them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rich
import torch
from omegaconf import DictConfig
from rich.table import Table
from torch import nn

from prunecli.bench.report import bench_meta, bench_table, bench_title, timing_rows, write_bench
from prunecli.errors import ConfigError
from prunecli.run_folders import find_run_dirs, folders_arg

log = logging.getLogger("prunecli")


@dataclass
class Loaded:
    """What a bench needs of a checkpoint: its models, input shape and architecture."""

    models: dict[str, nn.Module]  # "dense" (unless not asked for) and, if pruned, "slim"
    shape: tuple[int, ...]  # C, H, W
    model_config: dict[str, Any]
    num_classes: int
    in_chans: int

    def architecture(self) -> dict[str, Any]:
        """The dense network these models come from (no weights: only its speed is timed)."""
        from prunecli.models import architecture

        return architecture(self.model_config)

    def build_dense(self) -> nn.Module:
        from prunecli.models import build_model

        return build_model(self.architecture(), num_classes=self.num_classes,
                           in_chans=self.in_chans)


def load_for_bench(path: str | Path, input_size: Sequence[int] | None = None,
                   with_dense: bool = True) -> Loaded:
    """A slim file: the dense architecture (fresh weights) and the slim model; a training
    checkpoint: its dense model without masks and, if it is masked, its slimmed version.
    ``with_dense=False`` skips building a dense model that only a slim file would need."""
    from prunecli.structure import slim, strip_all_masks
    from prunecli.structure.from_checkpoint import load_masked_model
    from prunecli.structure.io import is_slim_file, load_slim

    if is_slim_file(path):
        small = load_slim(path)
        out = Loaded({"slim": small.model},
                     tuple(input_size or small.structure.input_shape[1:]),
                     dict(small.model_config), small.num_classes, small.in_chans)
        if with_dense:
            out.models = {"dense": out.build_dense(), **out.models}
        return out
    loaded = load_masked_model(path)
    models = {"dense": loaded.model}
    if loaded.keep:
        models["slim"] = slim(loaded.model, loaded.structure, loaded.keep)
    strip_all_masks(loaded.model)  # time the dense network without mask overhead
    return Loaded(models, tuple(input_size or loaded.example.shape[1:]),
                  dict(loaded.model_config), loaded.num_classes, loaded.in_chans)


@dataclass
class Run:
    """One run's final model, as benched."""

    folder: Path
    method: str
    kind: str  # "slim": a pruned run's slimmed model; "dense": a dense run's own model
    model: nn.Module
    loaded: Loaded


def load_run(folder: Path, input_size: Sequence[int] | None) -> Run:
    """A run's final model: its ``slim.pt`` if it has one, else its ``last.pt`` (slimmed when
    masked, e.g. a pruned run saved with ``method.save_slim=false``)."""
    results = json.loads((folder / "results.json").read_text())
    slim_file = folder / "slim.pt"
    loaded = load_for_bench(slim_file if slim_file.is_file() else folder / "last.pt",
                            input_size, with_dense=False)
    kind = "slim" if "slim" in loaded.models else "dense"
    return Run(folder, str(results.get("method", "?")), kind, loaded.models[kind], loaded)


def _same_model(runs: Sequence[Run]) -> None:
    """One reference fits all only if every run is the same network on the same input."""
    def key(run: Run) -> tuple[Any, ...]:
        arch = run.loaded.architecture()
        return (arch.get("name"), arch.get("source"), json.dumps(arch.get("kwargs") or {},
                                                                 sort_keys=True, default=str),
                run.loaded.num_classes, run.loaded.in_chans, run.loaded.shape)

    def says(run: Run) -> str:
        name, _, kwargs, classes, _, shape = key(run)
        extra = "" if kwargs == "{}" else f" {kwargs}"
        return (f"{run.folder} is {name}{extra}, {classes} classes, "
                f"{'x'.join(map(str, shape))}")

    first = runs[0]
    for run in runs[1:]:
        if key(run) != key(first):
            raise ConfigError(f"runs= mixes models or input sizes ({says(first)}; {says(run)}): "
                              "bench runs of one model and input size together")


def _stats(model: nn.Module, shape: Sequence[int]) -> dict[str, int]:
    from prunecli.cost import count_macs, count_params
    from prunecli.models.detection import core_of

    return {"macs": count_macs(core_of(model), torch.randn(1, *shape)),
            "params": count_params(core_of(model))}


def bench_runs(cfg: DictConfig, device: torch.device, out: Path) -> list[dict[str, Any]]:
    """Time every run's final model and the dense reference interleaved, for each batch size;
    write each run's ``bench.json`` and the sweep's ``bench_runs.json`` / ``.txt`` in ``out``;
    return the sweep rows."""
    from prunecli.bench import prepare, time_interleaved
    from prunecli.models.detection import core_of, is_detector

    if cfg.onnx:
        raise ConfigError("onnx=true is not supported with runs=; bench one run with ckpt=")
    folders = folders_arg(cfg.runs)
    runs = [load_run(f, cfg.input_size) for f in find_run_dirs(folders, with_model=True)]
    _same_model(runs)
    reference = runs[0].loaded.build_dense()
    shape = runs[0].loaded.shape
    detector = is_detector(reference)
    # "dense" is the reference; runs get names that timing_rows compares with it
    models = {"dense": reference, **{f"run{i}": r.model for i, r in enumerate(runs)}}
    stats = {name: _stats(m, shape) for name, m in models.items()}
    runners = {name: prepare(core_of(m), device, cfg.dtype, cfg.channels_last, cfg.compile)
               for name, m in models.items()}
    log.info("bench: %d runs and the dense reference, interleaved", len(runs))
    timings = {batch: time_interleaved(runners, shape, batch, device, cfg.dtype,
                                       cfg.channels_last, cfg.warmup, cfg.repeats,
                                       unit_input=detector)
               for batch in cfg.batch_sizes}

    meta = bench_meta(cfg, device)
    title = bench_title(cfg, runs[0].loaded.model_config["name"], device, shape)
    for i, run in enumerate(runs):
        rows = []
        for batch, t in timings.items():
            if run.kind == "slim":
                rows += timing_rows(batch, {"dense": t["dense"], "slim": t[f"run{i}"]},
                                    {"dense": stats["dense"], "slim": stats[f"run{i}"]})
            else:  # a dense run: its own trained model is its dense row
                rows += timing_rows(batch, {"dense": t[f"run{i}"]}, {"dense": stats[f"run{i}"]})
        run_meta = {**meta, "reference": "dense architecture timed interleaved with "
                    f"{len(runs)} runs", "bench_runs": str(out.resolve())}
        write_bench(run.folder, rows, run_meta, bench_table(rows, f"{title}: {run.folder}"))

    sweep_rows = []
    for batch, t in timings.items():
        for row in timing_rows(batch, t, stats):
            i = None if row["model"] == "dense" else int(row["model"][3:])
            run = None if i is None else runs[i]
            sweep_rows.append({"run": None if run is None else str(run.folder.resolve()),
                               "method": "dense (reference)" if run is None else run.method,
                               **row, "model": "dense" if run is None else run.kind})
    table = _sweep_table(sweep_rows, runs, list(cfg.batch_sizes), title, folders)
    write_bench(out, sweep_rows, {**meta, "runs": folders}, table, stem="bench_runs")
    console = rich.get_console()
    console.print(table)
    console.print("speed-up = dense reference median / this median, all timed interleaved in "
                  f"one process. Per-run bench.json in each run folder; the table: "
                  f"[bold]{out.resolve()}[/bold] (bench_runs.json, bench_runs.txt)")
    return sweep_rows


def _sweep_table(rows: Sequence[dict[str, Any]], runs: Sequence[Run], batches: Sequence[int],
                 title: str, folders: Sequence[str]) -> Table:
    """One line per run (the reference first): MACs, then median ms and speed-up per batch."""
    roots = [Path(f).resolve() for f in folders]

    def short(run: str | None) -> str:
        if run is None:
            return "-"
        path = Path(run)
        for root in roots:
            if path.is_relative_to(root):
                rel = path.relative_to(root)
                return str(Path(root.name) / rel) if str(rel) != "." else root.name
        return run

    table = Table(title=f"{title}: {len(runs)} runs", title_justify="left")
    for col in ("run", "method", "MACs"):
        table.add_column(col, justify="right" if col == "MACs" else "left")
    for b in batches:
        table.add_column(f"ms b{b}", justify="right")
        table.add_column(f"speed-up b{b}", justify="right")
    by_run: dict[str | None, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault(r["run"], {})[r["batch"]] = r
    for run, per_batch in by_run.items():
        first = next(iter(per_batch.values()))
        cells = [short(run), first["method"], f"{first['macs'] / 1e6:.1f} M"]
        for b in batches:
            cells += [f"{per_batch[b]['median_ms']:.2f}", f"{per_batch[b]['speedup']:.2f}x"]
        table.add_row(*cells)
    return table
