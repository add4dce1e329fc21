"""Typed schemas of every config group.

Hydra composes YAML; :func:`prunecli.config.validate.validate` then merges the result into these
dataclasses, so an unknown key (a typo, even one that arrived through an experiment file or a
``+key=`` override) or a value of the wrong type is an error instead of a silently ignored value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelConfig:
    """Which network to build. ``source`` picks the family registry; classes and input channels
    come from the dataset, so one model config works on any data."""

    name: str = "resnet20"
    source: str = "prunecli"  # prunecli | torchvision | timm
    pretrained: bool = False  # torchvision/timm weights (needs a network or a local cache)
    weights: Optional[str] = None  # local state_dict file loaded after building
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra constructor arguments


@dataclass
class DataConfig:
    """Which dataset and how to load it."""

    name: str = "fashion_mnist"
    root: Optional[str] = None  # folder for datasets read from disk (imagenet, imagefolder, cifar)
    batch_size: int = 128  # per process
    eval_batch_size: Optional[int] = None  # default: 2 x batch_size
    num_workers: int = 0
    image_size: Optional[int] = None  # None = the dataset's native/standard size
    channels: Optional[int] = None  # force 1 (grayscale) or 3 (RGB); None = native
    augment: bool = True  # the dataset's standard training augmentation
    hflip: Optional[bool] = None  # None = the dataset's default (off for digits/fashion)
    train_size: Optional[int] = None  # use only the first N (class-balanced) training images
    val_size: Optional[int] = None
    num_classes: Optional[int] = None  # fake data: number of classes
    pin_memory: bool = True  # only used on CUDA
    # detection datasets (voc, coco, yolo, fashion_det)
    # voc: "2007/trainval+2012/trainval"; coco: "train2017"; yolo: "train"
    train_split: Optional[str] = None
    val_split: Optional[str] = None  # voc: "2007/test"; coco: "val2017"
    class_names: Optional[list[str]] = None  # None: the dataset's own (VOC's 20, COCO's JSON)
    # coco, yolo: also train on images without objects, as background (Ultralytics does; left out
    # by default, as torchvision's references do: SSD's hard-negative mining learns nothing from
    # them, RetinaNet's, FCOS's and Faster R-CNN's losses do)
    background_images: bool = False
    # the task's primary metric, which methods, reports and sweeps speak of; None: the task's
    # default (classification: top1; detection: map = COCO mAP@[.5:.95], or voc07_map)
    metric: Optional[str] = None


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    # for the global batch (data.batch_size x world size x grad_accum); None: a detector's published
    # rate per image x that batch (SGD), else 0.1 for SGD and 1e-3 for AdamW
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # False: no weight decay on norm weights and biases
    scheduler: str = "cosine"  # cosine | step | constant
    # linear warm-up; None: the detector's published warm-up when optim.lr is None too (at most
    # one epoch and 5% of the run), else none
    warmup_epochs: Optional[float] = None
    warmup_start_factor: float = 0.1
    min_lr: float = 0.0  # cosine floor
    # step scheduler: decay points, in epochs (>= 1) or as fractions of training (< 1)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1  # step decay factor
    # step scheduler: the LR factor in force after each milestone instead of gamma^k (SMCP's
    # SSD512 recipe: milestones [600, 700, 740, 770], factors [0.375, 0.125, 0.05, 0.005])
    milestone_factors: Optional[list[float]] = None
    bias_lr_factor: float = 1.0  # LR multiplier of conv/linear biases (SSD recipes: 2)


@dataclass
class TrainerConfig:
    epochs: int = 5
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | fp16 | bf16 (fp16 needs CUDA; bf16 works on CPU and CUDA)
    channels_last: bool = False
    grad_accum: int = 1
    clip_grad_norm: Optional[float] = None
    label_smoothing: float = 0.0
    deterministic: bool = False  # bit-reproducible runs (slower); resume then matches exactly
    sync_bn: bool = False  # SyncBatchNorm under DDP
    eval_every: int = 1  # epochs
    limit_train_batches: Optional[int] = None  # cap batches per epoch (smoke tests, debugging)
    limit_val_batches: Optional[int] = None
    progress: bool = True  # Rich progress bars (rank 0, only on a terminal)
    log_every: int = 50  # steps between metric lines in the JSONL
    threads: Optional[int] = None  # torch CPU threads; None = torch's default
    stop_after_epoch: Optional[int] = None  # end the run early after this epoch (as if killed)


@dataclass
class CostConfig:
    """The cost model and the budget. ``ratio`` is the one canonical budget knob: the fraction of
    the dense cost to remove (0.3 removes 30%)."""

    name: str = "macs"
    ratio: float = 0.0
    batch_size: int = 1  # activations counted at this batch size (memory cost)
    side_weight: float = 1.0  # how a layer's cost is split between its input and output group
    table: Optional[str] = None  # cost=latency: the `prunecli lut` table file
    allow_mismatch: bool = False  # cost=latency: use a table measured under other conditions


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher while pruning and fine-tuning: the loss is
    ``(1 - alpha) * task loss + alpha * T^2 * KL(teacher/T || student/T)`` on class logits, plus
    ``box_weight * box KD`` on a detector (see :mod:`prunecli.engine.distill`)."""

    enabled: bool = False
    # a checkpoint, run directory or slim file; None: the model the run starts from
    # (model.weights / model.pretrained), frozen before any pruning
    teacher: Optional[str] = None
    # weight of the class-score distillation term; None: the task's (classification 0.5;
    # detection 0, where it cost mAP and the box term is what helps)
    alpha: Optional[float] = None
    temperature: float = 4.0  # softens both distributions; the T^2 factor keeps gradients' scale
    # detectors: weight of the box term (smooth L1 to the teacher's box regressions on the boxes
    # it holds for objects), added to the objective; 0 turns it off; ignored by classifiers.
    # 2: chosen on held-out scenes; 5 gained more in a fine-tune but broke training from scratch
    box_weight: float = 2.0
    box_threshold: float = 0.5  # the teacher's foreground probability that selects those boxes


