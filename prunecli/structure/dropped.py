"""Stand-ins for layers a dropped (zero-width) group leaves with nothing to compute.

When every channel of a group goes (``ChannelGroup.droppable``: a residual branch, a DenseNet
layer, a squeeze-excite bottleneck), PyTorch cannot hold a zero-width conv, and the parent
module's ``forward`` still calls the layers by name. So :func:`prunecli.structure.slim`
replaces them, exactly and at no cost:

* a producer of the group (and a depthwise conv on it) becomes :class:`EmptyChannels`: a tensor
  with no channels and the spatial size the layer would have produced, so the shapes downstream
  stay right;
* a norm or PReLU on the group becomes ``nn.Identity`` (nothing to normalise);
* a consumer that reads only dropped groups becomes :class:`ConstantChannels`: with no input, a
  conv or linear outputs its bias at every position, which is what the masked model computes.

The parent's residual add then adds that constant, so the branch costs (almost) nothing.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvGeometry(nn.Module):
    """The output spatial size of a conv (or depthwise conv) for an input size, from its
    kernel, stride, padding and dilation; ``same`` covers ``padding='same'`` and timm's
    ``Conv2dSame`` (output = ceil(input / stride))."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.kernel = tuple(int(k) for k in conv.kernel_size)
        self.stride = tuple(int(s) for s in conv.stride)
        self.dilation = tuple(int(d) for d in conv.dilation)
        padding = conv.padding
        self.same = padding == "same" or type(conv).__name__ == "Conv2dSame"
        if padding == "valid" or self.same:
            padding = (0,) * len(self.kernel)
        self.padding = tuple(int(p) for p in padding)

    def out_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        # plain integer arithmetic, so a traced export keeps the sizes symbolic
        if self.same:
            return tuple(-(-n // s) for n, s in zip(size, self.stride, strict=True))
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
            size, self.padding, self.dilation, self.kernel, self.stride, strict=True))


class EmptyChannels(nn.Module):
    """A layer whose every output channel was pruned: returns ``(N, 0, *spatial)`` (or
    ``(..., 0)`` for a linear) without computing anything."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.linear = isinstance(layer, nn.Linear)
        self.geometry = None if self.linear else ConvGeometry(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.geometry is None:
            return x.new_zeros((*x.shape[:-1], 0))
        return x.new_zeros((x.shape[0], 0, *self.geometry.out_size(tuple(x.shape[2:]))))

    def extra_repr(self) -> str:
        return "linear" if self.geometry is None else (
            f"kernel={self.geometry.kernel}, stride={self.geometry.stride}")


class ConstantChannels(nn.Module):
    """A conv/linear left with no input channels: its output is its bias (zero without one) at
    every position. The bias stays a trainable parameter under the same name."""

    def __init__(self, layer: nn.Module, out_index: torch.Tensor | None = None) -> None:
        super().__init__()
        self.linear = isinstance(layer, nn.Linear)
        self.geometry = None if self.linear else ConvGeometry(layer)
        out = layer.out_features if self.linear else layer.out_channels
        bias = getattr(layer, "bias", None)
        if out_index is not None:
            out = len(out_index)
            if bias is not None:
                bias = bias.detach().index_select(0, out_index.to(bias.device))
        self.out_channels = int(out)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=bias.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.geometry is None:
            shape = (*x.shape[:-1], self.out_channels)
            view = (1,) * (x.dim() - 1) + (self.out_channels,)
        else:
            shape = (x.shape[0], self.out_channels, *self.geometry.out_size(tuple(x.shape[2:])))
            view = (1, self.out_channels) + (1,) * (x.dim() - 2)
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):  # what the layer would have returned
            dtype = torch.get_autocast_dtype(x.device.type)
        if self.bias is None:
            return x.new_zeros(shape, dtype=dtype)
        return self.bias.to(dtype).view(view).expand(shape).contiguous()

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, bias={self.bias is not None}"
