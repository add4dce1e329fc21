"""Small networks, each built to exercise one channel-coupling case of the tracer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    """Identity and projection shortcuts: one residual stream group per stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a1, self.a2 = cbr(8, 6), nn.Sequential(nn.Conv2d(6, 8, 3, 1, 1), nn.BatchNorm2d(8))
        self.b1, self.b2 = cbr(8, 12, stride=2), nn.Conv2d(12, 16, 3, 1, 1)
        self.proj = nn.Conv2d(8, 16, 1, 2)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.a2(self.a1(x)))
        x = F.relu(self.proj(x) + self.b2(self.b1(x)))
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    """Two branches concatenated (offsets), a BN over the concatenation, a consumer of it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 10, 1)
        self.bn = nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 7, 3, padding=1)
        self.d = nn.Conv2d(23, 4, 1)  # reads cat(c, a, b) in another order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        y = torch.relu(self.bn(torch.cat([a, b], dim=1)))
        z = self.c(y)
        return self.d(torch.cat([z, a, b], 1)).mean((2, 3))


class Split(nn.Module):
    """``chunk(2)`` of a conv's output: the halves stay equal only if pruned alike, so they are
    one group, written twice by ``a`` (two output parts); ``c`` reads ``b``'s and ``a``'s."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 1)
        self.c = nn.Conv2d(10, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.a(x).chunk(2, dim=1)
        return self.c(torch.cat([self.b(left), right], 1)).mean((2, 3))


class Depthwise(nn.Module):
    """Inverted residual: expand, depthwise (follows its group), project."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = cbr(3, 12, 1)
        self.dw = cbr(12, 12, 3, groups=12)
        self.project = nn.Conv2d(12, 6, 1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.project(self.dw(self.expand(x)))).mean((2, 3))


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(pool(x))))): fc2's output joins x's group, fc1 reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = cbr(3, 12)
        self.fc1 = nn.Conv2d(12, 4, 1)
        self.fc2 = nn.Conv2d(4, 12, 1)
        self.out = nn.Conv2d(12, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.out(x * s).mean((2, 3))


class FlattenLinear(nn.Module):
    """conv -> flatten (4x4 positions per channel) -> linear -> BN1d -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = cbr(3, 6)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(6 * 16, 20)
        self.bn = nn.BatchNorm1d(20)
        self.fc2 = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.conv(x)), 1)
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class SharedConsumer(nn.Module):
    """One conv applied to two tensors: their spaces must be pruned alike."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(self.a(x)) + self.shared(self.b(x))).mean((2, 3))


class PyramidSharedHead(nn.Module):
    """An FPN-style detector in miniature: one head applied to two pyramid levels of different
    sizes (RetinaNet, FCOS and the RPN share their heads this way)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 16, 3, stride=4, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        big = self.stem(x)
        small = self.down(big)
        return self.out(self.head(big)), self.out(self.head(small))


class FeatureOutput(nn.Module):
    """Returns an intermediate feature map: that group reaches the output and stays whole."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.b = cbr(8, 8)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.a(x)
        return self.c(self.b(feat)).mean((2, 3)), feat


class UnknownOp(nn.Module):
    """A softmax over the channels mixes them: the tracer must refuse to prune that group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 1)
        self.c = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.softmax(self.a(x), dim=1)
        return self.c(self.b(y)).mean((2, 3))


class LayerScaleGroupNorm(nn.Module):
    """A per-channel parameter used as x * gamma, a GroupNorm with one channel per group
    (per-channel: prunable), one of 2 groups of 3 (its statistics stay exact when whole GN
    groups go: prunable in units of 3) and one over all channels (mixes them: not prunable)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.gn_per_channel = nn.GroupNorm(8, 8)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.b = nn.Conv2d(8, 6, 1)
        self.gn_groups = nn.GroupNorm(2, 6)
        self.c = nn.Conv2d(6, 4, 1)
        self.gn_mixing = nn.GroupNorm(1, 4)
        self.d = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gn_per_channel(self.a(x)) * self.gamma.reshape(1, -1, 1, 1)
        y = self.c(F.relu(self.gn_groups(self.b(y))))
        return self.d(self.gn_mixing(y)).mean((2, 3))


class ChannelShuffle(nn.Module):
    """ShuffleNet's shuffle regroups channels through a reshape: not prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.b(y).mean((2, 3))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.a(x)
        return x