@dataclass
class TrainConfig:
    seed: int = 0
    # a checkpoint file or a run directory holding last.pt; "auto": this run's own folder if it
    # has a checkpoint (else start; a finished run is skipped), for requeued jobs and sweeps
    resume: Optional[str] = None
    logger: str = "jsonl"  # jsonl (metrics.jsonl) | tensorboard (metrics.jsonl + TensorBoard)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # ``name`` plus the method's own hyperparameters; typed by the method's schema
    # (prunecli.methods.schemas), chosen by the ``method`` config group
    method: Any = None


@dataclass
class EvalConfig:
    seed: int = 0
    ckpt: Optional[str] = None  # a checkpoint or run directory; None = the model config's weights
    # another model (a run, checkpoint or slim file; typically the dense one) evaluated on the same
    # images: the metric, MACs and each class's figure side by side, the classes that lost most
    # first
    baseline: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class ListConfig:
    """``prunecli list [what=methods|models|datasets|costs|all]``."""

    what: str = "all"


@dataclass
class SlimConfig:
    """``prunecli slim ckpt=RUN_DIR``: write the slimmed model of a masked training run."""

    ckpt: str = "???"  # a `prunecli train` run directory or checkpoint file
    out: Optional[str] = None  # default: slim.pt next to the checkpoint
    batch_size: int = 8  # images in the masked-vs-slimmed check
    tolerance: float = 1e-4  # max |masked - slimmed| / max |masked|


