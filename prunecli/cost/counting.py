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


def count_macs_on_data(model: nn.Module, example_input: torch.Tensor, model_name: str) -> int:
    """:func:`count_macs` of a model's first forward on the data's input, where a model built
    for another input size fails: a one-line ConfigError that names the size to set."""
    from prunecli.errors import ConfigError

    try:
        return count_macs(model, example_input)
    except (AssertionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"model {model_name} fails on the data's input {tuple(example_input.shape[1:])} "
            f"({first}); a model built for a fixed input size needs it set, e.g. "
            f"+model.kwargs.img_size={example_input.shape[-1]} for timm's ViT/Swin/DeiT, or "
            "data.image_size set to the model's own size") from exc
