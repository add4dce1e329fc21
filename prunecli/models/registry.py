"""Building models by name from a :class:`ModelConfig` (local weights: :mod:`.weights`).

Configs and checkpoints name a model (``source`` + ``name`` + plain ``kwargs``) instead of an
import path, so everything a user can get wrong here (a typo, a bad argument, a file for another
network) ends as a one-line :class:`PrunecliError` rather than a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from prunecli.config.schema import ModelConfig
from prunecli.errors import ConfigError, PrunecliError
from prunecli.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")
SOURCES = ("prunecli", "torchvision", "timm", "torchvision_det")



# --------------------------------------------------------------------------- helpers for families


def kaiming_init(model: nn.Module) -> None:
    """He (fan-out, ReLU) init for convs, identity for norms: the init the papers train with."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line, shortened: user errors must stay on one line."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def close_matches_hint(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def classifier_name(model: nn.Module) -> str | None:
    """Qualified name of the classifier head: the last Linear (last Conv2d if there is none)."""
    for kind in (nn.Linear, nn.Conv2d):
        names = [n for n, m in model.named_modules() if isinstance(m, kind)]
        if names:
            return names[-1]
    return None


def construct(what: str, fn: Callable[[], nn.Module]) -> nn.Module:
    """Call a model constructor, turning argument errors into a one-line :class:`ConfigError`."""
    try:
        return fn()
    except (TypeError, ValueError) as exc:
        raise ConfigError(bad_argument_message(what, exc)) from exc


# constructor arguments prunecli passes itself (from the dataset and the config)
_SET_BY_PRUNECLI = {"num_classes", "in_chans", "pretrained", "weights", "weights_backbone",
                    "num_channels"}


def bad_argument_message(what: str, exc: BaseException) -> str:
    text = one_line(exc)
    match = re.search(r"unexpected keyword argument '(\w+)'", text)
    if match:
        arg = match.group(1)
        return f"{what} got an unknown argument '{arg}'; remove model.kwargs.{arg}."
    match = re.search(r"multiple values for (?:keyword )?argument '(\w+)'", text)
    if match:
        arg = match.group(1)
        if arg in _SET_BY_PRUNECLI:
            return f"{what}: '{arg}' is set by prunecli (from the dataset); remove " \
                   f"model.kwargs.{arg}."
        return (f"{what}: '{arg}' is fixed by the model's own definition; remove "
                f"model.kwargs.{arg} (choose a variant of the model instead).")
    return f"{what} rejected its arguments (model.kwargs): {text}"


# --------------------------------------------------------------------------- building


def _as_config(cfg: ModelConfig | Mapping[str, Any]) -> ModelConfig:
    """Accept the dataclass or any mapping (plain dict, OmegaConf DictConfig)."""
    if isinstance(cfg, ModelConfig):
        return cfg
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"model config must be a mapping, got {type(cfg).__name__}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(str(k) for k in cfg if k not in known)
    if unknown:
        raise ConfigError(
            f"unknown model config key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(known))}"
        )
    values = dict(cfg)
    if values.get("kwargs") is not None:
        if not isinstance(values["kwargs"], Mapping):
            raise ConfigError("model.kwargs must be a mapping of constructor arguments")
        values["kwargs"] = dict(values["kwargs"])
    return ModelConfig(**values)


def _build_prunecli(
    name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]
) -> nn.Module:
    factory = MODELS.get(name)
    what = f"model '{name}'"
    params = inspect.signature(factory).parameters
    for key in ("num_classes", "in_chans"):
        if key in kwargs:
            raise ConfigError(
                f"{what}: '{key}' is set by prunecli (from the dataset); remove model.kwargs.{key}."
            )
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    bad = [k for k in kwargs if k not in params]
    if bad and not takes_any:
        accepted = [k for k in params if k not in ("num_classes", "in_chans")]
        raise ConfigError(
            f"{what} got an unknown argument '{bad[0]}' in model.kwargs; "
            f"it accepts: {', '.join(accepted) or 'no extra arguments'}."
        )
    return construct(what, lambda: factory(num_classes=num_classes, in_chans=in_chans, **kwargs))


