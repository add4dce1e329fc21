"""Time ONNX exports under onnxruntime (CPU), if it is installed (``pip install onnxruntime``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunecli.errors import PrunecliError
from prunecli.structure import export_onnx


def onnx_runners(models: dict[str, nn.Module], input_shape: tuple[int, ...], threads: int | None
                 ) -> dict[str, Callable[[torch.Tensor], object]]:
    """Export each model and wrap an onnxruntime session as a callable taking a torch tensor."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise PrunecliError("onnx=true needs onnxruntime: pip install onnxruntime") from exc
    options = ort.SessionOptions()
    # onnxruntime's idle threads spin by default, starving the PyTorch calls timed in between
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    runners = {}
    folder = Path(tempfile.mkdtemp(prefix="prunecli-onnx-"))
    for name, model in models.items():
        path = export_onnx(model.float().cpu().eval(), torch.randn(1, *input_shape),
                           folder / f"{name}.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor, session=session) -> object:
            return session.run(None, {"input": np.ascontiguousarray(x.float().numpy())})

        runners[f"{name} (onnxruntime)"] = run
    return runners
