"""Building models by name from a :class:`ModelConfig`, and loading local weights into them.

Configs and checkpoints name a model (``source`` + ``name`` + plain ``kwargs``) instead of an
import path, so everything a user can get wrong here (a typo, a bad argument, a file for another
network) ends as a one-line :class:`PrunecliError` rather than a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunecli.config.schema import ModelConfig
from prunecli.errors import CheckpointError, ConfigError, PrunecliError
from prunecli.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")
SOURCES = ("prunecli", "torchvision", "timm", "torchvision_det")

# Wrappers whose prefix a saved state_dict may carry: DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 5


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
        load_weights(model, cfg.weights, as_pretrained=bool(cfg.pretrained))
    return model


# --------------------------------------------------------------------------- local weights


def _read(path: str | Path) -> Any:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(
            f"model weights file '{path}' does not exist; check model.weights=PATH "
            "(a file saved with torch.save)."
        )
    if p.is_dir():
        raise CheckpointError(f"model weights '{path}' is a folder; pass the .pt file inside it.")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            from prunecli.engine.checkpoint import refused_global

            raise CheckpointError(
                f"model weights '{path}' hold pickled Python objects, not only tensors "
                f"({refused_global(exc)}; a pickled model?): refused, loading them could run "
                "code; save model.state_dict() with torch.save instead."
            ) from None
        raise CheckpointError(_corrupt_message(path, exc)) from exc
    except Exception as exc:  # any failure to deserialise is a bad file, not a prunecli bug
        raise CheckpointError(_corrupt_message(path, exc)) from exc


def _corrupt_message(path: str | Path, exc: BaseException) -> str:
    return (
        f"could not read model weights '{path}' ({one_line(exc, 120)}); the file is corrupt, "
        "truncated or not saved with torch.save: re-save or re-download it."
    )


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(obj: Any, path: str | Path = "<weights>") -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded file: raw, or under ``model`` / ``state_dict`` (checkpoints),
    with DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes removed."""
    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        keys = ", ".join(map(str, list(obj)[:_MAX_LISTED])) if isinstance(obj, Mapping) else ""
        found = f"a dict with keys {keys}" if keys else type(obj).__name__
        raise CheckpointError(
            f"model weights '{path}' hold no state_dict (found {found}); expected "
            "torch.save(model.state_dict()) or a checkpoint with a 'model' or 'state_dict' entry."
        )
    state = dict(obj)
    if any(".parametrizations.weight." in k for k in state):  # a pruning run's masked weights
        from prunecli.structure.masked_state import split_masked_state_dict

        state, _ = split_masked_state_dict(state)  # dense weights; the masks are dropped
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _under(key: str, module_name: str | None) -> bool:
    return module_name is not None and key.startswith(module_name + ".")


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _adapt_as_pretrained(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Pretrained weights for another class count / channel count: drop the head, adapt conv 1.

    Returns the adapted state and the model keys allowed to stay freshly initialised.
    """
    from prunecli.models.external import adapt_input_conv, first_conv

    own = model.state_dict()
    head = classifier_name(model)
    fresh = {k for k in own if _under(k, head) and k in state and state[k].shape != own[k].shape}
    state = {k: v for k, v in state.items() if k not in fresh}
    found = first_conv(model)
    if found is not None:
        key = f"{found[0]}.weight"
        w = state.get(key)
        want = own[key].shape
        if (
            w is not None
            and w.dim() == 4
            and w.shape[1] != want[1]
            and (w.shape[0], w.shape[2:]) == (want[0], want[2:])
        ):
            state[key] = adapt_input_conv(want[1], w)
    return state, fresh


def check_compatible(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path = "<weights>",
    allowed_missing: Iterable[str] = (),
) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``state`` fits ``model`` exactly."""
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        head = classifier_name(model)
        k = mismatched[0]
        saved, wanted = tuple(state[k].shape), tuple(own[k].shape)
        if all(_under(m, head) for m in mismatched):
            n_saved = state[f"{head}.weight"].shape[0] if f"{head}.weight" in state else saved[0]
            raise CheckpointError(
                f"model weights '{path}' have a classifier head ('{head}') for {n_saved} classes "
                f"but the model has {wanted[0]} ({k}: {saved} in the file vs {wanted}); use "
                "weights trained on this dataset, or add model.pretrained=true to load them "
                "with a fresh classifier."
            )
        raise CheckpointError(
            f"model weights '{path}' do not fit the model: '{k}' has shape {saved} in the file "
            f"but {wanted} in the model; were they saved from another model or model.kwargs?"
        )
    allowed = set(allowed_missing)
    missing = [k for k in own if k not in state and k not in allowed]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
        raise CheckpointError(
            f"model weights '{path}' do not match the model ({'; '.join(parts)}); "
            "were they saved from another model?"
        )


def load_weights(model: nn.Module, path: str | Path, *, as_pretrained: bool = False) -> None:
    """Load a local weights file into ``model`` in place, checking every key and shape first."""
    raw = _read(path)
    if isinstance(raw, Mapping) and raw.get("slimmed") and "data_info" in raw:
        # a run that fine-tuned its slimmed model: its weights scattered back to dense shapes
        from prunecli.structure.unslim import dense_from_slimmed_checkpoint

        state = dense_from_slimmed_checkpoint(model, raw)
    else:
        state = extract_state_dict(raw, path)
    fresh: set[str] = set()
    if as_pretrained:
        state, fresh = _adapt_as_pretrained(model, state)
    check_compatible(model, state, path, allowed_missing=fresh)
    try:
        model.load_state_dict(state, strict=not fresh)
    except RuntimeError as exc:  # dtype quirks the shape check cannot see
        raise CheckpointError(f"could not load model weights '{path}': {one_line(exc)}") from exc


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
    "check_compatible",
    "describe_models",
    "extract_state_dict",
    "kaiming_init",
    "load_weights",
]
