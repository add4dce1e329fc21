"""Which prunable groups may lose all their channels (``method.layer_drop``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

from prunecli.structure.layouts import _SIZE_METHODS, _Layout, _meta, _node_args
from prunecli.structure.types import ChannelGroup, ModuleRole

if TYPE_CHECKING:
    from prunecli.structure.trace import _Analysis

_DROP_KINDS = {"conv", "linear", "depthwise", "norm", "prelu"}


def mark_droppable(an: _Analysis, gm: fx.GraphModule, groups: list[ChannelGroup],
                   roles: dict[str, ModuleRole], group_of: Any) -> None:
    """A prunable group may lose *all* its channels when the model's outputs still depend on
    its input without it: the group lies on a residual branch (or a DenseNet layer's new
    features), not on the only path. With the group empty, every consumer reading nothing else
    outputs its bias, a per-channel constant (``prunecli.structure.dropped``).

    One forward data-flow pass per candidate: a tensor is *live* when it carries input data in
    some other group's channels; a consumer reading only the group (or dead data) is dead;
    shape queries carry no data. Droppable means every tensor output stays live."""
    consumer_nodes = {n for n in gm.graph.nodes if n.op == "call_module"
                      and roles.get(str(n.target)) is not None
                      and roles[str(n.target)].kind in ("conv", "linear")}
    node_groups = {n: frozenset(group_of(seg.space) for seg in lay.segs)
                   for n, lay in an.layouts.items() if isinstance(lay, _Layout)}
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    out_tensors = [a for n in outputs for a in _node_args(n) if _meta(a) is not None]
    candidates = [g for g in groups if g.prunable and g.producers and all(
        roles[name].kind in _DROP_KINDS for name in (*g.producers, *g.consumers, *g.followers))
        and all(roles[name].out_groups == (g.id,) for name in g.producers)]
    if not out_tensors:
        return
    for g in candidates:
        live: set[fx.Node] = set()
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                live.add(node)
                continue
            if node.op in ("get_attr", "output") or (node.op == "call_method" and
                                                     node.target in _SIZE_METHODS):
                continue
            if node.op == "call_function" and node.target is getattr:
                continue
            args = _node_args(node)
            if node in consumer_nodes:
                src = args[0] if args else None
                carries = node_groups.get(src, frozenset()) - {g.id}
                if src in live and carries:
                    live.add(node)
                continue
            if any(a in live for a in args):
                layout = node_groups.get(node)
                if layout is None or layout - {g.id}:
                    live.add(node)
        g.droppable = all(n in live for n in out_tensors)
