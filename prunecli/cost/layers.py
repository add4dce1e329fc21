"""Per-layer MACs from a traced channel structure (shapes recorded while tracing), so costs can
be attributed to channel groups without running the model again."""

from __future__ import annotations

from torch import nn

from prunecli.structure import ChannelStructure


def layer_macs(model: nn.Module, structure: ChannelStructure) -> dict[str, int]:
    """MACs per sample of every conv/linear the structure knows (all calls summed)."""
    modules = dict(model.named_modules())
    out: dict[str, int] = {}
    for name, role in structure.roles.items():
        if role.kind not in ("conv", "linear", "depthwise") or name not in structure.shapes:
            continue
        m = modules[name]
        _, out_shape = structure.shapes[name]
        per_output = m.weight[0].numel()  # (in/groups) * kernel area, or in_features
        channels = out_shape[-1] if role.kind == "linear" else out_shape[1]
        out[name] = structure.positions[name] * channels * per_output  # all calls
    return out


def group_macs(model: nn.Module, structure: ChannelStructure) -> dict[int, int]:
    """Per group: MACs of the layers whose cost scales with the group's width (its producers,
    consumers and depthwise followers). A conv counts for both its input and output group, so
    the shares add up to more than the total."""
    macs = layer_macs(model, structure)
    result = {}
    for g in structure.groups:
        names = set(g.producers) | set(g.consumers) | set(g.followers)
        result[g.id] = sum(macs.get(n, 0) for n in names)
    return result
