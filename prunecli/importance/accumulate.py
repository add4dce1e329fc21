"""Accumulate per-group scores over training steps, on the device and without host syncs."""

from __future__ import annotations

from typing import Any

import torch

KINDS = ("latest", "momentum", "average", "sum")


class Accumulator:
    """``latest`` keeps the last scores, ``momentum`` ``m * past + (1 - m) * new`` (the first
    update takes ``new`` as is), ``average`` the mean since the last reset, ``sum`` the total.

    ``skip_nonfinite``: an update holding NaN/Inf is ignored as a whole (HALP); the check stays
    on the device.
    """

    def __init__(self, kind: str = "average", momentum: float = 0.9,
                 skip_nonfinite: bool = True) -> None:
        if kind not in KINDS:
            raise ValueError(f"accumulator '{kind}' is unknown; use one of {', '.join(KINDS)}")
        self.kind = kind
        self.momentum = momentum
        self.skip_nonfinite = skip_nonfinite
        self.values: dict[int, torch.Tensor] = {}
        self.count: torch.Tensor | int = 0

    @torch.no_grad()
    def update(self, scores: dict[int, torch.Tensor]) -> None:
        ok: torch.Tensor | None = None
        if self.skip_nonfinite and scores:
            ok = torch.stack([torch.isfinite(v).all() for v in scores.values()]).all()
        first = not self.values
        for g, new in scores.items():
            new = new.detach().float()
            old = self.values.get(g)
            if old is None:
                old = torch.zeros_like(new)
            if self.kind == "latest" or (self.kind == "momentum" and first):
                value = new
            elif self.kind == "momentum":
                value = self.momentum * old + (1 - self.momentum) * new
            else:  # average and sum keep the sum; average divides on read
                value = old + new
            self.values[g] = value if ok is None else torch.where(ok, value, old)
        self.count = self.count + (1 if ok is None else ok.long())

    def steps(self) -> int:
        """Updates taken into account since the last reset (host sync)."""
        return int(self.count)

    def value(self) -> dict[int, torch.Tensor]:
        if self.kind != "average":
            return dict(self.values)
        n = torch.as_tensor(self.count).clamp_min(1)
        return {g: v / n for g, v in self.values.items()}

    def reset(self) -> None:
        self.values = {}
        self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"values": {int(g): v.cpu() for g, v in self.values.items()},
                "count": int(self.count)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.values = {int(g): v.to(device) for g, v in state.get("values", {}).items()}
        self.count = int(state.get("count", 0))