class ChannelsLastMLP(nn.Module):
    """ConvNeXt's block: depthwise conv, then permute to channels-last, LayerNorm, an MLP of
    Linears over the last axis with a per-channel scale on the hidden width, a layer scale of
    shape (C,), F.pad on spatial axes, permute back and a residual add. The hidden width is
    prunable; the stream normalised by the LayerNorm is not."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 12)
        self.hidden_scale = nn.Parameter(torch.rand(12) + 0.5)
        self.fc2 = nn.Linear(12, 8)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = F.pad(y, (0, 0, 1, 1, 0, 0))[:, :, 1:-1]  # pads W only: channels untouched
        y = F.gelu(self.fc1(y)) * self.hidden_scale
        y = self.fc2(y) * self.gamma
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x).mean((2, 3))


class TokenMLP(nn.Module):
    """A ViT-style block: patch conv -> flatten(2).transpose(1, 2) tokens, a position embedding,
    attention by matmul (not understood: its tensors have a guessed channel axis, which the
    Linear reading them re-lays), a token MLP, and a LeViT-style Linear -> BatchNorm1d over
    flatten(0, 1) -> reshape_as. Both MLP widths are prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.pos = nn.Parameter(torch.randn(1, 16, 8) * 0.1)
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 10)
        self.fc2 = nn.Linear(10, 8)
        self.lin = nn.Linear(8, 6)
        self.bn = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        x = x + self.proj(attn @ v)
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        y = self.lin(x)
        y = F.relu(self.bn(y.flatten(0, 1)).reshape_as(y))
        return self.out(y.mean(1))


class LiteralReshape(nn.Module):
    """A reshape that writes the channel count as a number (``view(n, 16, -1)``): slimming would
    break it, so the channels stay whole; the same reshape with -1 keeps them prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(3, 12, 3, padding=1)
        self.fa = nn.Linear(64, 4)
        self.fb = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        a = self.a(x).view(n, 16, -1)  # literal 16: whole
        b = self.b(x).reshape(n, -1, 64).transpose(1, 2)  # (n, 64, C): channels last, prunable
        return self.fa(a).mean(1) + self.fb(b).mean(1)


class PartlyTraceable(nn.Module):
    """Data-dependent control flow at the top: torch.fx cannot trace the model, but its blocks
    trace alone, and the widths inside them are prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(cbr(3, 8), cbr(8, 6), nn.Conv2d(6, 8, 1))
        self.gate = nn.Sequential(cbr(8, 10), nn.Conv2d(10, 8, 1))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if y.mean() > -100:  # data-dependent: fx stops here
            y = y + self.gate(y)
        return self.head(y.mean((2, 3)))


