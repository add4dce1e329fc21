"""``prunecli lut model=NAME`` (or ``ckpt=RUN``: the network a run trains, with its class count and
input size): measure a latency table of a model's layers on this device, then (``check=true``)
report how well it predicts the measured latency of whole slimmed models.

The table file goes to a stable path (``out``, default ``lut_<model>_<device>_<dtype>_b<batch>
.json`` in the current folder, not the run folder) so that rerunning the command resumes it and
training can name it: ``prunecli train ... cost=latency cost.table=PATH``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import hydra
import rich
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from prunecli.commands.common import run_dir, user_errors_as_one_line
from prunecli.errors import ConfigError


def default_out(cfg: DictConfig, device_type: str) -> Path:
    """``lut_resnet20_cpu_fp32_b32.json`` (``_cl`` for channels_last): one file per
    conditions, so different settings never resume each other's table."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(cfg.model.name))
    layout = "_cl" if cfg.channels_last else ""
    return Path(f"lut_{name}_{device_type}_{cfg.dtype}_b{cfg.batch_size}{layout}.json")


def _validate(cfg: DictConfig) -> None:
    for key in ("batch_size", "step", "repeats", "rounds"):
        if cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]} must be at least 1")
    if any(not 0 < k <= 1 for k in cfg.check_keep):
        raise ConfigError(f"check_keep={list(cfg.check_keep)}: fractions in (0, 1]")


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="lut")
@user_errors_as_one_line
def main(cfg: DictConfig) -> None:
    import torch

    from prunecli.bench.timing import DTYPES
    from prunecli.commands.common import model_input
    from prunecli.cost.latency_build import build_table, check_table
    from prunecli.cost.latency_layers import model_fingerprint
    from prunecli.engine.distributed import resolve_device
    from prunecli.models import build_model
    from prunecli.models.detection import core_of
    from prunecli.structure import trace_structure

    _validate(cfg)
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype={cfg.dtype} is not one of {', '.join(DTYPES)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device, key="device")
    if cfg.dtype == "fp16" and device.type != "cuda":
        raise ConfigError("dtype=fp16 is for CUDA; on the CPU use dtype=bf16 or fp32")
    if cfg.ckpt:  # the run's own network: its class count and input size, no weights needed
        from prunecli.bench.runs import load_for_bench

        run = load_for_bench(cfg.ckpt, cfg.input_size, with_dense=False)
        arch, shape, num_classes = run.architecture(), run.shape, run.num_classes
        cfg.model = OmegaConf.merge(cfg.model, {k: v for k, v in arch.items()
                                                if k in cfg.model})  # names the default out
    else:
        arch = OmegaConf.to_container(cfg.model)
        shape, num_classes = model_input(cfg.model, cfg.input_size, cfg.num_classes)
    cfg.input_size = list(shape)  # the report names the size it measured at
    built = build_model(arch, num_classes=num_classes, in_chans=shape[0]).eval()
    model = core_of(built)  # a detector: its core, what pruning slims and the budget counts
    structure = trace_structure(model, torch.randn(1, *shape))
    out = Path(cfg.out) if cfg.out else default_out(cfg, device.type)
    console = rich.get_console()
    before = _points_in(out) if cfg.resume else 0
    t0 = time.perf_counter()
    table = build_table(model, structure, step=cfg.step, batch_size=cfg.batch_size,
                        device=device, dtype=cfg.dtype, channels_last=cfg.channels_last,
                        warmup=cfg.warmup, repeats=cfg.repeats, rounds=cfg.rounds, path=out,
                        resume=cfg.resume,
                        threads=cfg.threads, max_points=cfg.max_points,
                        model_name=str(cfg.model.name))
    seconds = time.perf_counter() - t0
    entry = table.models.get(model_fingerprint(model, structure))
    console.print(f"latency table [bold]{out.resolve()}[/bold]: {len(table.grids)} layer kinds, "
                  f"{table.measured_points} points ({table.measured_points - before} measured "
                  f"now, in {seconds:.0f} s) on {table.conditions['device']}")
    if table.remaining or entry is None:
        console.print(f"[yellow]stopped with {table.remaining} points left[/yellow] "
                      "(max_points); run the same command again to continue.")
        return
    console.print(f"dense {entry['dense_ms']:.3f} ms = layers in the table "
                  f"{entry['table_ms']:.3f} ms + the rest {entry['rest_ms']:.3f} ms (norms, "
                  f"activations, adds, ...: {entry['rest_const_ms']:.3f} ms + "
                  f"{entry['rest_ms_per_activation']:.3g} ms per layer output value, fitted on "
                  "the model timed at widths 100/75/50/25%)")
    if cfg.check:
        rows = check_table(model, structure, table, keep_ratios=list(cfg.check_keep),
                           seed=cfg.seed, warmup=cfg.warmup, repeats=cfg.check_repeats)
        table.save(out)
        _report(rows, cfg, table.conditions)
    if model is not built:  # a detector
        console.print("the table and a latency budget count the detector's core (backbone, "
                      "neck, heads); its post-processing (anchors, box decoding, NMS) depends "
                      "on how many boxes pass the score threshold: `prunecli bench ckpt=RUN` "
                      "times it beside the core, on a trained run's real images")
    console.print(f"use it with: cost=latency cost.table={out.resolve()}")


def _points_in(path: Path) -> int:
    from prunecli.cost.latency_table import LatencyTable, LatencyTableError

    try:
        return LatencyTable.load(path).measured_points if path.exists() else 0
    except LatencyTableError:
        return 0


def _report(rows: list[dict[str, Any]], cfg: DictConfig, cond: dict[str, Any]) -> None:
    from prunecli.report import save_table

    title = (f"latency table check: {cfg.model.name} {'x'.join(map(str, cfg.input_size))}, "
             f"batch {cond['batch_size']}, {cond['dtype']}"
             f"{', channels_last' if cond['channels_last'] else ''} on {cond['device']} "
             f"({cond['threads']} threads)")
    table = Table(title=title, title_justify="left")
    for col in ("model", "kept %", "MACs %", "predicted ms", "measured ms", "error %"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["name"], f"{100 * r['keep']:.0f}", f"{100 * r['macs_ratio']:.1f}",
                      f"{r['predicted_ms']:.3f}", f"{r['measured_ms']:.3f}",
                      f"{r['error_pct']:+.1f}")
    out = run_dir()
    out.mkdir(parents=True, exist_ok=True)
    save_table(table, out / "lut_check.txt")
    console = rich.get_console()
    console.print(table)
    console.print("predicted = sum of the table's per-layer latencies + the measured rest; "
                  "error = (predicted - measured) / measured; models timed interleaved, median.")
