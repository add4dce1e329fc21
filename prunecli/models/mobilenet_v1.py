"""MobileNet v1 (Howard et al. 2017): a 3x3 stem and 13 depthwise-separable blocks.

Depthwise convs tie their input and output channels one to one, which is exactly the coupling a
channel pruner has to respect, so this is the standard small test case for grouped pruning.
"""

from __future__ import annotations

from torch import Tensor, nn

from prunecli.models.registry import MODELS, kaiming_init

STEM = 32
# (output channels, stride) of the 13 blocks of the ImageNet network.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def scaled(channels: int, width_mult: float) -> int:
    """Channels after the width multiplier; at least 8 so tiny multipliers still build."""
    return max(8, int(channels * width_mult))


def conv_bn_relu(
    in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DepthwiseSeparable(nn.Module):
    """conv3x3 depthwise/BN/ReLU then conv1x1 pointwise/BN/ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.dw = conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch)
        self.pw = conv_bn_relu(in_ch, out_ch, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class MobileNetV1(nn.Module):
    """stem -> 13 blocks -> global average pool -> Linear."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        cifar_stem: bool = False,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        channels = scaled(STEM, width_mult)
        self.stem = conv_bn_relu(in_chans, channels, 3, 1 if cifar_stem else 2)
        blocks = []
        for out, stride in BLOCKS:
            blocks.append(DepthwiseSeparable(channels, scaled(out, width_mult), stride))
            channels = scaled(out, width_mult)
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.blocks(self.stem(x))).flatten(1))


@MODELS.register(
    "mobilenet_v1",
    "MobileNet v1 (Howard et al. 2017), 13 depthwise-separable blocks; kwargs width_mult=1.0, "
    "cifar_stem=False (stride-1 stem for small images)",
)
def mobilenet_v1(
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    width_mult: float = 1.0,
    cifar_stem: bool = False,
) -> nn.Module:
    """MobileNet v1; ``cifar_stem`` keeps resolution in the stem for 32x32 inputs."""
    return MobileNetV1(num_classes, in_chans, width_mult=width_mult, cifar_stem=cifar_stem)