class GroupedConvs(nn.Module):
    """ResNeXt/RegNet bottleneck: a grouped 3x3 conv mapping 4 -> 4 channels per group, a
    second grouped conv (2 per group) on the same width, and one whose groups widen (4 -> 8
    per group: left whole). The inner width is pruned in units of lcm(4, 2) = 4 channels (a
    single kept unit makes the 4-per-group conv a plain conv: tests keep at least 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.conv1 = cbr(8, 24, k=1)
        self.conv2 = cbr(24, 24, groups=6)
        self.conv2b = nn.Conv2d(24, 24, 3, padding=1, groups=12)
        self.conv3 = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.widen = nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv2b(self.conv2(self.conv1(x)))
        x = F.relu(x + self.conv3(y))
        return self.head(self.widen(x).mean((2, 3)))


class Ghost(nn.Module):
    """GhostNet: a ghost module's output ``cat([x1, cheap(x1)])`` (``cheap`` depthwise: both
    halves are x1's channels) is gated by squeeze-excite and added to a shortcut conv's output.
    The gate's and the shortcut's convs are cut in two parts, both of the ghost group; the
    stem's output, added to a second ghost block's output, too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.ghost1 = nn.ModuleList([cbr(16, 8, k=1), cbr(8, 8, groups=8)])
        self.se = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1))
        self.ghost2 = nn.ModuleList([cbr(16, 12, k=1), cbr(12, 12, groups=12)])
        self.shortcut = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.ghost3 = nn.ModuleList([cbr(24, 8, k=1), cbr(8, 8, groups=8)])
        self.head = nn.Linear(16, 5)

    @staticmethod
    def _ghost(parts: nn.ModuleList, x: torch.Tensor, width: int) -> torch.Tensor:
        x1 = parts[0](x)
        return torch.cat([x1, parts[1](x1)], 1)[:, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self._ghost(self.ghost1, x, 16)
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))
        z = self._ghost(self.ghost2, y, 24) + self.shortcut(y)
        out = self._ghost(self.ghost3, z, 16) + x
        return self.head(out.mean((2, 3)))


class MixedDepthwise(nn.Module):
    """timm's MixedConv2d: a depthwise conv per part of the channels, each with its own kernel;
    the part sizes are an attribute (``splits``) that slimming rewrites."""

    def __init__(self, channels: int, splits: list[int]) -> None:
        super().__init__()
        assert sum(splits) == channels
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3 + 2 * i, padding=1 + i, groups=c)
                                   for i, c in enumerate(splits))
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, 1)
        return torch.cat([conv(parts[i]) for i, conv in enumerate(self.convs)], 1)


class MixedSplits(nn.Module):
    """MixNet: a pointwise conv whose output a MixedDepthwise splits (8 + 12 channels: two
    groups, one conv with two output parts), then squeeze-excite on the mixed width; and a
    split whose sizes are written in the code (left whole, with the reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.pw = cbr(3, 20, k=1)
        self.mixed = MixedDepthwise(20, [8, 12])
        self.bn = nn.BatchNorm2d(20)
        self.se = nn.Sequential(nn.Conv2d(20, 4, 1), nn.ReLU(), nn.Conv2d(4, 20, 1))
        self.proj = nn.Conv2d(20, 6, 1)
        self.literal = nn.Conv2d(6, 6, 1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.mixed(self.pw(x)))
        y = self.proj(y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True))))
        a, b = torch.split(self.literal(y), [2, 4], 1)
        return self.head(torch.cat([b, a], 1).mean((2, 3)))


class WidthSplit(nn.Module):
    """Res2Net: ``torch.split(x, self.width, 1)`` into equal parts; a part's conv output is
    added to the next part (so both are one group), the last part passes through. The parts
    stay equal only if pruned alike: one group, and slimming rewrites ``width``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = cbr(3, 12, k=1)
        self.width = 4
        self.convs = nn.ModuleList([cbr(4, 4), cbr(4, 4)])
        self.conv3 = nn.Conv2d(12, 6, 1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.conv1(x), self.width, 1)
        first = self.convs[0](parts[0])
        second = self.convs[1](first + parts[1])
        return self.head(self.conv3(torch.cat([first, second, parts[2]], 1)).mean((2, 3)))


