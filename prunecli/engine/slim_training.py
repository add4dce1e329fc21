"""Fine-tune the slimmed network instead of the masked one.

Once a pruning method's masks are final (``method.slim_when_final=true``), the rest of the run
only fine-tunes: the trainer swaps the masked model for its slimmed copy, so every remaining
step costs the pruned MACs, not the dense ones. The swap changes nothing the run computes: the
slim model's forward equals the masked one's (checked), the kept weights get the same gradients,
and the optimizer state moves with them, sliced like the weights were
(:func:`transfer_optimizer_state`). Checkpoints written afterwards hold the slim model and its
keep-sets; resuming, ``prunecli slim/eval/bench/export`` and ``model.weights=`` rebuild from them.
"""

from __future__ import annotations

import torch
from torch import nn

from prunecli.errors import PrunecliError
from prunecli.structure.slim import SliceLog
from prunecli.structure.unslim import slice_tensor

_MASKED = ".parametrizations.weight.original"


def plain_name(name: str) -> str:
    """A parameter's name without prunecli's mask parametrization."""
    return name.replace(_MASKED, ".weight")


def transfer_optimizer_state(old: torch.optim.Optimizer, old_model: nn.Module,
                             new: torch.optim.Optimizer, new_model: nn.Module,
                             log: SliceLog) -> None:
    """Give ``new`` (built over ``new_model``, the slimmed copy) the hyperparameters of each of
    ``old``'s parameter groups (learning rates as the scheduler left them) and every parameter's
    state, sliced like the parameter was."""
    if len(old.param_groups) != len(new.param_groups):
        raise PrunecliError(f"slimming in training: the optimizer had {len(old.param_groups)} "
                            f"parameter groups, the slim model's has {len(new.param_groups)}")
    for group, before in zip(new.param_groups, old.param_groups, strict=True):
        group.update({k: v for k, v in before.items() if k != "params"})
    for group in new.param_groups:  # parameters outside the model (a method's own) stay as they are
        for p in group["params"]:
            if p in old.state:
                new.state[p] = {k: _copy(v) for k, v in old.state[p].items()}
    old_params = {plain_name(n): p for n, p in old_model.named_parameters()}
    for name, p in new_model.named_parameters():
        source = old_params.get(name)
        state = old.state.get(source) if source is not None else None
        if not state:
            continue
        ops = log.get(name, [])
        new.state[p] = {k: slice_tensor(v, ops).clone() if torch.is_tensor(v) and v.dim() > 0
                        and v.shape == source.shape else _copy(v) for k, v in state.items()}


def _copy(v: object) -> object:
    """State of its own (the old optimizer may still step: nothing is shared)."""
    return v.clone() if torch.is_tensor(v) else v
