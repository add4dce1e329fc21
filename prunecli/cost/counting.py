"""Whole-model cost counters: MACs of one forward pass and parameter counts."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _sdpa_cpu_flops(query: torch.Size, key: torch.Size, value: torch.Size, *args: object,
                    out_val: object = None, **kwargs: object) -> int:
    """Attention on CPU (``_scaled_dot_product_flash_attention_for_cpu``): torch's counter
    knows the CUDA kernels only, so a ViT's attention would count as free on a CPU."""
    return sdpa_flop_count(query, key, value)


_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


@torch.no_grad()
def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates for ONE sample (batch 1) using torch's own FLOP counter
    (convolutions, matmuls, attention; FLOPs / 2). Norms, activations and pooling are not
    counted, the convention behind the usual figures (ResNet-50: 4.09 G)."""
    from prunecli.structure.analyse import eval_mode

    x = example_input[:1]
    # the counter's module tracker asserts on parameters passed between modules as arguments
    # (timm PiT, CaiT) while they require grad, even under no_grad: switch that off meanwhile
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS)
        with eval_mode(model), counter:
            model(x)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    """Parameters (``parameters()`` yields a shared tensor once); buffers are not counted."""
    return sum(p.numel() for p in model.parameters())
