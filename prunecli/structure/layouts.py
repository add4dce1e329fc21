"""What the tracer knows: the ops it understands, and the channel layouts of traced tensors.

A *layout* lists the channel spaces along a tensor's channel axis, in order (see
:mod:`prunecli.structure.trace`); spaces merge in a union-find. The tables name the modules,
functions and methods that pass channels through, combine two tensors, concatenate, reduce or
reshape; anything not named here is an unknown op, whose channels stay whole.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

# ----------------------------------------------------------------------------- op tables
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._NormBase,)  # BatchNorm*, InstanceNorm* (per-channel)
# subclasses with their own forward that are still "the base op" for slicing purposes
_SAFE_SUBCLASSES = {"Conv2dSame", "BatchNormAct2d", "SyncBatchNormAct", "GroupNormAct",
                    "LayerNorm2d", "GroupNorm1Act", "GroupNorm1",
                    "Linear"}  # timm's Linear only casts dtypes

_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.Mish, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.MaxPool1d,
    nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.LogSigmoid,
    nn.Tanhshrink, nn.Softsign, nn.Threshold, nn.SiLU,
)
_PASS_FUNCTIONS = {
    F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh,
    F.leaky_relu, F.elu, F.selu, F.celu, F.mish, F.hardtanh, F.softplus, F.dropout, F.dropout1d,
    F.dropout2d, F.dropout3d, F.alpha_dropout, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.interpolate, F.upsample, F.logsigmoid, torch.relu, torch.sigmoid, torch.tanh, torch.clamp,
    torch.clip, torch.abs, torch.neg, torch.exp, torch.square, torch.sqrt, torch.rsqrt,
    torch.nn.functional.relu_, torch.relu_, torch.sigmoid_, torch.erf, torch.nan_to_num,
    operator.neg, torch.max_pool2d, torch.avg_pool1d, torch.adaptive_avg_pool1d,
}
_PASS_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "clip_",
    "contiguous", "clone", "float", "half", "bfloat16", "to", "type_as", "abs", "neg", "exp",
    "sqrt", "rsqrt", "square", "detach", "hardswish", "hardsigmoid", "pow", "erf", "softplus",
    "requires_grad_", "cpu", "cuda", "double",
}
_BINARY_FUNCTIONS = {
    operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.isub,
    operator.truediv, operator.itruediv, torch.add, torch.mul, torch.sub, torch.div,
    torch.multiply, torch.subtract, torch.true_divide, torch.maximum, torch.minimum, torch.where,
}
_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_", "maximum",
                   "minimum", "expand_as"}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
# per-sample scalings that are the identity in eval (torchvision / timm stochastic depth)
_PASS_FUNCTION_NAMES = {"stochastic_depth", "drop_path"}
_SIZE_METHODS = {"size", "dim", "numel", "type", "is_floating_point"}


@dataclass(frozen=True)
class _Seg:
    space: int
    length: int


@dataclass(frozen=True)
class _Layout:
    """Channel spaces along ``axis`` of a tensor of ``ndim`` dims; after a flatten, every
    channel spans ``spatial`` consecutive features. ``guessed``: the tensor came from an op not
    understood, so which axis holds its channels is a guess (see ``_Analysis.on_axis``).
    ``head_dim`` > 0: ``axis`` holds attention heads of that many channels each, and the
    segments count heads (:mod:`prunecli.structure.heads`)."""

    segs: tuple[_Seg, ...]
    axis: int
    ndim: int
    spatial: int = 1
    guessed: bool = False
    head_dim: int = 0

    @property
    def channels(self) -> int:
        return sum(s.length for s in self.segs)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class _Unsupported(Exception):
    pass


@dataclass(frozen=True)
class _Const:
    target: str | None  # the get_attr it comes from (None: computed from several constants)


_CONV_FORWARDS = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}
_NORM_FORWARDS = {nn.BatchNorm1d.forward, nn.BatchNorm2d.forward, nn.BatchNorm3d.forward,
                  nn.InstanceNorm1d.forward, nn.InstanceNorm2d.forward,
                  nn.InstanceNorm3d.forward, nn.SyncBatchNorm.forward,
                  nn.modules.batchnorm._BatchNorm.forward,
                  nn.modules.instancenorm._InstanceNorm.forward}


def _meta(node: Any) -> Any:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return meta if hasattr(meta, "shape") else None


def _node_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)
    return out


def _flat_layouts(value: Any) -> list[_Layout]:
    if isinstance(value, _Layout):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat_layouts(v)]
    return []


def _same_layout(node: fx.Node, x: _Layout) -> _Layout:
    """Per-channel op: same spaces; the rank may change (pooling to 1x1 keeps it)."""
    out = _meta(node)
    if out is None:
        return x
    if x.axis >= len(out.shape) or int(out.shape[x.axis]) != x.channels:
        raise _Unsupported(f"{_name(node.target)} changed the channel count")
    return _Layout(x.segs, x.axis, len(out.shape), x.spatial, x.guessed)


def _keeps_channel_axis(idx: Any, axis: int, channels: int) -> bool:
    """Indexing that leaves the channel axis whole, now and after pruning: ``x[:, :, 1:]``, and
    ``x[:, :k]`` with ``k >= channels`` (GhostNet's ``out[:, :self.out_chs]``), which stays the
    identity when the tensor gets narrower. Axes before the channel axis may be sliced (not
    indexed: that would move the channel axis); axes after it may be indexed too."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(item is Ellipsis or item is None for item in idx):
        return False
    if any(not isinstance(item, slice) for item in idx[:axis]):
        return False
    if len(idx) <= axis:
        return True
    item = idx[axis]
    return isinstance(item, slice) and (item == slice(None) or (
        item.start in (None, 0) and item.step in (None, 1)
        and isinstance(item.stop, int) and item.stop >= channels))


def _name(target: Any) -> str:
    return getattr(target, "__name__", str(target))
