"""``prunecli bench ckpt=...``: latency and throughput of a dense model and its slimmed version,
and how much of the MACs reduction the device actually turns into speed. ``prunecli bench
runs=[DIR,...]`` times the final model of every run under the folders against one dense
reference, all interleaved in one process (:mod:`prunecli.bench.runs`)."""

from __future__ import annotations

from typing import Any

import hydra
import rich
from omegaconf import DictConfig, OmegaConf

from prunecli.commands.common import model_input, run_dir, user_errors_as_one_line
from prunecli.errors import ConfigError


def _pair(cfg: DictConfig) -> tuple[dict[str, Any], tuple[int, ...], str]:
    """{"dense": model, "slim": model?}, input shape, title."""
    from prunecli.bench.runs import load_for_bench
    from prunecli.models import build_model

    if cfg.ckpt is None:
        shape, num_classes = model_input(cfg.model, cfg.input_size, cfg.num_classes)
        model = build_model(OmegaConf.to_container(cfg.model), num_classes=num_classes,
                            in_chans=shape[0])
        return {"dense": model}, shape, cfg.model.name
    loaded = load_for_bench(cfg.ckpt, cfg.input_size)
    return loaded.models, loaded.shape, loaded.model_config["name"]


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="bench")
@user_errors_as_one_line
def main(cfg: DictConfig) -> None:
    import torch

    from prunecli.bench import prepare, time_interleaved
    from prunecli.bench.report import timing_rows
    from prunecli.cost import count_macs, count_params
    from prunecli.engine.distributed import resolve_device
    from prunecli.models.detection import core_of, is_detector

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise ConfigError(f"batch_sizes={list(cfg.batch_sizes)} must be positive integers")
    if cfg.runs is not None:
        if cfg.ckpt is not None:
            raise ConfigError("give ckpt= (one model) or runs= (every run under folders), "
                              "not both")
        from prunecli.bench.runs import bench_runs

        bench_runs(cfg, resolve_device(cfg.device, key="device"), run_dir())
        return
    device = resolve_device(cfg.device, key="device")
    models, shape, title = _pair(cfg)
    example = torch.randn(1, *shape)
    # a detector is timed as its core (backbone, neck, heads: what pruning shrinks) and as the
    # whole model ("full": anchors, box decoding and NMS too), on images in [0, 1]
    detector = any(is_detector(m) for m in models.values())
    stats = {name: {"macs": count_macs(core_of(m), example), "params": count_params(core_of(m))}
             for name, m in models.items()}
    runners = {name: prepare(core_of(m), device, cfg.dtype, cfg.channels_last, cfg.compile)
               for name, m in models.items()}
    if detector:
        for name, m in models.items():
            stats[f"{name} full"] = stats[name]
            runners[f"{name} full"] = prepare(m, device, cfg.dtype, cfg.channels_last,
                                              cfg.compile)
    if cfg.onnx:
        from prunecli.bench.onnx_runtime import onnx_runners

        if device.type != "cpu":
            raise ConfigError("onnx=true times onnxruntime on the CPU; use device=cpu")
        onnx = onnx_runners({n: core_of(m) for n, m in models.items()}, shape, cfg.threads)
        for name in list(onnx):
            stats[name] = stats[name.split(" ")[0]]
        runners.update(onnx)

    rows = []
    for batch in cfg.batch_sizes:
        timings = time_interleaved(runners, shape, batch, device, cfg.dtype, cfg.channels_last,
                                   cfg.warmup, cfg.repeats, unit_input=detector)
        rows += timing_rows(batch, timings, stats)
    _report(rows, cfg, title, device, shape)
    if detector:
        rich.get_console().print(
            "core = backbone, neck and heads (what pruning shrinks); full = the whole detector "
            "with anchors, box decoding and NMS, whose time grows with the boxes that pass the "
            "score threshold (untrained weights pass nearly all: time a trained checkpoint)")


def _report(rows: list[dict[str, Any]], cfg: DictConfig, title: str, device: Any,
            shape: tuple[int, ...]) -> None:
    from prunecli.bench.report import bench_meta, bench_table, bench_title, write_bench

    table = bench_table(rows, bench_title(cfg, title, device, shape))
    out = run_dir()
    write_bench(out, rows, bench_meta(cfg, device), table)
    console = rich.get_console()
    console.print(table)
    console.print("speed-up = dense median / this median (measured interleaved); delivered = "
                  f"speed-up / MACs speed-up. Outputs: [bold]{out.resolve()}[/bold]")
