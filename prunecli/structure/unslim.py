"""Between slim and dense shapes: which slices made each slimmed tensor, and the way back.

A model slimmed during training (``method.slim_when_final``) is saved with slim shapes. Tools
that expect the dense, masked model of a training checkpoint (``prunecli slim/eval/bench/
export ckpt=RUN``, ``model.weights=RUN/last.pt``) get it back by scattering every slim tensor
into zeros of its dense shape: the removed channels are masked, so the masked model computes
exactly what the slim one does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from prunecli.structure.masks import strip_all_masks
from prunecli.structure.slim import SCALED, SliceLog, slim
from prunecli.structure.structure import ChannelStructure, KeepSpec


def slice_log(model: nn.Module, structure: ChannelStructure, keep: KeepSpec) -> SliceLog:
    """The slices :func:`slim` applies to ``model``'s state for ``keep`` (on a copy)."""
    log: SliceLog = {}
    dense = copy.deepcopy(model)
    strip_all_masks(dense)
    slim(dense, structure, keep, inplace=True, log=log)
    return log


def slice_tensor(t: torch.Tensor, ops: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """``t`` sliced like the dense tensor was (for optimizer state of the same shape; a GRN
    weight's rescaling is not applied to it: the state stays that of the entries it kept)."""
    for dim, index in ops:
        if dim != SCALED:
            t = t.index_select(dim, index.to(t.device))
    return t


def scatter_tensor(dense: torch.Tensor, small: torch.Tensor,
                   ops: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Zeros of ``dense``'s shape holding ``small`` where the slices took it from (and with
    any rescaling undone)."""
    for dim, factor in ops:
        if dim == SCALED:
            small = small / factor.item()
    ops = [(dim, idx) for dim, idx in ops if dim != SCALED]
    out = torch.zeros_like(dense)
    index: list[torch.Tensor | slice] = [slice(None)] * dense.dim()
    sliced = [d for d, _ in ops]
    if len(set(sliced)) != len(sliced):
        raise ValueError("a tensor sliced twice along one axis cannot be scattered back")
    for k, (dim, idx) in enumerate(ops):
        shape = [1] * len(ops)
        shape[k] = -1
        index[dim] = idx.to(dense.device).view(shape)
    if ops:  # advanced indices broadcast together; put them first, then the plain axes
        perm = [d for d, _ in ops] + [d for d in range(dense.dim()) if d not in sliced]
        view = out.permute(perm)
        lead = tuple(index[d] for d, _ in ops)
        view[lead] = small.to(out.dtype).permute(perm)
        return out
    return small.to(out.dtype).clone()


def dense_state(model: nn.Module, structure: ChannelStructure, keep: KeepSpec,
                small_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state for the dense ``model`` from the state of its slimmed version: kept entries in
    place, removed ones zero; tensors a stand-in dropped keep ``model``'s own values."""
    log = slice_log(model, structure, keep)
    own = model.state_dict()
    out = {}
    for name, value in own.items():
        plain = name.replace(".parametrizations.weight.original", ".weight")
        if plain not in small_state:
            out[name] = value  # a layer of a dropped group: masked, never read
        elif plain in log:
            out[name] = scatter_tensor(value, small_state[plain], log[plain])
        else:
            out[name] = small_state[plain]
    return out


def dense_from_slimmed_checkpoint(model: nn.Module, ckpt: Mapping[str, object]
                                  ) -> dict[str, torch.Tensor]:
    """The dense state of a training checkpoint whose model was slimmed during the run, for a
    freshly built ``model`` of the same architecture (``model.weights=RUN/last.pt``)."""
    from prunecli.structure.structure import trace_structure

    info = ckpt["data_info"]
    example = torch.zeros(1, int(info["channels"]), int(info["image_size"]),
                          int(info["image_size"]))
    structure = trace_structure(model, example)
    keep = structure.normalise_keep(ckpt["slimmed"]["keep"])
    return dense_state(model, structure, keep, ckpt["model"])
