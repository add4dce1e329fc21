"""Optimizers and per-step learning-rate schedules (linear warmup, then cosine / step / constant).

Schedules step once per optimizer step, not per epoch, so warmup and decay are smooth for any
epoch count and resume lands on the exact same learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunecli.errors import ConfigError
from prunecli.models.detection.recipes import published_lr, published_warmup

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                 bias_lr_factor: float = 1.0, lr: float | None = None) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and (unless ``decay_norm_and_bias``) norm weights and all
    biases without decay, the usual choice that keeps BN scales from being pushed to zero by
    weight decay alone (pruning methods that want them small add their own loss).

    ``bias_lr_factor`` != 1 puts the biases of convs and linears in a group of their own at
    ``lr * bias_lr_factor`` (the SSD recipes of SMCP and NVIDIA train biases at twice the LR)."""
    split_bias = bias_lr_factor != 1.0
    if split_bias and lr is None:
        raise ValueError("param_groups: bias_lr_factor needs the base lr")
    decay, no_decay, bias, seen = [], [], [], set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_norm = isinstance(module, _NORM_TYPES)
            if split_bias and pname == "bias" and not is_norm:
                bias.append(p)
            elif decay_norm_and_bias or not (is_norm or pname == "bias" or p.ndim <= 1):
                decay.append(p)
            else:
                no_decay.append(p)
    name = "all" if decay_norm_and_bias else "decay"
    groups = [{"params": decay, "weight_decay": weight_decay, "name": name}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    if bias:
        groups.append({"params": bias, "lr": lr * bias_lr_factor,  # type: ignore[operator]
                       "weight_decay": weight_decay if decay_norm_and_bias else 0.0,
                       "name": "bias"})
    return groups


#: ``optim.lr`` when it is not set and the model has no published recipe (the classifiers' usual
#: rates; SGD's is the embedded demo's)
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}


def choose_lr(model_cfg: Any, optim_cfg: Any, global_batch: int, steps_per_epoch: int = 1,
              total_steps: int = 0) -> str | None:
    """Fill an unset ``optim.lr`` (null) in place: the detector's published rate per image times
    ``global_batch`` (SGD, see :func:`published_lr`), else :data:`DEFAULT_LR`; and an unset
    ``optim.warmup_epochs``: the recipe's warm-up (:func:`published_warmup`) when the rate came
    from it, else none. Returns the line to log when a recipe chose them. Filled before the run
    saves its config, so a resumed run, its report and its checkpoint all carry what was used."""
    line = None
    if optim_cfg.lr is None:
        chosen = published_lr(model_cfg, optim_cfg.name, global_batch)
        if chosen is not None:
            optim_cfg.lr, line = chosen
        elif optim_cfg.name not in DEFAULT_LR:
            raise ConfigError(f"optim.name={optim_cfg.name} is not one of sgd, adamw")
        else:
            optim_cfg.lr = DEFAULT_LR[optim_cfg.name]
    if optim_cfg.get("warmup_epochs") is None:
        warmup = published_warmup(model_cfg, steps_per_epoch, total_steps) if line else None
        optim_cfg.warmup_epochs = warmup[0] / max(1, steps_per_epoch) if warmup else 0.0
        if warmup:
            line = f"{line}; optim.warmup_epochs not set: {warmup[1]}"
    return line


def build_optimizer(groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
    if cfg.lr is None:
        raise ConfigError("optim.lr is null: give a rate, or fill it with choose_lr first")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    raise ConfigError(f"optim.name={cfg.name} is not one of sgd, adamw")


def lr_factor_fn(cfg: Any, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base LR at optimizer step ``s`` (0-based)."""
    warmup = int(round((cfg.warmup_epochs or 0.0) * steps_per_epoch))  # None: not filled in
    min_factor = cfg.min_lr / cfg.lr if cfg.lr else 0.0
    if cfg.scheduler not in ("cosine", "step", "constant"):
        raise ConfigError(f"optim.scheduler={cfg.scheduler} is not one of cosine, step, constant")
    # step milestones: values >= 1 are epochs, values < 1 are fractions of training
    epochs = total_steps / max(1, steps_per_epoch)
    milestones = sorted(
        int(round((m if m >= 1 else m * epochs) * steps_per_epoch)) for m in cfg.milestones
    )
    factors = getattr(cfg, "milestone_factors", None)
    if factors and len(factors) != len(milestones):
        raise ConfigError(f"optim.milestone_factors has {len(factors)} values for "
                          f"{len(milestones)} optim.milestones; give one factor per milestone")

    def factor(s: int) -> float:
        if s < warmup:
            start = cfg.warmup_start_factor
            return start + (1.0 - start) * s / max(1, warmup)
        if cfg.scheduler == "constant":
            return 1.0
        if cfg.scheduler == "step":
            passed = sum(s >= m for m in milestones)
            if factors:  # the factor in force after each milestone (the SSD recipes)
                return 1.0 if passed == 0 else float(factors[passed - 1])
            return cfg.gamma ** passed
        t = (s - warmup) / max(1, total_steps - warmup)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor_fn(cfg, total_steps, steps_per_epoch)
    )
