"""Read channel masks out of a saved state_dict (a checkpoint of a masked model).

Masks live in the weights' parametrizations (``<module>.parametrizations.weight.original`` and
``...weight.0.mask``). Splitting them off gives the plain dense weights plus each group's kept
channels, whatever structure options the training run used.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from prunecli.structure.structure import ChannelStructure, KeepError

_ORIGINAL = ".parametrizations.weight.original"
_MASK = ".parametrizations.weight.0.mask"


def split_masked_state_dict(state: Mapping[str, torch.Tensor]
                            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """-> (state_dict of the unmasked model, {consumer module: input-channel mask})."""
    plain: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(_ORIGINAL):
            plain[key[: -len(_ORIGINAL)] + ".weight"] = value
        elif key.endswith(_MASK):
            masks[key[: -len(_MASK)]] = value
        else:
            plain[key] = value
    return plain, masks


def keep_from_masks(structure: ChannelStructure, masks: Mapping[str, torch.Tensor]
                    ) -> dict[int, torch.Tensor]:
    """Kept channels per group from the consumers' masks; every masked consumer of a group
    must agree, or the masked model could not equal any slimmed one."""
    keep: dict[int, torch.Tensor] = {}
    for g in structure.prunable_groups:
        seen: list[tuple[str, torch.Tensor]] = []
        for name in g.consumers:
            if name not in masks:
                continue
            for seg in structure.roles[name].in_segments:
                if seg.group == g.id:
                    part = masks[name][seg.offset: seg.offset + seg.length * seg.spatial]
                    seen.append((name, part.view(seg.length, seg.spatial)[:, 0].bool()))
        if not seen:
            continue
        first_name, first = seen[0]
        for name, m in seen[1:]:
            if not torch.equal(m, first):
                raise KeepError(f"consumers {first_name} and {name} of group {g.key} carry "
                                "different masks; the checkpoint's masks are inconsistent")
        if len(seen) != len(g.consumers) and not bool(first.all()):
            missing = [c for c in g.consumers if c not in masks]
            raise KeepError(f"group {g.key} is masked but its consumers {missing} are not")
        if not bool(first.all()):
            keep[g.id] = torch.nonzero(first).flatten()
    return keep


def has_masks(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith(_MASK) for k in state)
