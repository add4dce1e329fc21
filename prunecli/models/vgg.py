"""VGG-BN for small images, as in the Network Slimming paper (Liu et al. 2017).

conv3x3-BN-ReLU stacks (no conv bias: BN supplies it), four max pools, no final pool in the
feature stack, then global average pooling and a single Linear. The global pool (instead of the
paper's fixed 2x2 average pool) makes the same network run on 28x28 and on any size >= 32.
"""

from __future__ import annotations

from typing import Union

from torch import Tensor, nn

from prunecli.models.registry import MODELS, kaiming_init

Layer = Union[int, str]

# "M" = 2x2 max pool. Network Slimming's configs: the torchvision ones without the last pool.
CONFIGS: dict[int, list[Layer]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512,
    ],
}  # fmt: skip


def make_features(cfg: list[Layer], in_chans: int) -> nn.Sequential:
    """The conv stack; kept as one flat Sequential so layer names match the VGG convention."""
    layers: list[nn.Module] = []
    channels = in_chans
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        assert isinstance(v, int)
        layers += [
            nn.Conv2d(channels, v, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(v),
            nn.ReLU(inplace=True),
        ]
        channels = v
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """features -> global average pool -> flatten -> Linear."""

    def __init__(self, cfg: list[Layer], num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.features = make_features(cfg, in_chans)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = [v for v in cfg if isinstance(v, int)][-1]
        self.classifier = nn.Linear(last, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def _register(depth: int) -> None:
    """Register ``vgg{depth}_bn`` for one of the four standard depths."""
    cfg = CONFIGS[depth]

    def factory(num_classes: int = 10, in_chans: int = 3) -> nn.Module:
        return CifarVGG(cfg, num_classes=num_classes, in_chans=in_chans)

    factory.__name__ = factory.__qualname__ = f"vgg{depth}_bn"
    factory.__doc__ = f"VGG-{depth} with BN for small images (Network Slimming variant)."
    MODELS.register(
        f"vgg{depth}_bn",
        f"VGG-{depth} with BN for CIFAR-size images (Network Slimming variant, global pool + "
        "one Linear)",
    )(factory)


for _depth in sorted(CONFIGS):
    _register(_depth)
