"""Knowledge distillation: a frozen teacher (the dense model) guides the student while it is
pruned and fine-tuned, whatever the method.

Why in the loop and not in a method: all six methods prune the same student in the same loop,
so one loss term serves them all (soft masks, gates and regrowth act on the student only).

The objective of a micro-batch is ``(1 - alpha) * task loss + alpha * T^2 * KL(teacher/T ||
student/T)`` (Hinton et al. 2015) on the task's class logits; for a detector the ``task loss``
scaled by ``1 - alpha`` is only the loss of the distilled scores (``Task.split_loss``), and the
box losses keep their full weight:

- classification: the logits, softmax over the classes, averaged over the images;
- detection: the per-box class scores of the detector's core (SSD: softmax over K + 1 with
  background; RetinaNet and FCOS: one sigmoid per class, a binary KL per column; Faster R-CNN:
  the RPN's objectness), summed over columns and averaged over every box of every image. It
  is off unless ``distill.alpha`` is set (the detection task's alpha is 0): on the detection
  demo it cost mAP at every alpha and temperature tried;
- detection boxes, a separate term ``box_weight * smooth-L1(student boxes, teacher boxes)``
  added to the objective: the box regressions (as the detector's box coder encodes them, in the
  units of SSD's (10, 10, 5, 5) coder weights whatever the detector's own: RetinaNet's and the
  RPN's offsets are scaled up to them; FCOS's anchor-relative distances are used as they are)
  summed over the four coordinates and averaged over the boxes the teacher holds for objects
  (its foreground probability at least ``box_threshold``), since its offsets mean nothing
  elsewhere.
  Measured on the detection demo, this term is what helps a pruned detector:
  ``benchmarks/results/detection_distill_boxes.md``.

The student's logits are read from its core's output by a forward hook, so neither the task's
forward nor DDP's changes and no second student forward runs. The teacher runs its core on the
same images in eval mode under ``torch.no_grad()``, inside the caller's autocast (the run's
precision), is never wrapped in DDP (every rank holds its own copy) and is not checkpointed: a
resumed run rebuilds it from the config. Nothing of either forward is kept after the step.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from prunecli.engine.distributed import all_reduce_sum
from prunecli.errors import ConfigError

log = logging.getLogger("prunecli")


def kd_loss(student: Tensor, teacher: Tensor, temperature: float, kind: str) -> Tensor:
    """``T^2 * KL(teacher/T || student/T)``: summed over the last axis (the columns), averaged
    over every other position (images, or boxes of images); computed in float32."""
    if student.shape != teacher.shape:
        raise ConfigError(f"distillation: the teacher's class logits have shape "
                          f"{tuple(teacher.shape)}, the student's {tuple(student.shape)}; use "
                          "a teacher for the same classes (and, for a detector, the same "
                          "anchors and input size)")
    t = temperature
    s = student.float().reshape(-1, student.shape[-1]) / t
    q = teacher.float().reshape(-1, teacher.shape[-1]) / t
    if kind == "softmax":
        log_s, log_q = F.log_softmax(s, dim=-1), F.log_softmax(q, dim=-1)
        kl = (log_q.exp() * (log_q - log_s)).sum(-1)
    elif kind == "sigmoid":  # a Bernoulli per column
        p = torch.sigmoid(q)
        kl = (p * (F.logsigmoid(q) - F.logsigmoid(s))
              + (1 - p) * (F.logsigmoid(-q) - F.logsigmoid(-s))).sum(-1)
    else:
        raise ValueError(f"unknown class-score kind {kind!r} (softmax or sigmoid)")
    return t * t * kl.mean()


def foreground_probability(logits: Tensor, kind: str) -> Tensor:
    """``(..., boxes, columns)`` class logits -> ``(..., boxes)``: the probability that a box
    holds an object. Softmax heads (SSD): one minus the background's, column 0 as in
    torchvision; sigmoid heads (RetinaNet, FCOS, the RPN): the most probable class's."""
    if kind == "softmax":
        return 1.0 - F.softmax(logits.float(), dim=-1)[..., 0]
    if kind == "sigmoid":
        return torch.sigmoid(logits.float()).amax(dim=-1)
    raise ValueError(f"unknown class-score kind {kind!r} (softmax or sigmoid)")


def box_kd_loss(student: Tensor, teacher: Tensor, foreground: Tensor,
                threshold: float) -> Tensor:
    """Smooth L1 (beta 1, as SSD's box loss) between the student's and the teacher's
    ``(..., boxes, 4)`` box regressions, summed over the coordinates and averaged over the boxes
    whose ``foreground`` probability is at least ``threshold`` (0 where none is); float32."""
    if student.shape != teacher.shape:
        raise ConfigError(f"distillation: the teacher's box regressions have shape "
                          f"{tuple(teacher.shape)}, the student's {tuple(student.shape)}; use "
                          "a teacher of the same detector, anchors and input size")
    per_box = F.smooth_l1_loss(student.float(), teacher.float(), reduction="none").sum(-1)
    keep = (foreground >= threshold).to(per_box.dtype)
    return (per_box * keep).sum() / keep.sum().clamp(min=1.0)


