"""Mixed precision: fp16 with loss scaling on CUDA, bf16 on CUDA or CPU, or plain fp32."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from prunecli.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Precision:
    """Owns the autocast context and the GradScaler for one run."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in _DTYPES:
            raise ConfigError(f"trainer.precision={name} is not one of {', '.join(_DTYPES)}")
        if name == "fp16" and device.type != "cuda":
            raise ConfigError(
                "trainer.precision=fp16 needs CUDA (fp16 autocast on CPU is slow and unscaled); "
                "use trainer.precision=bf16 on the CPU"
            )
        self.name = name
        self.dtype = _DTYPES[name]
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")
        if name == "fp16":
            # The scaler skips the optimizer steps whose gradients overflowed (the first ones,
            # while it finds its scale) and the LR schedule still advances: it counts steps, as
            # resume and the methods' schedules do. PyTorch then warns, in every fp16 run, that
            # the first LR value was skipped (seen in the first GPU check); nothing is wrong.
            warnings.filterwarnings(
                "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before "
                r"`optimizer\.step\(\)`", category=UserWarning)

    @property
    def enabled(self) -> bool:
        return self.name != "fp32"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled):
            yield
