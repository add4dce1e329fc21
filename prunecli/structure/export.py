"""Export a (slimmed) model to TorchScript or ONNX for deployment."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from prunecli.errors import PrunecliError


def export_torchscript(model: nn.Module, example_inputs: torch.Tensor,
                       path: str | os.PathLike[str]) -> Path:
    """Trace to TorchScript (eval mode) and save; reload with ``torch.jit.load``."""
    model = model.eval()
    with torch.no_grad():
        scripted = torch.jit.trace(model, example_inputs)
    path = Path(path)
    scripted.save(str(path))
    return path


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: str | os.PathLike[str],
                opset: int = 17, dynamic_batch: bool = True) -> Path:
    """Export to ONNX with a dynamic batch axis (TorchScript-based exporter)."""
    if importlib.util.find_spec("onnx") is None:
        raise PrunecliError("ONNX export needs the 'onnx' package: pip install 'prunecli[onnx]' "
                            "(or pip install onnx)")
    path = Path(path)
    model = model.eval()
    names = output_names(model, example_inputs)
    axes = {n: {0: "batch"} for n in ("input", *names)} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(model, (example_inputs,), str(path), input_names=["input"],
                          output_names=names, opset_version=opset, dynamic_axes=axes,
                          dynamo=False)
    return path


def output_names(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """``output`` for a one-tensor model; a detector core's own names (``cls_logits.0``, ...)
    or ``output.i`` for a model returning a tuple of tensors."""
    named = getattr(model, "output_names", None)
    if named:
        return [str(n) for n in named]
    with torch.no_grad():
        out = model(example_inputs)
    if isinstance(out, torch.Tensor):
        return ["output"]
    return [f"output.{i}" for i in range(len(out))]
