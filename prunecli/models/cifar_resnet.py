"""CIFAR ResNets of He et al. 2016 (depth 6n+2, widths 16/32/64).

Shortcuts that change shape use a 1x1 conv + BN projection (option B) rather than the paper's
zero-padding (option A): a projection is an ordinary layer, so channel pruning can trace and cut
it like any other conv, while zero-padding would tie channels through a non-layer operation.
"""

from __future__ import annotations

from torch import Tensor, nn

from prunecli.models.registry import MODELS, kaiming_init

WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus an identity or projection shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stem, three stages of ``blocks_per_stage`` basic blocks, global pool, linear head."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = WIDTHS[0]
        stages = []
        for i, planes in enumerate(WIDTHS):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _register(depth: int) -> None:
    """Register ``resnet{depth}``; a loop keeps the five depths from drifting apart."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6

    def factory(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
        return CifarResNet(n, num_classes=num_classes, in_chans=in_chans)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, 3x{n} basic blocks)."
    MODELS.register(
        f"resnet{depth}",
        f"CIFAR ResNet-{depth} (He et al. 2016): 3x{n} basic blocks, widths 16/32/64, "
        "1x1 projection shortcuts",
    )(factory)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
