"""The tracer fuzzer's random nets (see fuzz_structure.py): each drawn from a seeded generator,
so the seed alone rebuilds it."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers.grn import GlobalResponseNorm
from torch import nn

SIZE = 16  # input side


@dataclass
class _Val:
    """A tensor of the program: channels, side, and whether it is channels-first 4-D."""

    channels: int
    side: int


class _Mixed(nn.Module):
    """timm's MixedConv2d: split by sizes held in ``self.splits``, a conv per part, concat."""

    def __init__(self, splits: list[int], outs: list[int], depthwise: bool) -> None:
        super().__init__()
        self.splits = splits
        pairs = enumerate(zip(splits, outs, strict=True))
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c if depthwise else o, 1 + 2 * (i % 2), 1, i % 2,
                      groups=c if depthwise else 1) for i, (c, o) in pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(parts[i]) for i, conv in enumerate(self.convs)], 1)


class _Res2(nn.Module):
    """Res2Net: equal parts of ``self.width`` channels; the first is convolved and added to the
    second, the rest pass through."""

    def __init__(self, width: int, scale: int) -> None:
        super().__init__()
        self.width, self.scale = width, scale
        self.conv = nn.Conv2d(width, width, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.width, 1)
        first = self.conv(parts[0])
        rest = [parts[i] for i in range(2, self.scale)]  # indexed, as timm does: fx traces it
        return torch.cat([first, first + parts[1], *rest], 1)


