"""Timing forward passes the way deployment runs them: eval mode, inference mode, the target
dtype and memory layout, optional ``torch.compile``, warm-up first, CUDA events on a GPU.

Models compared with each other are timed *interleaved* (one call of each in turn), so a busy
machine slows all of them alike and their ratio stays meaningful.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunecli.errors import ConfigError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Timing:
    name: str
    batch: int
    median_ms: float
    p90_ms: float
    samples: int

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return 1000.0 * self.batch / self.median_ms if self.median_ms > 0 else float("inf")


def prepare(model: nn.Module, device: torch.device, dtype: str, channels_last: bool,
            compile_model: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model as it will be deployed: eval mode, on ``device``, in ``dtype``."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype} is not one of {', '.join(DTYPES)}")
    if dtype == "fp16" and device.type != "cuda":
        raise ConfigError("dtype=fp16 is for CUDA; on the CPU use dtype=bf16 or fp32")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(device=device, dtype=DTYPES[dtype], memory_format=fmt)
    return torch.compile(model) if compile_model else model


def _make_input(shape: Sequence[int], batch: int, device: torch.device, dtype: str,
                channels_last: bool, unit: bool = False) -> torch.Tensor:
    make = torch.rand if unit else torch.randn
    x = make(batch, *shape, device=device, dtype=DTYPES[dtype])
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Milliseconds of one call: CUDA events on a GPU (no host-side noise), perf_counter else."""
    if device.type == "cuda":
        def run(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn: Callable[[], object]) -> float:
            t0 = time.perf_counter()
            fn()
            return 1000.0 * (time.perf_counter() - t0)
    return run


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


@torch.inference_mode()
def time_interleaved(models: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                     input_shape: Sequence[int], batch: int, device: torch.device,
                     dtype: str = "fp32", channels_last: bool = False, warmup: int = 10,
                     repeats: int = 50, unit_input: bool = False,
                     inputs: torch.Tensor | None = None) -> dict[str, Timing]:
    """Median and p90 latency of each model at ``batch``, their calls interleaved; the input is
    standard normal, or uniform in [0, 1] with ``unit_input`` (images, for detectors), or the
    first ``batch`` of ``inputs`` (real images: a detector's post-processing time depends on
    how many boxes pass its score threshold, which noise does not show)."""
    if inputs is not None:
        if len(inputs) < batch:
            raise ConfigError(f"{len(inputs)} inputs given for batch {batch}")
        fmt = torch.channels_last if channels_last and inputs.ndim == 4 else \
            torch.contiguous_format
        x = inputs[:batch].to(device=device, dtype=DTYPES[dtype], memory_format=fmt)
    else:
        x = _make_input(input_shape, batch, device, dtype, channels_last, unit_input)
    timer = _timer(device)
    for _ in range(max(1, warmup)):
        for fn in models.values():
            fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(max(1, repeats)):
        for name, fn in models.items():
            times[name].append(timer(lambda fn=fn: fn(x)))
    return {name: Timing(name, batch, statistics.median(t), _p90(t), len(t))
            for name, t in times.items()}