def build_teacher(cfg: Any, student: nn.Module) -> tuple[nn.Module, str]:
    """The teacher of a run and a description of where it came from: the file named by
    ``distill.teacher`` (a training checkpoint or run directory, masks applied, or a slim
    file), else a copy of ``student`` as built, i.e. with ``model.weights`` or the pretrained
    weights loaded. Call it before a method touches the student."""
    path = cfg.distill.teacher
    if path:
        from prunecli.engine.checkpoint import resolve_checkpoint
        from prunecli.structure.from_checkpoint import load_masked_model
        from prunecli.structure.io import is_slim_file, load_slim

        file = resolve_checkpoint(path)
        teacher = load_slim(file).model if is_slim_file(file) else load_masked_model(file).model
        return teacher, str(file)
    if not (cfg.model.weights or cfg.model.pretrained):
        raise ConfigError("distill.enabled=true needs a trained teacher: set model.weights=PATH "
                          "(the trained model this run prunes; it is also the teacher) or "
                          "distill.teacher=PATH (a checkpoint, run directory or slim file)")
    source = cfg.model.weights or f"{cfg.model.name} pretrained weights"
    return copy.deepcopy(student), str(source)


def build_distiller(cfg: Any, student: nn.Module, task: Any, device: torch.device,
                    memory_format: torch.memory_format) -> Distiller | None:
    """The run's :class:`Distiller` when ``distill.enabled`` (a config saved before distillation
    existed has none), else None. Call before a method touches ``student``."""
    from omegaconf import OmegaConf

    if not OmegaConf.select(cfg, "distill.enabled", default=False):
        return None
    teacher, source = build_teacher(cfg, student)
    task.check_model(teacher, f"distill teacher {source}", cfg.data.name)
    alpha = cfg.distill.alpha if cfg.distill.alpha is not None else task.kd_alpha
    box_weight = OmegaConf.select(cfg, "distill.box_weight", default=0.0)  # older configs: none
    box_threshold = OmegaConf.select(cfg, "distill.box_threshold", default=0.5)
    distiller = Distiller(teacher, task, alpha=alpha,
                          temperature=cfg.distill.temperature, box_weight=box_weight,
                          box_threshold=box_threshold, device=device,
                          memory_format=memory_format)
    distiller.source = source
    boxes = f", box weight {box_weight:g}" if task.has_boxes else ""  # classifiers have none
    log.info("distilling from %s (alpha %g, T %g%s)", source, alpha, cfg.distill.temperature,
             boxes)
    return distiller


