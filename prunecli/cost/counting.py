"""Whole-model cost counters: MACs of one forward pass and parameter counts."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates for ONE sample (batch 1) using torch's own FLOP counter
    (convolutions, matmuls; FLOPs / 2). Norms, activations and pooling are not counted, the
    convention behind the usual figures (ResNet-50: 4.09 G)."""
    x = example_input[:1]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    """Parameters (``parameters()`` yields a shared tensor once); buffers are not counted."""
    return sum(p.numel() for p in model.parameters())