class _Attn(nn.Module):
    """Multi-head attention over the pixels of a 4-D tensor, timm-style with random variants:
    fused SDPA or matmuls, heads merged by ``self.attn_dim``, ``flatten`` or -1, optionally a
    residual, a per-head bias table (heads must stay whole) or a head count written as a
    number in the code (this module then holds no ``num_heads``: heads must stay whole)."""

    def __init__(self, channels: int, heads: int, head_dim: int, tokens: int, variant: dict
                 ) -> None:
        super().__init__()
        self.variant = variant
        if variant["literal"]:  # in a tuple: no int attribute holds it, fx bakes it in
            self.written = (heads,)
        else:
            self.num_heads = heads
        self.dims = (head_dim,)  # not an int attribute: the head count's holder is unique
        self.attn_dim = heads * head_dim
        self.qkv = nn.Linear(channels, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, channels)
        if variant["bias"]:
            self.bias = nn.Parameter(torch.randn(heads, tokens, tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        n = t.shape[1]
        count = self.written[0] if self.variant["literal"] else self.num_heads
        head_dim = self.dims[0]
        qkv = self.qkv(t).reshape(b, n, 3, count, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.variant["fused"] and not self.variant["bias"]:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            a = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
            if self.variant["bias"]:
                a = a + self.bias
            y = a.softmax(dim=-1) @ v
        y = y.transpose(1, 2)
        merge = self.variant["merge"]
        y = y.reshape(b, n, self.attn_dim) if merge == "attr" else (
            y.flatten(2) if merge == "flatten" else y.reshape(b, n, -1))
        y = self.proj(y)
        if self.variant["residual"]:
            y = y + t
        return y.transpose(1, 2).reshape(b, c, h, w)


class RandomNet(nn.Module):
    """A random DAG of channel ops, fixed by ``seed``; ``forward`` runs its program."""

    def __init__(self, seed: int, ops: int | None = None) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.layers = nn.ModuleList()
        self.program: list[tuple] = []
        self.vals = [_Val(3, SIZE)]
        for _ in range(ops or self.rng.randint(3, 12)):
            self._add_op()
        self.heads = self._add_heads()
        self.log = [p[0] for p in self.program]
        del self.rng

    # ------------------------------------------------------------------ building
    def _layer(self, m: nn.Module) -> int:
        self.layers.append(m)
        return len(self.layers) - 1

    def _emit(self, op: str, ins: tuple[int, ...], val: _Val, *args: object) -> int:
        self.program.append((op, ins, *args))
        self.vals.append(val)
        return len(self.vals) - 1

    def _pick(self, want: list[int] | None = None) -> int:
        pool = want if want is not None else list(range(len(self.vals)))
        recent = pool[-4:]  # mostly the latest values: deep chains, some skips
        return self.rng.choice(recent if self.rng.random() < 0.8 else pool)

    def _width(self) -> int:
        return self.rng.randint(2, 24)

    def _conv(self, i: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
              norm: bool = True) -> int:
        v = self.vals[i]
        mods: list[nn.Module] = [nn.Conv2d(v.channels, cout, k, stride, k // 2, groups=groups,
                                           bias=self.rng.random() < 0.5)]
        if norm and self.rng.random() < 0.7:
            mods.append(nn.BatchNorm2d(cout))
        if self.rng.random() < 0.8:
            mods.append(nn.ReLU())
        side = (v.side + 2 * (k // 2) - k) // stride + 1
        return self._emit("mod", (i,), _Val(cout, side), self._layer(nn.Sequential(*mods)))

    def _add_op(self) -> None:
        r = self.rng
        i = self._pick()
        v = self.vals[i]
        kind = r.choice(["conv", "conv", "conv", "grouped", "dw", "res", "add", "cat", "se",
                         "split", "chunk", "mlp", "ln", "shared", "mul", "unknown", "pool",
                         "gn", "ghost", "mixed", "res2", "attn", "grn"])
        if kind == "conv" or v.channels < 2 and kind in ("grouped", "dw", "split", "chunk",
                                                         "mixed", "res2"):
            stride = 2 if v.side >= 4 and r.random() < 0.25 else 1
            self._conv(i, self._width(), r.choice([1, 3]), stride)
        elif kind == "grouped":
            g = r.choice([d for d in range(2, v.channels + 1) if v.channels % d == 0])
            self._conv(i, g * r.randint(1, 4), r.choice([1, 3]), 1, groups=g)
        elif kind == "dw":
            self._conv(i, v.channels, 3, 1, groups=v.channels)
        elif kind == "res":  # a residual branch back to the same width
            mid = self._conv(i, self._width())
            j = self._conv(mid, v.channels, norm=True)
            self._emit("add", (i, j), _Val(v.channels, v.side))
        elif kind == "add":
            same = [j for j, w in enumerate(self.vals) if j != i and w == v]
            if same:
                self._emit("add", (i, r.choice(same)), _Val(v.channels, v.side))
            else:
                j = self._conv(i, v.channels, 1)
                self._emit("add", (i, j), _Val(v.channels, v.side))
        elif kind == "cat":
            same = [j for j, w in enumerate(self.vals) if w.side == v.side and j > 0]
            j = r.choice(same) if same else i
            self._emit("cat", (i, j), _Val(v.channels + self.vals[j].channels, v.side))
        elif kind == "se":
            mid = max(1, v.channels // 4)
            fc1, fc2 = nn.Conv2d(v.channels, mid, 1), nn.Conv2d(mid, v.channels, 1)
            self._emit("se", (i,), _Val(v.channels, v.side), self._layer(fc1), self._layer(fc2))
        elif kind == "split":
            a = r.randint(1, v.channels - 1)
            self._emit("split", (i,), _Val(a, v.side), a, 0)
            if r.random() < 0.5:
                self._emit("split", (i,), _Val(v.channels - a, v.side), a, 1)
        elif kind == "chunk":
            if v.channels % 2 == 0:
                self._emit("chunk", (i,), _Val(v.channels // 2, v.side), r.randint(0, 1))
        elif kind == "mlp":  # channels-last MLP: permute, Linear over the last axis, back
            out = self._width()
            self._emit("mlp", (i,), _Val(out, v.side), self._layer(nn.Linear(v.channels, out)))
        elif kind == "ln":
            self._emit("ln", (i,), _Val(v.channels, v.side),
                       self._layer(nn.LayerNorm(v.channels)))
        elif kind == "shared":  # one conv module called on two tensors of the same width
            others = [j for j, w in enumerate(self.vals) if w.channels == v.channels and j != i]
            j = r.choice(others) if others else i
            conv = self._layer(nn.Conv2d(v.channels, self._width(), 3, 1, 1))
            out = self.layers[conv].out_channels
            self._emit("mod", (i,), _Val(out, v.side), conv)
            self._emit("mod", (j,), _Val(out, self.vals[j].side), conv)
        elif kind == "mul":
            same = [j for j, w in enumerate(self.vals) if w == v]
            self._emit("mul", (i, r.choice(same)), _Val(v.channels, v.side))
        elif kind == "unknown":
            self._emit("unknown", (i,), _Val(v.channels, v.side), r.choice(["roll", "flip",
                                                                           "cumsum"]))
        elif kind == "pool":
            if v.side >= 2:
                self._emit("pool", (i,), _Val(v.channels, v.side // 2))
        elif kind == "ghost":  # GhostNet: cat([x1, depthwise(x1)]), one space twice
            x1 = self._conv(i, self._width(), 1)
            w = self.vals[x1].channels
            cheap = self._conv(x1, w, 3, 1, groups=w)
            self._emit("cat", (x1, cheap), _Val(2 * w, self.vals[x1].side))
        elif kind == "mixed":
            n = r.randint(2, min(3, v.channels))
            cuts = sorted(r.sample(range(1, v.channels), n - 1))
            splits = [b - a for a, b in zip([0, *cuts], [*cuts, v.channels], strict=True)]
            depthwise = r.random() < 0.6
            outs = splits if depthwise else [r.randint(1, 8) for _ in splits]
            self._emit("mod", (i,), _Val(sum(outs), v.side),
                       self._layer(_Mixed(splits, outs, depthwise)))
        elif kind == "res2":
            widths = [d for d in range(1, v.channels // 2 + 1) if v.channels % d == 0]
            self._emit("mod", (i,), _Val(v.channels, v.side),
                       self._layer(_Res2(width := r.choice(widths), v.channels // width)))
        elif kind == "attn":
            variant = {"fused": r.random() < 0.5, "merge": r.choice(["attr", "flatten", "-1"]),
                       "residual": r.random() < 0.5, "bias": r.random() < 0.15,
                       "literal": r.random() < 0.15}
            self._emit("mod", (i,), _Val(v.channels, v.side), self._layer(
                _Attn(v.channels, r.randint(1, 4), r.randint(1, 4), v.side * v.side, variant)))
        elif kind == "grn":  # ConvNeXt V2's Global Response Norm, NCHW or channels-last
            if r.random() < 0.5:
                self._emit("mod", (i,), _Val(v.channels, v.side),
                           self._layer(GlobalResponseNorm(v.channels, channels_last=False)))
            else:
                self._emit("ln", (i,), _Val(v.channels, v.side),
                           self._layer(GlobalResponseNorm(v.channels, channels_last=True)))
        elif kind == "gn":
            g = r.choice([d for d in range(1, v.channels + 1) if v.channels % d == 0])
            self._emit("mod", (i,), _Val(v.channels, v.side),
                       self._layer(nn.GroupNorm(g, v.channels)))

    def _add_heads(self) -> list[tuple[int, int, str]]:
        heads = []
        for _ in range(1 if self.rng.random() < 0.8 else 2):
            i = self._pick()
            v = self.vals[i]
            how = "pool" if v.side > 4 or self.rng.random() < 0.5 else "flatten"
            features = v.channels if how == "pool" else v.channels * v.side * v.side
            heads.append((i, self._layer(nn.Linear(features, 5)), how))
        return heads

    # ------------------------------------------------------------------ running
    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        vals = [x]
        for op, ins, *args in self.program:
            a = vals[ins[0]]
            if op == "mod":
                y = self.layers[args[0]](a)
            elif op == "add":
                y = a + vals[ins[1]]
            elif op == "mul":
                y = a * vals[ins[1]]
            elif op == "cat":
                y = torch.cat([a, vals[ins[1]]], dim=1)
            elif op == "se":
                s = F.relu(self.layers[args[0]](a.mean((2, 3), keepdim=True)))
                y = a * torch.sigmoid(self.layers[args[1]](s))
            elif op == "split":
                y = torch.split(a, [args[0], a.shape[1] - args[0]], dim=1)[args[1]]
            elif op == "chunk":
                y = a.chunk(2, dim=1)[args[0]]
            elif op in ("mlp", "ln"):  # a Linear / LayerNorm / GRN over channels-last tensors
                y = self.layers[args[0]](a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            elif op == "unknown":
                y = {"roll": lambda t: torch.roll(t, 1, dims=1), "flip": lambda t: t.flip(1),
                     "cumsum": lambda t: torch.cumsum(t, dim=1)}[args[0]](a)
            elif op == "pool":
                y = F.max_pool2d(a, 2)
            else:
                raise ValueError(op)
            vals.append(y)
        outs = []
        for i, layer, how in self.heads:
            v = vals[i]
            flat = v.mean((2, 3)) if how == "pool" else torch.flatten(v, 1)
            outs.append(self.layers[layer](flat))
        return outs[0] if len(outs) == 1 else tuple(outs)
