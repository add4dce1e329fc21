"""Hyperparameter schemas of the pruning methods (torch-free, so the CLI starts fast).

Each method registers a dataclass here; ``conf/method/<name>.yaml`` starts from it, so a typo
in a method's key is a composition error. The method implementation lives in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class MethodConfig:
    """Fields every method has."""

    name: str = "none"


@dataclass
class NoneConfig(MethodConfig):
    """Dense training: no pruning."""

    name: str = "none"


@dataclass
class PruningConfig(MethodConfig):
    """Fields every pruning method has."""

    ignore: list[str] = field(default_factory=list)  # module globs whose groups stay whole
    min_channels: int = 1  # channels every group keeps at least
    save_slim: bool = True  # write slim.pt next to the checkpoint at the end
    eval_slim: bool = True  # evaluate the slimmed model at the end (it must match the masked)


@dataclass
class TaylorConfig(PruningConfig):
    """Molchanov et al.: iterative removal by first-order Taylor importance."""

    name: str = "taylor"
    criterion: str = "fo_bn"  # fo_bn (CVPR 2019) | fo_weight | iclr2017
    prune_every: int = 30  # minibatches averaged between pruning steps
    remove_per_step: float = 0.02  # channels per step: fraction of prunable (<1) or count
    momentum: float = 0.9  # smoothing of scores across pruning steps
    start_epoch: float = 0.0  # train this long before the first pruning step
    finish_at: float = 0.5  # fraction of training by which the budget must be reached


@dataclass
class SlimmingConfig(PruningConfig):
    """Liu et al.: L1 on BN scales, global threshold, fine-tune."""

    name: str = "slimming"
    sparsity: float = 1e-4  # s: L1 strength on BN scales (1e-4 VGG, 1e-5 ResNet)
    prune_at: float = 0.5  # fraction of training when channels go (1.0: at the end; 0: at once)
    channel_ratio: Optional[float] = None  # fraction of channels to prune (else cost.ratio)
    threshold: str = "global"  # global | optimal (Optimal Thresholding)
    ot_energy: float = 0.001  # optimal: a group's negligible share of squared scales


@dataclass
class HALPConfig(PruningConfig):
    """Shen et al.: latency-aware augmented knapsack on BN Taylor importance."""

    name: str = "halp"
    group_size: int = 8  # neuron group: channels pruned together
    prune_every: int = 40  # iterations between pruning steps
    prune_steps: int = 30  # pruning steps (geometric cost schedule)
    start_epoch: float = 0.0  # train this long before pruning starts
    side_weight: float = 0.0  # layer cost charged to its output channels (HALP's view)


@dataclass
class SMCPConfig(PruningConfig):
    """Humble et al.: soft (straight-through) input-channel masks re-solved by a cost knapsack.

    Schedule lengths (``warmup_epochs``, ``ramp_epochs``, ``cooldown_epochs``) follow the
    ``optim.milestones`` rule: below 1 a fraction of training, from 1 on a number of epochs. The
    defaults are the paper's ImageNet 10 / 55 / 25 of 90 epochs as fractions.
    """

    name: str = "smcp"
    mask: str = "soft"  # soft (straight-through: masked channels keep learning) | hard
    importance: str = "magnitude"  # magnitude |w| | taylor_fo -w*g | taylor_so -w*g + w^2*H/2
    grad_source: str = "grad"  # taylor: g = this step's gradient | momentum (SGD/Adam buffer)
    accumulator: str = "momentum"  # latest | momentum | average (reset at every re-solve)
    accumulator_momentum: float = 0.9  # m of m * past + (1 - m) * new
    pruned_decay: float = 2e-4  # extra decay of masked weights (added to their gradient)
    warmup_epochs: float = 0.11  # nothing pruned (paper: 10 of 90 epochs)
    ramp_epochs: float = 0.61  # the removed cost grows to cost.ratio (paper: 55 of 90 epochs)
    ramp: str = "exponential"  # exponential | linear | power
    ramp_power: float = 3.0  # ramp=power: 1 - (1 - u)^a of the ramp's progress u
    cooldown_epochs: float = 0.28  # masks frozen at the end (paper: 25 of 90 epochs)
    prune_every: int = 80  # optimizer steps between re-solves (paper: 80 at 256 images a step)
    round_to: int = 8  # kept widths are multiples of this when the group is wide enough
    channel_doublesided_weight: float = 1.0  # 1: layer cost on its input side, 0: producer side


# name -> (schema, "module:Class" of the implementation, one-line description)
METHOD_SCHEMAS: dict[str, tuple[type[MethodConfig], str, str]] = {
    "none": (NoneConfig, "prunecli.methods.none:NoPruning", "dense training, no pruning"),
    "taylor": (TaylorConfig, "prunecli.methods.taylor:TaylorPruning",
               "Molchanov et al. CVPR 2019: first-order Taylor importance, iterative removal"),
    "slimming": (SlimmingConfig, "prunecli.methods.slimming:NetworkSlimming",
                 "Liu et al. ICCV 2017: L1 on BN scales, global threshold (or Optimal "
                 "Thresholding)"),
    "halp": (HALPConfig, "prunecli.methods.halp:HALP",
             "Shen et al. NeurIPS 2022: latency-aware augmented knapsack, geometric schedule"),
    "smcp": (SMCPConfig, "prunecli.methods.smcp:SMCP",
             "Humble et al. ECCV 2022: soft channel masks re-solved by a cost knapsack"),
}
