"""Classification metrics summed over ranks."""

from __future__ import annotations

import torch

from prunecli.engine.distributed import all_reduce_sum


class ClassificationMeter:
    """Sums loss, top-1 and top-5 hits over batches; ``compute`` reduces across ranks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        n = targets.shape[0]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        batch = torch.stack([
            loss.detach().double() * n,
            hits[:, 0].sum().double(),
            hits.any(dim=1).sum().double(),
            torch.tensor(float(n), dtype=torch.float64, device=logits.device),
        ])
        self.totals += batch.to(self.device)

    def compute(self) -> dict[str, float]:
        loss, top1, top5, n = all_reduce_sum(self.totals).tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n,
                "samples": int(n)}