class Distiller:
    """Holds the frozen teacher; :meth:`mix` turns a micro-batch's task loss into the
    distillation objective. ``task`` names the class logits (:meth:`Task.class_logits`)."""

    def __init__(self, teacher: nn.Module, task: Any, *, alpha: float, temperature: float,
                 device: torch.device, memory_format: torch.memory_format,
                 box_weight: float = 0.0, box_threshold: float = 0.5) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distill.alpha={alpha} must be in [0, 1] (the weight of the "
                              "distillation term; 0 trains on the task loss alone)")
        if temperature <= 0:
            raise ConfigError(f"distill.temperature={temperature} must be > 0 (1 = the "
                              "teacher's own probabilities; 2-8 soften them)")
        if box_weight < 0:
            raise ConfigError(f"distill.box_weight={box_weight} must be >= 0 (the weight of the "
                              "box distillation term of a detector; 0 turns it off)")
        if not 0.0 < box_threshold <= 1.0:
            raise ConfigError(f"distill.box_threshold={box_threshold} must be in (0, 1] (the "
                              "teacher's foreground probability above which a box's regression "
                              "is distilled)")
        from prunecli.models.detection import core_input, core_of

        self.teacher = teacher.to(device, memory_format=memory_format).eval()
        self.teacher.requires_grad_(False)
        self._core_input, self._core_of = core_input, core_of
        self.task, self.alpha, self.temperature = task, float(alpha), float(temperature)
        self.box_weight, self.box_threshold = float(box_weight), float(box_threshold)
        self._boxes = bool(task.has_boxes) and self.box_weight > 0  # the box term is on
        if self.alpha == 0 and not self._boxes:
            log.warning("distillation with distill.alpha=0 and no box term teaches nothing (the "
                        "teacher only costs time); set distill.alpha > 0%s",
                        " or distill.box_weight > 0" if task.has_boxes else "")
        self.device = device
        self._handle: RemovableHandle | None = None
        self._student: nn.Module | None = None
        self._captured: Any = None
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)  # kd, box kd, batches
        self._timer = _DeviceTimer(device)
        self.source = ""  # where the teacher came from (for the results)
        self.teacher_seconds, self.teacher_batches = 0.0, 0  # this session's, for the results

    def attach(self, student: nn.Module) -> None:
        """Read ``student``'s class logits from now on (again after it is swapped for its
        slimmed copy)."""
        if self._handle is not None:
            self._handle.remove()
        self._student = student
        self._handle = self._core_of(student).register_forward_hook(_CaptureHook(self))

    def mix(self, task_loss: Tensor, images: Tensor, outputs: Any) -> Tensor:
        """``(1 - alpha) * supervised + alpha * KD + rest + box_weight * box KD`` for the
        forward that just produced ``task_loss`` and ``outputs`` from ``images`` (call inside
        the run's autocast); ``supervised`` / ``rest``: the task's :meth:`split_loss`
        (classification: the whole loss and nothing); the box term only where the task has
        boxes (:meth:`Task.box_regressions`)."""
        if self._captured is None or self._student is None:
            raise RuntimeError("Distiller.mix needs a training forward of the attached student")
        student_out, self._captured = self._captured, None
        self._timer.start()
        with torch.no_grad():
            teacher_out = self._core_of(self.teacher)(self._core_input(self.teacher, images))
            teacher_logits, teacher_kind = self.task.class_logits(self.teacher, teacher_out)
        self._timer.stop()
        logits, kind = self.task.class_logits(self._student, student_out)
        if kind != teacher_kind:
            raise ConfigError(f"distillation: the teacher scores classes by {teacher_kind}, the "
                              f"student by {kind}; use a teacher of the same detector family")
        with torch.set_grad_enabled(self.alpha > 0):  # at alpha 0 only measured: no graph
            kd = kd_loss(logits, teacher_logits, self.temperature, kind)
        supervised, rest = self.task.split_loss(self._student, task_loss, outputs)
        objective = (1.0 - self.alpha) * supervised.float() + self.alpha * kd
        if rest is not None:
            objective = objective + rest
        box_kd = kd.new_zeros(())
        if self._boxes:
            box_kd = box_kd_loss(self.task.box_regressions(self._student, student_out),
                                 self.task.box_regressions(self.teacher, teacher_out),
                                 foreground_probability(teacher_logits, kind), self.box_threshold)
            objective = objective + self.box_weight * box_kd
        self._sums += torch.stack([kd.detach().double(), box_kd.detach().double(),
                                   kd.new_ones((), dtype=torch.float64)])
        return objective

    def epoch_stats(self) -> dict[str, float]:
        """The epoch's mean distillation loss and the teacher's time per micro-batch (ms); resets
        both (every rank must call: the loss is averaged over ranks)."""
        kd, box_kd, n = all_reduce_sum(self._sums).tolist()
        self._sums.zero_()
        seconds, batches = self._timer.take()
        self.teacher_seconds += seconds
        self.teacher_batches += batches
        stats = {"kd": kd / max(n, 1.0), "teacher_ms": 1000.0 * seconds / max(batches, 1)}
        if self._boxes:
            stats["kd_box"] = box_kd / max(n, 1.0)
        return stats

    def summary(self, train_seconds: float) -> dict[str, Any]:
        """What the results record: the settings and the teacher's cost in this session."""
        return {"teacher": self.source, "alpha": self.alpha, "temperature": self.temperature,
                "box_weight": self.box_weight if self._boxes else None,
                "teacher_ms_per_batch": round(1000.0 * self.teacher_seconds
                                              / max(self.teacher_batches, 1), 3),
                "teacher_share_of_train_time": round(self.teacher_seconds
                                                     / max(train_seconds, 1e-9), 4)}

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class _CaptureHook:
    """The student's forward hook: hands a training forward's output to the distiller. A deep
    copy of the student (slimming, checks) gets an inert copy of it, so the teacher is never
    copied along and a copy's forwards never reach the distiller."""

    def __init__(self, distiller: Distiller | None) -> None:
        self.distiller = distiller

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.distiller is not None and module.training and torch.is_grad_enabled():
            self.distiller._captured = output  # the training forward, not an evaluation

    def __deepcopy__(self, memo: dict) -> _CaptureHook:
        return _CaptureHook(None)


class _DeviceTimer:
    """Time spent between ``start`` and ``stop``, without a host sync per call on CUDA (events
    are read once, in :meth:`take`)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds, self.count = 0.0, 0
        self._events: list[tuple[Any, Any]] = []
        self._t0 = 0.0

    def start(self) -> None:
        if self.cuda:
            self._events.append((torch.cuda.Event(enable_timing=True),
                                 torch.cuda.Event(enable_timing=True)))
            self._events[-1][0].record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self._events[-1][1].record()
        else:
            self.seconds += time.perf_counter() - self._t0
        self.count += 1

    def take(self) -> tuple[float, int]:
        """``(seconds, calls)`` since the last take."""
        if self._events:
            self._events[-1][1].synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in self._events) / 1000.0
            self._events.clear()
        out = (self.seconds, self.count)
        self.seconds, self.count = 0.0, 0
        return out
