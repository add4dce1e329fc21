"""``prunecli export ckpt=FILE format=onnx|torchscript``: a deployable file of a model."""

from __future__ import annotations

from pathlib import Path

import hydra
import rich
from omegaconf import DictConfig

from prunecli.commands.common import user_errors_as_one_line
from prunecli.errors import ConfigError

SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="export")
@user_errors_as_one_line
def main(cfg: DictConfig) -> None:
    import torch

    from prunecli.engine.checkpoint import resolve_checkpoint
    from prunecli.structure import export_onnx, export_torchscript, load_slim
    from prunecli.structure.from_checkpoint import load_masked_model
    from prunecli.structure.io import is_slim_file

    if cfg.format not in SUFFIX:
        raise ConfigError(f"format={cfg.format} is not one of {', '.join(SUFFIX)}")
    source = resolve_checkpoint(cfg.ckpt)
    if is_slim_file(source):
        small = load_slim(source)
        model, shape = small.model, small.structure.input_shape[1:]
    else:
        loaded = load_masked_model(source)
        model, shape = loaded.model, loaded.example.shape[1:]
    x = torch.randn(cfg.batch_size, *shape)
    out = Path(cfg.out) if cfg.out else source.with_suffix(SUFFIX[cfg.format])
    if cfg.format == "onnx":
        export_onnx(model, x, out, opset=cfg.opset)
    else:
        export_torchscript(model, x, out)
    rich.get_console().print(f"{cfg.format}: [bold]{out.resolve()}[/bold] "
                             f"(input {list(x.shape)})")