class HeadAttention(nn.Module):
    """timm-style multi-head attention on (B, N, dim) tokens: a fused ``qkv`` (or ``q`` and
    ``kv``) reshaped into heads by ``self.num_heads``, qk-norm over a head's channels, a mask
    shared by all heads, attention by SDPA or by matmuls, heads merged by ``self.attn_dim``
    (or ``flatten(2)``) before ``proj``."""

    def __init__(self, dim: int, heads: int, head_dim: int, fused: bool, separate_kv: bool,
                 tokens: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = heads, head_dim, heads * head_dim
        self.fused, self.separate_kv = fused, separate_kv
        if separate_kv:
            self.q = nn.Linear(dim, self.attn_dim)
            self.kv = nn.Linear(dim, 2 * self.attn_dim)
        else:
            self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.q_norm = nn.LayerNorm(head_dim)
        self.register_buffer("mask", torch.randn(1, 1, tokens, tokens))
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        if self.separate_kv:
            q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).permute(0, 2, 1, 3)
            k, v = self.kv(x).reshape(b, n, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q = self.q_norm(q)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
            return self.proj(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1) + self.mask
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).flatten(2))


class MultiHead(nn.Module):
    """Two attention blocks (SDPA with a fused qkv, 2 heads of 4; matmuls with q and kv, 3
    heads of 2) and an MLP on patch tokens: the heads are pruned whole, and slimming rewrites
    each block's ``num_heads`` and ``attn_dim``."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.attn1 = HeadAttention(8, 2, 4, fused=True, separate_kv=False, tokens=16)
        self.attn2 = HeadAttention(8, 3, 2, fused=False, separate_kv=True, tokens=16)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.attn1(x)
        x = x + self.attn2(x)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


class HeadsLeftWhole(nn.Module):
    """Attention whose heads cannot follow pruning: a per-head bias table added to the scores
    (``attn_bias``) and a head count written as a number in the code (``literal``). Their heads
    stay whole, with the reasons; the rest of the net is still pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.bias_qkv = nn.Linear(8, 24)
        self.attn_bias = nn.Parameter(torch.randn(2, 16, 16))
        self.bias_proj = nn.Linear(8, 8)
        self.literal_qkv = nn.Linear(8, 24)
        self.literal_proj = nn.Linear(8, 8)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, _ = x.shape
        q, k, v = self.bias_qkv(x).reshape(b, n, 3, -1, 4).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) + self.attn_bias).softmax(dim=-1)
        x = x + self.bias_proj((attn @ v).transpose(1, 2).flatten(2))
        q, k, v = self.literal_qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        x = x + self.literal_proj(out.transpose(1, 2).flatten(2))
        return self.fc2(F.gelu(self.fc1(x)).mean(1))


class ResponseNorm(nn.Module):
    """ConvNeXt V2's Global Response Norm, which divides every channel by a mean over all of
    them: channels-last after a Linear (timm's GlobalResponseNormMlp), and NCHW on a
    concatenation of two conv branches, one with a BatchNorm before it (a removed channel
    there is not zero at the GRN's input unless masked there). Both widths are prunable."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers.grn import GlobalResponseNorm

        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 12)
        self.grn_last = GlobalResponseNorm(12, channels_last=True)
        self.fc2 = nn.Linear(12, 8)
        self.a = cbr(8, 6, 1)
        self.b = nn.Conv2d(8, 4, 1)
        self.grn_first = GlobalResponseNorm(10, channels_last=False)
        self.head = nn.Conv2d(10, 4, 1)
        with torch.no_grad():  # timm starts GRN at zero (the identity): make it count
            for grn in (self.grn_last, self.grn_first):
                grn.weight.uniform_(0.5, 1.5)
                grn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.grn_last(F.gelu(self.fc1(self.norm(x.permute(0, 2, 3, 1)))))
        x = x + self.fc2(y).permute(0, 3, 1, 2)
        y = self.grn_first(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(y).mean((2, 3))


EXACT_NETS = [Residual, Concat, Split, Depthwise, SqueezeExcite, FlattenLinear, SharedConsumer,
              FeatureOutput, UnknownOp, LayerScaleGroupNorm, ChannelShuffle, ChannelsLastMLP,
              TokenMLP, LiteralReshape, PartlyTraceable, GroupedConvs, Ghost, MixedSplits,
              WidthSplit, MultiHead, HeadsLeftWhole, ResponseNorm]
