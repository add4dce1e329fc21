"""``prunecli bench ckpt=...``: latency and throughput of a dense model and its slimmed version,
and how much of the MACs reduction the device actually turns into speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import rich
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from prunecli.commands.common import model_input, run_dir, user_errors_as_one_line
from prunecli.errors import ConfigError


def _pair(cfg: DictConfig) -> tuple[dict[str, Any], tuple[int, ...], str]:
    """{"dense": model, "slim": model?}, input shape, title."""
    from prunecli.models import build_model
    from prunecli.structure import slim, strip_all_masks
    from prunecli.structure.from_checkpoint import load_masked_model
    from prunecli.structure.io import is_slim_file, load_slim

    if cfg.ckpt is None:
        shape, num_classes = model_input(cfg.model, cfg.input_size, cfg.num_classes)
        model = build_model(OmegaConf.to_container(cfg.model), num_classes=num_classes,
                            in_chans=shape[0])
        return {"dense": model}, shape, cfg.model.name
    if is_slim_file(cfg.ckpt):
        small = load_slim(cfg.ckpt)
        dense = build_model(small.model_config, num_classes=small.num_classes,
                            in_chans=small.in_chans)
        shape = tuple(cfg.input_size or small.structure.input_shape[1:])
        return {"dense": dense, "slim": small.model}, shape, small.model_config["name"]
    loaded = load_masked_model(cfg.ckpt)
    models = {"dense": loaded.model}
    if loaded.keep:
        models["slim"] = slim(loaded.model, loaded.structure, loaded.keep)
    strip_all_masks(loaded.model)  # time the dense network without mask overhead
    shape = tuple(cfg.input_size or loaded.example.shape[1:])
    return models, shape, loaded.model_config["name"]


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="bench")
@user_errors_as_one_line
def main(cfg: DictConfig) -> None:
    import torch

    from prunecli.bench import prepare, time_interleaved
    from prunecli.cost import count_macs, count_params
    from prunecli.engine.distributed import resolve_device
    from prunecli.models.detection import core_of, is_detector

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise ConfigError(f"batch_sizes={list(cfg.batch_sizes)} must be positive integers")
    device = resolve_device(cfg.device)
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
    _report(rows, cfg, title, device, shape)
    if detector:
        rich.get_console().print(
            "core = backbone, neck and heads (what pruning shrinks); full = the whole detector "
            "with anchors, box decoding and NMS, whose time grows with the boxes that pass the "
            "score threshold (untrained weights pass nearly all: time a trained checkpoint)")


def _report(rows: list[dict[str, Any]], cfg: DictConfig, title: str, device: Any,
            shape: tuple[int, ...]) -> None:
    import torch

    table = Table(title=f"bench {title} {'x'.join(map(str, shape))} on {device} ({cfg.dtype}"
                        f"{', channels_last' if cfg.channels_last else ''}"
                        f"{', compiled' if cfg.compile else ''}, {torch.get_num_threads()} "
                        "threads)", title_justify="left")
    for col in ("batch", "model", "MACs", "params", "median ms", "p90 ms", "img/s",
                "speed-up", "MACs speed-up", "delivered"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(str(r["batch"]), r["model"], f"{r['macs'] / 1e6:.1f} M",
                      f"{r['params'] / 1e6:.2f} M", f"{r['median_ms']:.2f}",
                      f"{r['p90_ms']:.2f}", f"{r['images_per_s']:.1f}", f"{r['speedup']:.2f}x",
                      f"{r['macs_speedup']:.2f}x", f"{100 * r['delivered']:.0f} %")
    out = run_dir()
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "config": OmegaConf.to_container(cfg, resolve=True)}
    if torch.cuda.is_available() and device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    from prunecli.report import save_table

    save_table(table, Path(out) / "bench.txt")
    console = rich.get_console()
    console.print(table)
    console.print("speed-up = dense median / this median (measured interleaved); delivered = "
                  f"speed-up / MACs speed-up. Outputs: [bold]{out.resolve()}[/bold]")
