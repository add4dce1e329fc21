"""Image classification: cross-entropy on logits; top-1 / top-5 accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from prunecli.engine.metrics import ClassificationMeter
from prunecli.engine.precision import Precision
from prunecli.errors import ConfigError
from prunecli.tasks.base import TASKS, Meter, Task


class _LogitsMeter(Meter):
    def __init__(self, device: torch.device) -> None:
        self.meter = ClassificationMeter(device)

    def update(self, outputs: Any, targets: Any, loss: Tensor) -> None:
        self.meter.update(outputs.detach().float(), targets, loss.detach())

    def compute(self) -> dict[str, float]:
        return self.meter.compute()

    def state_dict(self) -> dict[str, Any]:
        return {"totals": self.meter.totals.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "totals" in state:
            self.meter.totals.copy_(state["totals"])


@TASKS.register("classification", "one label per image: cross-entropy, top-1/top-5 accuracy")
class ClassificationTask(Task):
    name = "classification"
    metrics = ("top1", "top5")
    default_metric = "top1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def to_device(self, batch: Any, device: torch.device,
                  memory_format: torch.memory_format) -> tuple[Tensor, Tensor]:
        images, targets = batch
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        return images, targets.to(device, non_blocking=True)

    def check_model(self, model: nn.Module, model_name: str, data_name: str) -> None:
        from prunecli.models.detection import is_detector

        if is_detector(model):
            raise ConfigError(f"model {model_name} is a detector but data={data_name} is a "
                              "classification dataset; use a detection dataset (data=voc, "
                              "data=coco, data=yolo, data=fashion_det) or a classifier")

    def loss(self, model: nn.Module, inputs: Tensor, targets: Any) -> tuple[Tensor, Tensor]:
        logits = model(inputs)
        return self.criterion(logits, targets), logits

    def class_logits(self, model: nn.Module, core_output: Any) -> tuple[Tensor, str]:
        return core_output, "softmax"

    def train_meter(self, device: torch.device) -> Meter:
        return _LogitsMeter(device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device,
                 precision: Precision, channels_last: bool = False,
                 limit: int | None = None, per_class: bool = False) -> dict[str, Any]:
        """Loss / top-1 / top-5 (plain cross-entropy: no label smoothing in evaluation);
        ``per_class``: also each class's top-1 and image count."""
        from prunecli.engine.distributed import all_reduce_sum

        was_training = model.training
        model.eval()
        meter = ClassificationMeter(device)
        criterion = nn.CrossEntropyLoss()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        counts = torch.zeros(2, self.num_classes, dtype=torch.int64, device=device)
        for i, (images, targets) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
            targets = targets.to(device, non_blocking=True)
            with precision.autocast():
                logits = model(images)
            logits = logits.float()
            meter.update(logits, targets, criterion(logits, targets))
            if per_class:  # [right, seen] per class, summed over ranks below
                right = targets[logits.argmax(1) == targets]
                counts[0] += torch.bincount(right, minlength=self.num_classes)
                counts[1] += torch.bincount(targets, minlength=self.num_classes)
        model.train(was_training)
        metrics: dict[str, Any] = dict(meter.compute())
        if per_class:
            right, seen = all_reduce_sum(counts).tolist()
            names = self.class_names or [str(k) for k in range(self.num_classes)]
            metrics["per_class"] = {
                name: {"top-1 %": 100.0 * r / n if n else float("nan"), "images": n}
                for name, r, n in zip(names, right, seen, strict=True)}
        return metrics

    def results(self, metrics: dict[str, float]) -> dict[str, Any]:
        out = {"top1": metrics.get("top1"), "top5": metrics.get("top5"),
               "val_loss": metrics.get("loss")}
        return {**out, "per_class": metrics["per_class"]} if "per_class" in metrics else out

    def describe(self, metrics: dict[str, float]) -> str:
        if "top1" not in metrics:
            return "no eval"
        return f"loss {metrics['loss']:.4f} top1 {metrics['top1']:.2f}%"
