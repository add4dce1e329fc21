"""A layer's latency *signature*: everything about it except its channel counts.

conv/depthwise: kernel, stride, padding, dilation, bias, input size (and a grouped conv's group
width); linear: positions per sample and bias. Layers sharing a signature share one grid of a
latency table (:mod:`prunecli.cost.latency_table`), which is why the key must be stable and
readable: tables are JSON files keyed by it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Signature:
    """A layer without its channel counts. ``kind``: conv | depthwise | linear."""

    kind: str
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    bias: bool = False
    hw: tuple[int, ...] = ()  # input spatial size (conv, depthwise)
    positions: int = 1  # rows per sample (linear on (B, N, C) tokens: N)
    padding_mode: str = "zeros"
    group_width: int = 1  # depthwise kind: channels per conv group (>1: a grouped w -> w conv)

    @property
    def key(self) -> str:
        """Stable, readable JSON key, e.g. ``conv k3x3 s1x1 p1x1 d1x1 nobias in32x32``."""
        if self.kind == "linear":
            return f"linear n{self.positions} {'bias' if self.bias else 'nobias'}"
        pad = self.padding if isinstance(self.padding, str) else _x(self.padding)
        mode = "" if self.padding_mode == "zeros" else f" {self.padding_mode}"
        mode += f" g{self.group_width}" if self.group_width > 1 else ""
        return (f"{self.kind} k{_x(self.kernel)} s{_x(self.stride)} p{pad} d{_x(self.dilation)} "
                f"{'bias' if self.bias else 'nobias'} in{_x(self.hw)}{mode}")

    @property
    def ndim(self) -> int:
        """Grid axes: 1 for depthwise (c), 2 otherwise (c_in, c_out)."""
        return 1 if self.kind == "depthwise" else 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        def tup(v: Any) -> Any:
            return tuple(int(i) for i in v) if isinstance(v, list | tuple) else v

        return cls(**{k: tup(v) for k, v in d.items()})

    def build(self, c_in: int, c_out: int) -> nn.Module:
        """The layer this signature describes, at ``c_in`` -> ``c_out`` channels."""
        if self.kind == "linear":
            return nn.Linear(c_in, c_out, bias=self.bias)
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(self.kernel)]
        groups = c_in // self.group_width if self.kind == "depthwise" else 1
        out = c_in if self.kind == "depthwise" else c_out
        return conv(c_in, out, self.kernel, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=groups, bias=self.bias,
                    padding_mode=self.padding_mode)

    def input_shape(self, c_in: int) -> tuple[int, ...]:
        """Per-sample input shape of the layer at ``c_in`` channels."""
        if self.kind == "linear":
            return (self.positions, c_in) if self.positions > 1 else (c_in,)
        return (c_in, *self.hw)


def _x(values: Iterable[int]) -> str:
    return "x".join(str(v) for v in values)


def signature_of(module: nn.Module, kind: str, in_shape: Sequence[int]) -> Signature:
    """The signature of a traced conv/depthwise/linear module given its input shape."""
    bias = getattr(module, "bias", None) is not None
    if kind == "linear":
        positions = math.prod(in_shape[1:-1]) if len(in_shape) > 2 else 1
        return Signature("linear", bias=bias, positions=int(positions))
    pad = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    width = module.in_channels // module.groups if kind == "depthwise" else 1
    return Signature(kind, tuple(module.kernel_size), tuple(module.stride), pad,
                     tuple(module.dilation), bias, tuple(int(s) for s in in_shape[2:]),
                     padding_mode=str(module.padding_mode), group_width=width)


