"""Adapters for torchvision and timm, so their models take prunecli's (num_classes, in_chans).

timm adapts heads and input convs itself; torchvision builds only 3-channel models and, with
pretrained weights, only the 1000-class head, so both are swapped here after building. Both
libraries are imported lazily: ``import prunecli.models`` stays cheap.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from prunecli.errors import ConfigError, PrunecliError, UnknownNameError
from prunecli.models.registry import close_matches_hint, construct, one_line

# What a failed download raises: urllib (torch.hub), requests/huggingface_hub (OSError
# subclasses, incl. LocalEntryNotFoundError), and RuntimeError for hash mismatches.
DOWNLOAD_ERRORS: tuple[type[BaseException], ...] = (URLError, OSError, RuntimeError)


def _import(package: str) -> Any:
    try:
        return __import__(package)
    except ImportError:
        raise PrunecliError(
            f"model source '{package}' needs the {package} package; pip install {package}"
        ) from None


def torchvision_names() -> list[str]:
    """torchvision's classification builders (detection/segmentation/video heads differ)."""
    tv = _import("torchvision")
    import torchvision.models

    return sorted(tv.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    return list(_import("timm").list_models())


def no_download_message(source: str, name: str, exc: BaseException) -> str:
    return (
        f"pretrained weights for {source} model '{name}' could not be downloaded "
        f"({one_line(exc, 120)}); pass a local file with model.weights=PATH."
    )


# --------------------------------------------------------------------------- module surgery


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first Conv2d in module order: the input stem of every torchvision classifier."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """RGB filters for another channel count, as timm does: sum for 1, else tile and rescale so
    the expected activation stays the same."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    old = weight.shape[1]
    repeat = math.ceil(in_chans / old)
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (old / in_chans)


def replace_input_conv(model: nn.Module, in_chans: int, *, pretrained: bool) -> None:
    """Swap the first conv for one with ``in_chans`` inputs (same geometry)."""
    found = first_conv(model)
    if found is None:
        raise ConfigError(f"{type(model).__name__} has no Conv2d to adapt to {in_chans} channels")
    name, conv = found
    if conv.in_channels == in_chans:
        return
    if conv.groups != 1:
        raise ConfigError(f"cannot adapt grouped input conv '{name}' to {in_chans} channels")
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        if pretrained:
            new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)  # type: ignore[union-attr]
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
    model.set_submodule(name, new)


def replace_heads(model: nn.Module, old_classes: int, num_classes: int) -> list[str]:
    """Swap every ``old_classes``-way output layer (main head and auxiliary ones) for a fresh one.

    Covers ``fc``, ``classifier[-1]``, ``heads.head`` and Inception/GoogLeNet aux heads by
    walking the modules; SqueezeNet's 1x1-conv classifier is the fallback.
    """
    modules = list(model.named_modules())
    heads: list[tuple[str, nn.Module]] = [
        (n, m) for n, m in modules if isinstance(m, nn.Linear) and m.out_features == old_classes
    ]
    if not heads:
        heads = [
            (n, m) for n, m in modules if isinstance(m, nn.Conv2d) and m.out_channels == old_classes
        ]
    if not heads:
        raise ConfigError(
            f"cannot find the {old_classes}-class head of {type(model).__name__} to resize it to "
            f"{num_classes}; use model.pretrained=false"
        )
    for name, old in heads:
        new: nn.Module
        if isinstance(old, nn.Linear):
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            assert isinstance(old, nn.Conv2d)
            new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
        weight: torch.Tensor = old.weight  # type: ignore[assignment]
        model.set_submodule(name, new.to(weight.device, weight.dtype))
    return [n for n, _ in heads]


# --------------------------------------------------------------------------- torchvision


def _prefetch(url: str, name: str) -> None:
    """Download torchvision weights into the torch hub cache, with a one-line error offline.

    Done before building so the download is the only step whose failures mean "no network";
    the builder then loads the cached file.
    """
    filename = os.path.basename(urlparse(url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.exists():
        return
    match = torch.hub.HASH_REGEX.search(filename)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(cached), match.group(1) if match else None, progress=True
        )
    except DOWNLOAD_ERRORS as exc:
        raise PrunecliError(no_download_message("torchvision", name, exc)) from None


def _torchvision_weights(name: str) -> Any:
    tv = _import("torchvision")
    try:
        return tv.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(
            f"torchvision model '{name}' has no pretrained weights; set model.pretrained=false"
        ) from None


def build_torchvision(
    name: str, *, num_classes: int, in_chans: int, pretrained: bool, kwargs: dict[str, Any]
) -> nn.Module:
    """``torchvision.models.get_model`` plus head and input-conv surgery."""
    tv = _import("torchvision")
    names = torchvision_names()
    key = name.lower()
    if key not in names:
        raise UnknownNameError(
            f"unknown torchvision model '{name}'.{close_matches_hint(key, names)} "
            f"torchvision has {len(names)} classification models "
            "(torchvision.models.list_models(module=torchvision.models))."
        )
    what = f"torchvision model '{name}'"
    if not pretrained:
        model = construct(
            what, lambda: tv.models.get_model(key, weights=None, num_classes=num_classes, **kwargs)
        )
        replace_input_conv(model, in_chans, pretrained=False)
        _drop_rgb_transform(model, in_chans)
        return model
    weights = _torchvision_weights(key)
    _prefetch(weights.url, name)
    try:
        model = construct(what, lambda: tv.models.get_model(key, weights=weights, **kwargs))
    except RuntimeError as exc:  # a cached file that torch cannot read
        raise PrunecliError(
            f"pretrained weights for {what} could not be loaded ({one_line(exc, 120)}); delete "
            f"the cached file under {torch.hub.get_dir()}/checkpoints or pass model.weights=PATH."
        ) from exc
    old_classes = len(weights.meta.get("categories") or []) or 1000
    if num_classes != old_classes:
        replace_heads(model, old_classes, num_classes)
    replace_input_conv(model, in_chans, pretrained=True)
    _drop_rgb_transform(model, in_chans)
    return model


def _drop_rgb_transform(model: nn.Module, in_chans: int) -> None:
    """GoogLeNet/Inception-v3 weights turn on ``transform_input``, a per-RGB-channel rescale in
    forward; it cannot apply to other channel counts, so it is switched off there."""
    if in_chans != 3 and getattr(model, "transform_input", False):
        model.transform_input = False


# --------------------------------------------------------------------------- timm


def build_timm(
    name: str, *, num_classes: int, in_chans: int, pretrained: bool, kwargs: dict[str, Any]
) -> nn.Module:
    """``timm.create_model``: timm resizes the head and adapts the input conv itself."""
    timm = _import("timm")
    if not name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) and not timm.is_model(name):
        raise UnknownNameError(
            f"unknown timm model '{name}'.{close_matches_hint(name, timm_names())} "
            "List them with timm.list_models('PATTERN*')."
        )
    what = f"timm model '{name}'"

    def create() -> nn.Module:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
        )

    if not pretrained:
        return construct(what, create)
    try:
        return construct(what, create)
    except DOWNLOAD_ERRORS as exc:
        raise PrunecliError(no_download_message("timm", name, exc)) from None
