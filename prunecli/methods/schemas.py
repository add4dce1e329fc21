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
    # the largest fraction of one group's channels the method may remove (1: no cap; 0.8:
    # every group keeps at least 20%): a guard for importances that are not comparable
    # across layers, e.g. magnitudes on a detector's head-feeding streams
    max_prune_per_group: float = 1.0
    layer_drop: bool = False  # groups on a residual branch may lose all channels (the branch goes)
    slim_when_final: bool = False  # once the masks are final, fine-tune the slimmed model (faster)
    save_slim: bool = True  # write slim.pt next to the checkpoint at the end
    eval_slim: bool = True  # evaluate the slimmed model at the end (it must match the masked)


@dataclass
class TaylorConfig(PruningConfig):
    """Molchanov et al.: iterative removal by first-order Taylor importance."""

    name: str = "taylor"
    criterion: str = "fo_bn"  # fo_bn (CVPR 2019) | fo_weight | iclr2017
    prune_every: int = 30  # minibatches averaged between pruning steps
    remove_per_step: float = 0.0  # channels per step: fraction (<1), count, or 0 = spread evenly
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
    # iterations between pruning steps (paper: 40); None: spread the steps evenly from
    # start_epoch to finish_at, fewer steps if that window is shorter (fits any run length)
    prune_every: Optional[int] = None
    prune_steps: int = 30  # pruning steps (geometric cost schedule)
    start_epoch: float = 0.0  # train this long before pruning starts
    finish_at: float = 0.5  # prune_every=None: fraction of training by which the last step is done
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
    # optimizer steps between re-solves; unset: the paper's 80 (at 256 images a step), or
    # fewer so that the ramp gets at least 30 re-solves (a short fine-tune got 1 with 80)
    prune_every: Optional[int] = None
    round_to: int = 8  # kept widths are multiples of this when the group is wide enough
    channel_doublesided_weight: float = 1.0  # 1: layer cost on its input side, 0: producer side


@dataclass
class CHEXConfig(PruningConfig):
    """Hou et al. (CVPR 2022): prune by column subset selection and regrow, from scratch.

    ``update_every`` and ``t_max`` follow the ``optim.milestones`` rule (below 1 a fraction of
    training, from 1 on epochs); the defaults are the paper's 2 epochs and 180 of 250 epochs.
    """

    name: str = "chex"
    sparsity: Optional[float] = None  # S: fraction of channels to remove (None: cost.ratio)
    d0: float = 0.3  # exploration: start at S - d0, d_t decays to 0 by t_max (cosine)
    update_every: float = 2.0  # dT between prune-and-regrow updates (epochs; < 1: fraction)
    t_max: float = 0.72  # T_max: masks frozen at the target from here (fraction; >= 1: epochs)
    regrow_sampling: str = "softmax"  # softmax | proportional | uniform of ||w - P w||
    regrow_temperature: float = 1.0  # softmax(||w - P w|| / temperature)


@dataclass
class GatorConfig(PruningConfig):
    """Passov et al.: per-sample channel gates trained with a cost-weighted gate loss.

    ``gate_epochs`` follows the ``optim.milestones`` rule (below 1 a fraction of training, from
    1 on epochs); ``start_epoch`` is in epochs. With ``cost.ratio > 0`` the criteria weight is
    adapted to the budget and the masks are cut to it exactly when gating ends.
    """

    name: str = "gator"
    criteria_weight: float = 0.5  # lambda of the cost loss (paper: 0.5 for FLOPs -> ~50%)
    gradient_multiplier: float = 0.2  # gate gradients x multiplier / w_h (paper: 0.2)
    gate_init_prob: float = 0.995  # initial gate probability: theta = logit(p)
    tau: float = 1.0  # sigmoid temperature of the gate samples
    start_epoch: float = 0.0  # dense training before gating starts (epochs)
    gate_epochs: float = 0.5  # gating length (paper: 30 epochs from pretrained), then fine-tune
    sync_every: int = 10  # steps between host syncs (hard masks, cost weights, controller)
    budget_gain: float = 2.0  # controller: lambda *= exp(gain * (expected / goal - 1))
    budget_ramp: float = 0.75  # fraction of gating over which the goal falls to the budget


# name -> (schema, "module:Class" of the implementation, one-line description)
METHOD_SCHEMAS: dict[str, tuple[type[MethodConfig], str, str]] = {
    "gator": (GatorConfig, "prunecli.methods.gator:Gator",
              "Passov et al. 2022: per-sample channel gates with a cost-weighted gate loss"),
    "none": (NoneConfig, "prunecli.methods.none:NoPruning", "dense training, no pruning"),
    "chex": (CHEXConfig, "prunecli.methods.chex:CHEX",
             "Hou et al. CVPR 2022: prune by column subset selection, regrow, from scratch"),
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
