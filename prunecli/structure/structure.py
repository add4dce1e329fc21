"""The :class:`ChannelStructure` of a traced model and keep-set bookkeeping."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import nn

from prunecli.errors import PrunecliError
from prunecli.structure.analyse import TraceResult, analyse
from prunecli.structure.piecewise import analyse_pieces
from prunecli.structure.trace import UntraceableError
from prunecli.structure.types import ChannelGroup, ModuleRole, ParamSlice, SizeAttr

# group id or key -> kept channel indices
KeepSpec = Mapping[Union[int, str], Union[Sequence[int], torch.Tensor]]


class KeepError(PrunecliError):
    """A keep-set that names an unknown or unprunable group, or an invalid channel."""


@dataclass
class ChannelStructure:
    """Channel groups of one model, as traced on one example input shape."""

    groups: list[ChannelGroup]
    roles: dict[str, ModuleRole]
    params: list[ParamSlice]
    unknown_ops: list[str]
    input_shape: tuple[int, ...]
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
    calls: dict[str, int]
    ignore: tuple[str, ...] = ()
    # output positions per channel and sample of each module, summed over its calls
    positions: dict[str, float] = field(default_factory=dict)
    # (input, output) shapes of each call of each module, in call order
    call_shapes: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = field(
        default_factory=dict)
    # module attributes holding split sizes, rewritten by slimming (MixedConv2d.splits)
    size_attrs: list[SizeAttr] = field(default_factory=list)
    # MACs per kept unit and sample of ops outside modules (attention's per-head matmuls)
    op_macs: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_trace(cls, result: TraceResult, input_shape: tuple[int, ...],
                   ignore: tuple[str, ...]) -> ChannelStructure:
        return cls(result.groups, result.roles, result.params, result.unknown_ops,
                   tuple(input_shape), result.shapes, result.calls, tuple(ignore),
                   result.positions, result.call_shapes, list(result.size_attrs),
                   dict(result.op_macs))

    # ------------------------------------------------------------------ queries
    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def group(self, ref: int | str) -> ChannelGroup:
        """A group by id or by key (its first producer's module name)."""
        if isinstance(ref, int) and not isinstance(ref, bool):
            if 0 <= ref < len(self.groups):
                return self.groups[ref]
        else:
            for g in self.groups:
                if g.key == ref:
                    return g
        raise KeepError(f"no channel group {ref!r}; groups are named by their first producer "
                        "module, with a channel range where it writes several groups "
                        "(see `prunecli inspect`)")

    def consumers_of_prunable(self) -> list[str]:
        names: list[str] = []
        for g in self.prunable_groups:
            names += [c for c in g.consumers if c not in names]
        return names

    @property
    def droppable_groups(self) -> list[ChannelGroup]:
        """Groups that may lose every channel (layer drop): a residual branch's inner widths,
        a DenseNet layer, a squeeze-excite bottleneck."""
        return [g for g in self.groups if g.prunable and g.droppable]

    def constant_rules(self) -> list[tuple[int, frozenset[int]]]:
        """(group, groups its producers read) for every droppable group whose producers are
        all convs/linears: once every group it reads is empty, each producer outputs only its
        bias, so the group carries constants (a bottleneck's middle width after its first
        width is dropped)."""
        rules = []
        for g in self.droppable_groups:
            roles = [self.roles[p] for p in g.producers]
            if roles and all(r.kind in ("conv", "linear") and r.in_segments for r in roles):
                rules.append((g.id, frozenset(s.group for r in roles for s in r.in_segments)))
        return rules

    def constant_groups(self, empty: Collection[int]) -> set[int]:
        """Groups left carrying only constants when the ``empty`` groups have no channels
        (see :meth:`constant_rules`), followed to a fixed point."""
        gone, out = set(empty), set()
        rules = self.constant_rules()
        changed = True
        while changed:
            changed = False
            for gid, reads in rules:
                if gid not in gone and reads <= gone:
                    gone.add(gid)
                    out.add(gid)
                    changed = True
        return out

    def kept_channels(self, counts: Mapping[int, int]) -> int:
        """Channels kept in the prunable groups, for kept counts per group (in units)."""
        return int(sum(int(counts[g.id]) * g.unit for g in self.prunable_groups))

    def prunable_channels(self) -> int:
        return sum(g.size * g.unit for g in self.prunable_groups)

    def total_channels(self) -> int:
        return sum(g.size * g.unit for g in self.groups if g.producers)

    # ------------------------------------------------------------------ keep-sets
    def normalise_keep(self, keep: KeepSpec) -> dict[int, torch.Tensor]:
        """Validate a keep-set: ids or keys -> sorted unique int64 indices; only prunable
        groups may lose channels, and only droppable ones all of them."""
        out: dict[int, torch.Tensor] = {}
        for ref, idx in keep.items():
            g = self.group(ref)
            t = torch.as_tensor(idx, dtype=torch.int64).flatten().unique(sorted=True)
            if t.numel() == g.size:
                continue  # everything kept: nothing to do for this group
            if not g.prunable:
                raise KeepError(f"group {g.key} cannot be pruned: {g.reason}")
            if t.numel() == 0 and not g.droppable:
                raise KeepError(f"group {g.key} would lose all {g.size} channels, and the model's "
                                "output has no other path around it; keep at least one channel")
            bad = t[(t < 0) | (t >= g.size)]
            if bad.numel():
                raise KeepError(f"group {g.key} has {g.size} channels; index {int(bad[0])} is "
                                "out of range")
            out[g.id] = t
        return out

    def keep_counts(self, keep: KeepSpec) -> dict[int, int]:
        counts = {g.id: g.size for g in self.groups}
        for gid, idx in self.normalise_keep(keep).items():
            counts[gid] = int(idx.numel())
        return counts

    def keys_to_ids(self, keep: Mapping[str, Sequence[int]]) -> dict[int, torch.Tensor]:
        return self.normalise_keep(keep)

    def ids_to_keys(self, keep: KeepSpec) -> dict[str, list[int]]:
        return {self.groups[g].key: idx.tolist() for g, idx in self.normalise_keep(keep).items()}


def trace_structure(model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
                    ignore: Sequence[str] = ()) -> ChannelStructure:
    """Trace ``model`` into channel groups.

    ``example_inputs``: a batch (size 1 is enough) of the shape the model will see.
    ``ignore``: module names or glob patterns (``"conv1"``, ``"fc"``, ``"layer4.*"``) whose
    groups must not be pruned, such as the stem or the classifier.
    A model torch.fx cannot trace is traced piecewise (see :mod:`prunecli.structure.piecewise`);
    when no piece has anything to prune, the fx error is raised.
    """
    x = example_inputs[0] if isinstance(example_inputs, tuple) else example_inputs
    try:
        result = analyse(model, example_inputs, tuple(ignore))
    except UntraceableError as exc:  # trace what can be traced below it
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        result = analyse_pieces(model, inputs, tuple(ignore), exc)
    return ChannelStructure.from_trace(result, tuple(x.shape), tuple(ignore))