def architecture(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A model config without its weights (``pretrained``, ``weights``): the network alone, for
    a reader whose weights come from a checkpoint or that only times or traces it."""
    return {**cfg, "pretrained": False, "weights": None}


def build_model(
    cfg: ModelConfig | Mapping[str, Any], *, num_classes: int, in_chans: int = 3
) -> nn.Module:
    """Build the model a config names, for ``num_classes`` outputs and ``in_chans`` inputs.

    ``pretrained`` downloads the source's default weights (torchvision/timm only), adapting the
    classifier and the first conv as needed. ``weights`` loads a local state_dict afterwards; if
    ``pretrained`` is also set, the local file is taken as those pretrained weights instead of a
    download (so a mismatching classifier head is kept fresh and a first conv is adapted).
    Detection models (source ``torchvision_det`` and prunecli's detection families) are built by
    :func:`prunecli.models.detection.build_detector`, where ``num_classes`` counts object classes.
    """
    cfg = _as_config(cfg)
    if cfg.source not in SOURCES:
        raise ConfigError(
            f"unknown model source '{cfg.source}'; choose one of: {', '.join(SOURCES)}."
        )
    from prunecli.models.detection.build import build_detector, is_detector_config

    if is_detector_config(cfg):  # detectors: their own meaning of pretrained (COCO, trunk)
        return build_detector(cfg, num_classes=num_classes, in_chans=in_chans)
    kwargs = dict(cfg.kwargs or {})
    download = bool(cfg.pretrained) and not cfg.weights
    if cfg.source == "prunecli":
        if download:
            raise ConfigError(
                f"prunecli model '{cfg.name}' has no downloadable pretrained weights; "
                "pass a local file with model.weights=PATH or set model.pretrained=false."
            )
        model = _build_prunecli(cfg.name, num_classes, in_chans, kwargs)
    else:
        from prunecli.models import external  # torchvision/timm load only when asked for

        build = external.build_torchvision if cfg.source == "torchvision" else external.build_timm
        model = build(
            cfg.name, num_classes=num_classes, in_chans=in_chans, pretrained=download, kwargs=kwargs
        )
    if cfg.weights:
        from prunecli.models.weights import load_weights

        load_weights(model, cfg.weights, as_pretrained=bool(cfg.pretrained))
    return model


# --------------------------------------------------------------------------- listing


def describe_models() -> list[tuple[str, str, str]]:
    """Rows (source, name, description) for ``prunecli list``."""
    rows = [("prunecli", e.name, e.description) for e in MODELS.entries()]
    from prunecli.models import external

    rows.append(("torchvision", "*", _external_row("torchvision", external.torchvision_names)))
    rows.append(("timm", "*", _external_row("timm", external.timm_names)))
    rows.append(("torchvision_det", "*", _detection_row()))
    return rows


def _detection_row() -> str:
    try:
        from prunecli.models.detection.torchvision_det import torchvision_det_names

        names = torchvision_det_names()
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        return one_line(exc)
    return (
        f"any of {len(names)} torchvision detection models ({', '.join(names)}): "
        "model=torchvision_det model.name=NAME (add model.pretrained=true for COCO weights)"
    )


def _external_row(source: str, names: Callable[[], list[str]]) -> str:
    try:
        n = len(names())
    except PrunecliError as exc:  # the package is not installed
        return str(exc)
    return (
        f"any of {n} {source} classification models: model={source} model.name=NAME "
        f"(add model.pretrained=true for its weights)"
    )


__all__ = [
    "MODELS",
    "SOURCES",
    "ModelFactory",
    "build_model",
    "describe_models",
    "kaiming_init",
]
