"""The ICLR 2017 Taylor criterion (Molchanov et al.): ``|mean over positions of a * dL/da|``
per sample, averaged over the batch, where ``a`` is the channel's activation (the output of the
group's norm, or of its producer when there is none). Needs the per-sample activations, so it
hooks the forward pass; :class:`prunecli.importance.BNTaylor` needs nothing and is the default.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunecli.structure import ChannelStructure


class ActivationTaylor:
    """Attach with :meth:`attach`; every backward pass adds one batch's scores, read them (and
    start over) with :meth:`pop`."""

    def __init__(self, model: nn.Module, structure: ChannelStructure) -> None:
        modules = dict(model.named_modules())
        # (module, spans (group, offset, units, channels per unit), channels last): a Linear's
        # output has its channels on the last axis
        self.sites: list[tuple[nn.Module, list[tuple[int, int, int, int]], bool]] = []
        for g in structure.prunable_groups:
            names = [n for n in g.followers if structure.roles[n].kind == "norm"] or g.producers
            for name in names[:1] if names else []:
                role = structure.roles[name]
                segs = role.out_segments if name in g.producers else role.in_segments
                spans = [(s.group, s.offset, s.length, s.spatial) for s in segs
                         if s.group == g.id]
                self.sites.append((modules[name], spans, role.kind == "linear"))
        self.sums: dict[int, torch.Tensor] = {}
        self.handles: list[RemovableHandle] = []

    def attach(self) -> None:
        if not self.handles:
            self.handles = [m.register_forward_hook(self._forward(spans, last))
                            for m, spans, last in self.sites]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _forward(self, spans: list[tuple[int, int, int, int]], last: bool) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            act = output.detach()

            def grad_hook(grad: torch.Tensor) -> None:
                per = (act * grad).float()
                per = per.movedim(-1, 1) if last and per.ndim > 2 else per  # (N, C, ...)
                per = per.flatten(2).mean(2) if per.ndim > 2 else per  # (N, C)
                theta = per.abs().mean(0)
                for gid, off, length, unit in spans:
                    part = theta[off: off + length * unit].view(length, unit).sum(1)
                    self.sums[gid] = self.sums[gid] + part if gid in self.sums else part

            output.register_hook(grad_hook)
        return hook

    def pop(self) -> dict[int, torch.Tensor]:
        out, self.sums = self.sums, {}
        return out
