"""Which module attribute a size baked into the traced graph comes from.

torch.fx records ``self.num_heads`` or ``self.splits`` as plain numbers. Slimming can make such
a size follow pruning only by rewriting the attribute the code reads it from. A match by value
alone can be fooled (a head count of 2 written in the code and an ``attn_dim`` of 2), which would
give a slim model whose reshape fails. So a candidate is confirmed by tracing its module again
with the attribute changed by one and seeing the same op's numbers change with it, and only with
it; a module that does not trace alone, or an op that does not move, is not confirmed.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from torch import fx, nn

# (module class and settings, attribute, op, its index and numbers) -> confirmed; shared by
# the passes and by the identical blocks of a model (ViT-B's twelve attentions: one check)
HolderCache = dict[tuple[Any, ...], bool]


def size_holder(node: fx.Node, path: str, module: nn.Module, sizes: list[int] | int,
                cache: HolderCache) -> list[str]:
    """The attributes of ``module`` (at ``path``) confirmed to hold ``sizes`` as ``node``
    reads them (normally one; none or several mean the sizes cannot follow pruning)."""
    candidates = [name for name, value in vars(module).items() if _holds(value, sizes)]
    return [name for name in candidates if _confirmed(node, path, module, name, cache)]


def _holds(value: Any, sizes: list[int] | int) -> bool:
    if isinstance(sizes, int):
        return type(value) is int and value == sizes
    return isinstance(value, (list, tuple)) and len(value) == len(sizes) and all(
        type(v) is int for v in value) and list(value) == sizes


def _innermost(node: fx.Node) -> str:
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if not stack:
        return ""
    return stack[-1][0] if isinstance(stack[-1], tuple) else str(stack[-1])


def _ints(node: fx.Node) -> list[int]:
    out: list[int] = []

    def walk(value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, int) and not isinstance(value, bool):
            out.append(value)

    walk(node.args)
    walk(list(node.kwargs.values()))
    return out


def _same_ops(nodes: Any, like: fx.Node, owner: str) -> list[fx.Node]:
    return [n for n in nodes if n.op == like.op and n.target == like.target
            and _innermost(n) == owner]


def _local_op(module: nn.Module, like: fx.Node, index: int, attr: str, value: Any
              ) -> fx.Node | None:
    """The ``index``-th op like ``like`` in ``module``'s own forward with ``attr`` set to
    ``value``, traced alone with its defaulted arguments fixed (as a plain call passes them).
    A copy is traced: tracing may leave proxies in a module's caches (LeViT's biases)."""
    module = copy.deepcopy(module)
    setattr(module, attr, value)
    params = inspect.signature(module.forward).parameters.values()
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    try:
        graph = fx.Tracer().trace(module, concrete_args=concrete or None)
    except Exception:  # noqa: BLE001 - any failure means "not confirmed"
        return None
    ops = _same_ops(graph.nodes, like, "")
    return ops[index] if index < len(ops) else None


def _confirmed(node: fx.Node, path: str, module: nn.Module, name: str,
               cache: HolderCache) -> bool:
    index = _same_ops(node.graph.nodes, node, path).index(node)
    settings = tuple(sorted((k, v) for k, v in vars(module).items() if not k.startswith("_")
                            and (v is None or isinstance(v, (bool, int, float, str)))))
    key = (type(module), settings, name, node.op, node.target, index, tuple(_ints(node)))
    if key in cache:
        return cache[key]
    old = getattr(module, name)
    moved = old + 1 if isinstance(old, int) else type(old)(v + 1 for v in old)
    before = _local_op(module, node, index, name, old)
    after = _local_op(module, node, index, name, moved)
    ok = False
    if before is not None and after is not None:
        a, b = _ints(before), _ints(after)
        olds = [old] if isinstance(old, int) else list(old)
        news = [moved] if isinstance(moved, int) else list(moved)
        changed = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
        ok = a == _ints(node) and len(a) == len(b) and bool(changed) and all(
            a[i] in olds and b[i] == news[olds.index(a[i])] for i in changed)
    cache[key] = ok
    return ok

