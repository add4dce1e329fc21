"""The coverage benchmark's models (``MODELS``), how each is built with every channel made to
matter (:func:`excite`) and fed, and the helpers the prunecli and Torch-Pruning runs share."""

from __future__ import annotations

import gc
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

KEEP_RATIO = 0.7  # 30% of the channels of every prunable group are removed
TOLERANCE = 1e-4  # max |masked - slimmed| / max |masked|
MIN_CHANGE = 1e-3  # below this, pruning did not change the output: the check proved nothing


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: where it comes from and what it is fed."""

    name: str
    source: str  # "torchvision", "timm" or "prunecli"
    num_classes: int = 1000
    size: int = 224
    kind: str = "cnn"  # or "transformer" (attention blocks): the target share differs

    @property
    def label(self) -> str:
        return f"{self.source}/{self.name}"


MODELS: list[ModelSpec] = [
    *(ModelSpec(n, "torchvision") for n in (
        "resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121",
        "efficientnet_b0", "regnet_y_400mf", "googlenet", "squeezenet1_1")),
    *(ModelSpec(n, "timm") for n in (
        "resnet26d", "mobilenetv3_large_100", "efficientnet_lite0", "convnext_nano", "dla34",
        "ghostnet_100", "repvgg_a0", "hrnet_w18_small", "rexnet_100", "cspresnet50")),
    *(ModelSpec(n, "prunecli", num_classes=10, size=32)
      for n in ("resnet20", "resnet56", "resnet110", "vgg16_bn")),
    ModelSpec("mobilenet_v1", "prunecli"),
    # added with the channel-axis moves (ConvNeXt, token MLPs) and the coverage-II issue
    *(ModelSpec(n, "timm") for n in (
        "convnext_tiny", "convnextv2_atto", "poolformer_s12", "mixnet_s", "resnext50_32x4d")),
    *(ModelSpec(n, "timm", kind="transformer") for n in (
        "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
        "edgenext_small", "levit_128", "efficientformer_l1", "mobilevit_s")),
    *(ModelSpec(n, "torchvision") for n in (
        "convnext_tiny", "regnet_x_400mf", "resnext50_32x4d", "shufflenet_v2_x1_0")),
    *(ModelSpec(n, "torchvision", kind="transformer") for n in ("vit_b_16", "swin_t")),
    # added with space refinement (outputs made of parts, splits with sizes held by a module)
    *(ModelSpec(n, "timm") for n in ("res2net50_14w_8s", "ghostnetv2_100")),
]
CNN_TARGET, TRANSFORMER_TARGET = 0.5, 0.3  # share of MACs prunable exactly


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def quiet() -> None:
    """Silence the warnings and log lines that random-init models and tracers print."""
    warnings.filterwarnings("ignore")
    logging.getLogger("prunecli").setLevel(logging.ERROR)


def build(spec: ModelSpec) -> nn.Module:
    """The model with random weights (seeded), in eval mode."""
    torch.manual_seed(0)
    if spec.source == "torchvision":
        import torchvision

        model = torchvision.models.get_model(spec.name, weights=None)
    elif spec.source == "timm":
        import timm

        model = timm.create_model(spec.name, pretrained=False)
    else:
        from prunecli.models import build_model

        model = build_model({"name": spec.name, "source": "prunecli"},
                            num_classes=spec.num_classes, in_chans=3)
    excite(model, spec)
    return model.eval()


def is_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        return True
    weight = getattr(module, "weight", None)
    return "Norm" in type(module).__name__ and isinstance(weight, nn.Parameter)


@torch.no_grad()
def excite(model: nn.Module, spec: ModelSpec) -> None:
    """Make every channel matter to the output, so masked == slimmed is a real test.

    A fresh model in eval mode hides most channels: zero-initialised last BN gammas (timm ResNets),
    layer scales of 1e-6 (ConvNeXt) and BN running stats that do not match the activations (the
    signal fades to zero in GoogLeNet) leave the logits equal to the classifier bias whatever is
    pruned. So norm affines and constant-initialised per-channel parameters are drawn at random
    (seeded) and BN statistics are re-estimated on random inputs."""
    gen = torch.Generator().manual_seed(1)

    def draw(p: torch.Tensor, low: float, high: float) -> None:
        p.copy_(torch.rand(p.shape, generator=gen) * (high - low) + low)

    norm_params = set()
    for module in model.modules():
        if is_norm(module):
            for attr, (low, high) in (("weight", (0.5, 1.5)), ("bias", (-0.2, 0.2))):
                p = getattr(module, attr, None)
                if isinstance(p, nn.Parameter):
                    draw(p, low, high)
                    norm_params.add(id(p))
    for name, p in model.named_parameters():
        per_channel = p.numel() > 1 and max(p.shape) == p.numel()  # (C,), (C, 1, 1), (1, 1, C)
        if p.ndim >= 2 and not per_channel and not bool(p.any()):  # zero-init heads (tv ViT)
            p.normal_(0.0, 0.02, generator=gen)
        elif per_channel and id(p) not in norm_params and bool((p == p.flatten()[0]).all()):
            draw(p, -0.1, 0.1) if name.endswith("bias") else draw(p, 0.5, 1.5)
    recalibrate_bn(model, spec)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, spec: ModelSpec, batches: int = 2, batch: int = 4) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average) on random inputs."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    gen = torch.Generator().manual_seed(2)
    model.train()
    for _ in range(batches):
        model(torch.randn(batch, 3, spec.size, spec.size, generator=gen))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def example_input(spec: ModelSpec) -> torch.Tensor:
    return torch.randn(1, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(0))


def output_tensor(out: Any) -> torch.Tensor:
    """The logits of a model output (a tensor, or the first tensor of a tuple/dict)."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    return next(v for v in values if isinstance(v, torch.Tensor))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time; garbage from earlier runs is collected first, outside the
    timing (a collection of earlier traced graphs would otherwise land in a random run)."""
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0