@dataclass
class InspectConfig:
    """``prunecli inspect model=NAME``: the channel groups of a model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    ckpt: Optional[str] = None  # inspect a training checkpoint's model (and its masks) instead
    # C, H, W; None: a detector's native size (ssd512_resnet50: 3x512x512), else 3x224x224
    input_size: Optional[list[int]] = None
    num_classes: Optional[int] = None  # None: 1000 for a classifier, 80 for a detector
    ignore: list[str] = field(default_factory=list)  # module names/globs left unpruned
    show: str = "all"  # all | prunable | unprunable
    # data=NAME: inspect a dataset instead (every image decoded, objects' sizes for detection)
    data: Optional[DataConfig] = None
    threads: Optional[int] = None  # images decoded at once by `inspect data=`; None: cores, <= 8


@dataclass
class ExportConfig:
    """``prunecli export ckpt=slim.pt format=onnx``: deployable files of a (slim) model."""

    # a `prunecli slim` file, or a training run/checkpoint (masks applied); None: `model` alone
    ckpt: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)  # used when ckpt is None
    input_size: Optional[list[int]] = None  # C, H, W for model; None: as `prunecli inspect`
    num_classes: Optional[int] = None  # for model; None: 1000, or 80 for a detector
    format: str = "onnx"  # onnx | torchscript
    out: Optional[str] = None  # default: next to ckpt (or ./MODEL), with .onnx / .ts
    batch_size: int = 1  # of the example input used for tracing (ONNX keeps the batch dynamic)
    opset: int = 17
    whole: bool = True  # detectors: also the whole model with post-processing (X.full.onnx)


@dataclass
class BenchConfig:
    """``prunecli bench ckpt=RUN_DIR/slim.pt``: measured speed of a dense and a slimmed model;
    ``prunecli bench runs=[DIR,...]``: of every run of a sweep, interleaved."""

    ckpt: Optional[str] = None  # slim file or masked training checkpoint; None: the model alone
    # runs=DIR or runs=[DIR,...]: every training run under the folders (results.json + slim.pt
    # or last.pt), its final model timed against one dense reference, all interleaved; writes
    # <run>/bench.json per run and bench_runs.json/.txt here. Any: a single folder is accepted
    runs: Any = None
    model: ModelConfig = field(default_factory=ModelConfig)  # used when ckpt is None
    # C, H, W; default: the checkpoint's, else a detector's native size, else 3x224x224
    input_size: Optional[list[int]] = None
    num_classes: Optional[int] = None  # for model without ckpt; None: 1000, or 80 for a detector
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (CUDA)
    channels_last: bool = False
    compile: bool = False  # torch.compile both models first (slow first call, then faster)
    warmup: int = 10
    repeats: int = 30
    threads: Optional[int] = None  # torch CPU threads
    onnx: bool = False  # also time ONNX exports with onnxruntime (CPU), if installed


@dataclass
class LutConfig:
    """``prunecli lut model=NAME``: measure a latency table on this device (cost=latency)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # a run (or its last.pt / slim.pt) whose architecture, class count and input size to time
    # instead of model / num_classes / input_size: the table then fits the runs started from it
    ckpt: Optional[str] = None
    # C, H, W; None: a detector's native size (its core is timed), else 3x224x224
    input_size: Optional[list[int]] = None
    num_classes: Optional[int] = None  # None: 1000, or 80 for a detector
    batch_size: int = 1  # latency is measured at this batch size
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (CUDA)
    channels_last: bool = False
    step: int = 16  # channel grid step (plus 1 and every layer's full width)
    warmup: int = 3  # calls before timing each point
    repeats: int = 10  # timed calls per point (median)
    rounds: int = 3  # passes over each chunk of points (median): load bursts spoil one pass only
    threads: Optional[int] = None  # torch CPU threads; None = torch's default
    out: Optional[str] = None  # default: lut_<model>_<device>_<dtype>_b<batch>.json in the cwd
    resume: bool = True  # continue a table already at `out` (same conditions) instead of redoing
    max_points: Optional[int] = None  # measure at most this many new points, then stop (resume)
    check: bool = True  # time random slimmed models and report the table's prediction error
    check_keep: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])  # kept fractions
    check_repeats: int = 30  # timed calls per model in the check (interleaved, median)
    seed: int = 0  # of the check's random keep-sets


@dataclass
class ReportConfig:
    """``prunecli report runs=[DIR,...]``: one table and figures of many training runs."""

    # sweep folders, run folders or folders above them (runs are found by their results.json);
    # Any: a single folder (runs=DIR) is accepted as well as a list
    runs: Any = "???"
    out: Optional[str] = None  # default: <DIR>/report for one folder, else this command's run dir
    metric: Optional[str] = None  # default: the runs' own primary metric (results["metric"])
    architecture: list[str] = field(default_factory=list)  # runs to draw; []: pruned runs (<= 6)
    format: str = "png"  # figure file format: png | svg | pdf
