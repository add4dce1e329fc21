"""The channel structure of a model: which channels must be pruned together, and where.

A *group* is one channel space: every producer writing it (convs/linears whose outputs are merged
by residual adds or SE multiplications), every consumer reading it (convs/linears, possibly at
an offset after a concatenation, or with a spatial factor after a flatten) and every follower
that carries it per channel (norms, depthwise convs, per-channel parameters such as layer scale).
A grouped conv whose groups map ``w`` channels to ``w`` channels is a follower too ("depthwise"
kind): its input and output are one group, pruned in whole conv groups (``unit = w``).
Removing channel ``c`` of a group means removing output ``c`` of each producer (of each part of
its output that belongs to the group: a GhostNet shortcut conv writes one group twice), the
matching input columns of each consumer and entry ``c`` of each follower.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    """Channels ``[0, length)`` of ``group`` occupy inputs ``[offset, offset + length*spatial)``
    of a module; each channel spans ``spatial`` consecutive features (flatten -> linear)."""

    group: int
    offset: int
    length: int
    spatial: int = 1


@dataclass(frozen=True)
class ParamSlice:
    """A per-channel tensor (``module.attr``) outside any known layer, e.g. a layer-scale gamma
    applied with ``x * gamma``; sliced like a follower."""

    module: str
    attr: str
    segments: tuple[Segment, ...]


@dataclass
class ChannelGroup:
    """One channel space and everything that touches it."""

    id: int
    size: int
    key: str  # stable name: the first producer's module name (or a description)
    producers: list[str] = field(default_factory=list)  # modules whose output is this group
    consumers: list[str] = field(default_factory=list)  # modules reading it on their input side
    followers: list[str] = field(default_factory=list)  # per-channel modules (norms, depthwise)
    params: list[str] = field(default_factory=list)  # per-channel parameters ("module.attr")
    reasons: list[str] = field(default_factory=list)  # why it cannot be pruned (empty: prunable)
    # all channels may go (layer drop): another path still carries the input to every output
    droppable: bool = False
    # channels per pruning unit: a grouped conv on the group (groups of ``unit`` channels) is
    # sliced in whole conv groups, so ``size`` counts units and every segment's ``spatial``
    # spans a unit; 1 for every group no grouped conv touches
    unit: int = 1

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class SizeAttr:
    """A module attribute holding the channel counts of a split (timm ``MixedConv2d.splits``,
    or one count for equal parts: Res2Net's ``width``), or an attention's head count or merged
    width (``num_heads``, ``attn_dim``): slimming writes the parts' kept counts into it, in
    units of ``unit`` channels (a head). ``parts``: each part's segments, with
    offsets along the split tensor's channel axis."""

    module: str
    attr: str
    parts: tuple[tuple[Segment, ...], ...]
    unit: int = 1


@dataclass
class ModuleRole:
    """How one module touches channels. ``in_segments`` cover its whole input-channel axis,
    ``out_segments`` a producer's whole output axis (one segment, or several where its output is
    made of parts: GhostNet's shortcut conv, a conv whose output a split cuts), each channel of a
    unit-``u`` group spanning ``spatial = u`` outputs; ``kind`` names the slicing rule."""

    name: str
    kind: str  # "conv", "linear", "convT", "depthwise", "norm", "prelu", "layernorm"
    in_segments: tuple[Segment, ...] = ()
    out_segments: tuple[Segment, ...] = ()

    @property
    def out_groups(self) -> tuple[int, ...]:
        """The groups a producer writes, in output order, each once."""
        return tuple(dict.fromkeys(s.group for s in self.out_segments))
