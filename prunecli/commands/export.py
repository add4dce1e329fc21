"""``prunecli export ckpt=FILE format=onnx|torchscript``: a deployable file of a model.

For a detector: its core (what pruning slims; normalised images -> raw head tensors) and, as
ONNX, the whole detector with anchors, decoding and NMS (``X.full.onnx``; ``whole=false`` skips it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import rich
from omegaconf import DictConfig, OmegaConf

from prunecli.commands.common import user_errors_as_one_line
from prunecli.errors import ConfigError

SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="export")
@user_errors_as_one_line
def main(cfg: DictConfig) -> None:
    import torch

    from prunecli.models.detection import core_of, is_detector
    from prunecli.structure import export_onnx, export_torchscript

    if cfg.format not in SUFFIX:
        raise ConfigError(f"format={cfg.format} is not one of {', '.join(SUFFIX)}")
    model, shape, source = _model_to_export(cfg)
    x = torch.randn(cfg.batch_size, *shape)
    out = Path(cfg.out) if cfg.out else source.with_suffix(SUFFIX[cfg.format])
    out.parent.mkdir(parents=True, exist_ok=True)
    detector = model if is_detector(model) else None
    net = core_of(model)  # a detector's core: images (normalised) -> raw head tensors
    if cfg.format == "onnx":
        export_onnx(net, x, out, opset=cfg.opset)
    else:
        export_torchscript(net, x, out)
    console = rich.get_console()
    what = "detector core, normalised input" if detector is not None else "input"
    console.print(f"{cfg.format}: [bold]{out.resolve()}[/bold] ({what} {list(x.shape)})")
    if detector is not None and cfg.whole:
        _export_whole(detector, out, cfg, console, size=int(shape[-1]))


def _model_to_export(cfg: DictConfig) -> tuple[Any, tuple[int, ...], Path]:
    """The model, its input shape (C, H, W) and the path the output file is named after."""
    from prunecli.engine.checkpoint import resolve_checkpoint
    from prunecli.structure import load_slim
    from prunecli.structure.from_checkpoint import load_masked_model
    from prunecli.structure.io import is_slim_file

    if cfg.ckpt is None:  # the model as built (random or given weights), e.g. to try a deployment
        from prunecli.commands.common import model_input
        from prunecli.models import build_model

        shape, num_classes = model_input(cfg.model, cfg.input_size, cfg.num_classes)
        model = build_model(OmegaConf.to_container(cfg.model), num_classes=num_classes,
                            in_chans=shape[0])
        return model.eval(), tuple(shape), Path(str(cfg.model.name)).resolve()
    source = resolve_checkpoint(cfg.ckpt)
    if is_slim_file(source):
        small = load_slim(source)
        return small.model, tuple(small.structure.input_shape[1:]), source
    loaded = load_masked_model(source)
    return loaded.model, tuple(loaded.example.shape[1:]), source


def _export_whole(detector, core_file: Path, cfg: DictConfig, console, size: int) -> None:
    """The whole detector beside its core (ONNX only): images in [0, 1] of the core's input
    size -> detections."""
    from prunecli.models.detection import export_whole_detector_onnx
    from prunecli.models.registry import one_line

    if cfg.format != "onnx":
        console.print("whole detector: exported as ONNX only (format=onnx); the core above is "
                      "the TorchScript file")
        return
    path = core_file.with_name(core_file.stem + ".full.onnx")
    try:
        export_whole_detector_onnx(detector, path, opset=cfg.opset, size=size)
    except Exception as exc:  # torchvision's post-processing does not export for every model
        path.unlink(missing_ok=True)
        console.print(f"whole detector: not exported ({type(detector).__name__}: "
                      f"{one_line(exc)}); deploy the core and run post-processing yourself")
        return
    console.print(f"onnx (whole detector: boxes, scores, labels after NMS): "
                  f"[bold]{path.resolve()}[/bold] (input [1, 3, {size}, {size}] in [0, 1])")
