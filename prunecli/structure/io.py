"""Save and load slimmed models without pickled code.

A slim-model file holds the model's registry config, its input shape, the kept channels per
group (by group key) and the state_dict. Loading rebuilds the dense model from the registry,
traces it, slims it with the same keep-sets and loads the weights, all with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunecli.engine.checkpoint import load_checkpoint, save_atomic
from prunecli.errors import CheckpointError
from prunecli.structure.slim import slim
from prunecli.structure.structure import ChannelStructure, KeepSpec, trace_structure

FORMAT = "prunecli-slim"
VERSION = 1


@dataclass
class SlimModel:
    """What :func:`load_slim` returns: the model and how it was made."""

    model: nn.Module
    structure: ChannelStructure  # of the DENSE model the keep-sets refer to
    keep: dict[int, torch.Tensor]
    model_config: dict[str, Any]
    num_classes: int
    in_chans: int
    extra: dict[str, Any]


def _plain_config(model_config: Any) -> dict[str, Any]:
    if is_dataclass(model_config):
        cfg = asdict(model_config)
    elif isinstance(model_config, Mapping):
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(model_config, DictConfig):
                model_config = OmegaConf.to_container(model_config, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
        cfg = dict(model_config)
    else:
        raise TypeError("model_config must be a ModelConfig or a mapping")
    cfg["pretrained"] = False  # the weights are in the file
    cfg["weights"] = None
    return cfg


def save_slim(path: str | os.PathLike[str], model: nn.Module, structure: ChannelStructure,
              keep: KeepSpec, model_config: Any, num_classes: int, in_chans: int,
              extra: dict[str, Any] | None = None) -> Path:
    """Write a slimmed ``model`` (made by ``slim(dense, structure, keep)``) to ``path``; for a
    detector, the whole detector whose core was slimmed (``structure`` traced on the core)."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": _plain_config(model_config),
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
        "input_shape": list(structure.input_shape),
        "ignore": list(structure.ignore),
        "keep": structure.ids_to_keys(keep),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    return save_atomic(state, path)


def is_slim_file(path: str | os.PathLike[str]) -> bool:
    """True for files written by :func:`save_slim` (a training checkpoint gives False)."""
    from prunecli.engine.checkpoint import resolve_checkpoint

    p = resolve_checkpoint(path)
    if p.suffix and p.suffix not in (".pt", ".pth"):
        return False
    return load_checkpoint(p).get("format") == FORMAT


def load_slim(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
              ) -> SlimModel:
    """Rebuild a slimmed model from the registry and load its weights (no code is unpickled)."""
    from prunecli.models import build_model

    state = load_checkpoint(path, map_location=map_location)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a slim-model file (written by save_slim or "
                              "`prunecli slim`)")
    if int(state.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer prunecli (format version "
                              f"{state['version']}); upgrade prunecli")
    dense = build_model(state["model_config"], num_classes=state["num_classes"],
                        in_chans=state["in_chans"])
    from prunecli.models.detection import core_of

    example = torch.zeros(state["input_shape"])
    # a detector is slimmed in its core (backbone, neck, heads); the rest keeps working on it
    structure = trace_structure(core_of(dense), example, ignore=state.get("ignore", ()))
    try:
        keep = structure.normalise_keep(state["keep"])
    except Exception as exc:
        raise CheckpointError(f"{path}: its keep-sets do not match the rebuilt model ({exc}); "
                              "was it written by another prunecli or model version?") from exc
    slim(core_of(dense), structure, keep, inplace=True)
    model = dense
    expected, saved = set(model.state_dict()), set(state["state_dict"])
    if expected != saved:
        missing, extra = sorted(expected - saved), sorted(saved - expected)
        what = "; ".join(f"{len(names)} {kind} key(s): {', '.join(names[:3])}"
                         f"{', ...' if len(names) > 3 else ''}"
                         for kind, names in (("missing", missing), ("unexpected", extra))
                         if names)
        raise CheckpointError(f"{path}: its weights do not fit the rebuilt slim model ({what}); "
                              "the file is incomplete or from another model version")
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: weights do not fit the rebuilt slim model "
                              f"({detail})") from None
    model.eval()
    return SlimModel(model, structure, keep, state["model_config"], state["num_classes"],
                     state["in_chans"], state.get("extra", {}))
