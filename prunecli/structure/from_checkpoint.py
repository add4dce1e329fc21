"""Rebuild the model of a `prunecli train` checkpoint, with its channel masks applied."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunecli.engine.checkpoint import load_checkpoint
from prunecli.errors import CheckpointError
from prunecli.structure.masked_state import keep_from_masks, split_masked_state_dict
from prunecli.structure.masks import ChannelMasker
from prunecli.structure.structure import ChannelStructure, trace_structure
from prunecli.structure.unslim import dense_state


@dataclass
class MaskedModel:
    model: nn.Module  # dense shapes, masks attached when the checkpoint had any
    structure: ChannelStructure
    keep: dict[int, torch.Tensor]  # empty when nothing is masked
    model_config: dict[str, Any]
    data_config: dict[str, Any]
    num_classes: int
    in_chans: int
    example: torch.Tensor  # a batch-1 input of the training image size
    epoch: int
    class_names: list[str] | None = None  # the training data's, in label order
    planned_epochs: int | None = None  # the run's trainer.epochs (more than epoch: unfinished)


def load_masked_model(path: str | os.PathLike[str]) -> MaskedModel:
    """The model as it was trained: same architecture, weights and masks."""
    from prunecli.models import architecture, build_model

    ckpt = load_checkpoint(path)
    if "model" not in ckpt or "config" not in ckpt or "data_info" not in ckpt:
        raise CheckpointError(f"{path} is not a `prunecli train` checkpoint (needs model, config "
                              "and data_info); pass a run directory or its last.pt")
    cfg, info = ckpt["config"], ckpt["data_info"]
    # the checkpoint holds every weight: the run's starting weights (model.weights, a relative
    # path from the training directory, or a download for model.pretrained) are not read again
    model = build_model(architecture(cfg["model"]), num_classes=info["num_classes"],
                        in_chans=info["channels"])
    example = torch.randn(1, info["channels"], info["image_size"], info["image_size"],
                          generator=torch.Generator().manual_seed(0))
    from prunecli.models.detection import core_of, names_in_core

    net = core_of(model)  # what was pruned: a detector's core (its modules are the detector's)
    if net is not model:
        example = model.normalise(example)
    structure = trace_structure(net, example)
    if ckpt.get("slimmed"):  # slimmed during training: back to dense shapes, then masked
        keep = structure.normalise_keep(ckpt["slimmed"]["keep"])
        state = dense_state(model, structure, keep, ckpt["model"])
        model.load_state_dict(state)
        ChannelMasker(net, structure).set_keep(keep)
        return MaskedModel(model.eval(), structure, keep, cfg["model"], cfg["data"],
                           info["num_classes"], info["channels"], example,
                           int(ckpt.get("epoch", 0)), info.get("class_names"),
                           _planned_epochs(cfg))
    plain, masks = split_masked_state_dict(ckpt["model"])
    try:
        model.load_state_dict(plain)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {cfg['model']['name']} "
                              f"({str(exc).splitlines()[0]})") from exc
    in_core = names_in_core(model)
    keep = keep_from_masks(structure, {in_core.get(k, k): v for k, v in masks.items()}
                           ) if masks else {}
    if keep:
        ChannelMasker(net, structure).set_keep(keep)
    return MaskedModel(model.eval(), structure, keep, cfg["model"], cfg["data"],
                       info["num_classes"], info["channels"], example, int(ckpt.get("epoch", 0)),
                       info.get("class_names"), _planned_epochs(cfg))


def _planned_epochs(cfg: dict[str, Any]) -> int | None:
    epochs = (cfg.get("trainer") or {}).get("epochs")
    return int(epochs) if isinstance(epochs, int) else None
