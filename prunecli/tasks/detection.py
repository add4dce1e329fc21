"""Object detection: the detector's own losses; COCO mAP (pycocotools) and VOC07 mAP.

A detector (``prunecli.models.detection.Detector``) takes an image batch and, in training mode,
the targets, and returns its loss dict (torchvision's losses); in eval mode it returns boxes in
the pixels of its input. Evaluation maps those boxes back to each image's original size and
scores them against the dataset's ground truth in original coordinates, so the COCO area ranges
and the VOC devkit's rules mean what they mean in the papers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunecli.data.detection import collate_detection, detection_base
from prunecli.engine.distributed import all_reduce_sum, broadcast_object, gather_to_main
from prunecli.engine.precision import Precision
from prunecli.errors import ConfigError
from prunecli.metrics.types import ImageDetections
from prunecli.tasks.base import TASKS, Meter, Task

# (key, label in the log / tables); the first four may be the primary metric
DETECTION_METRICS = (("map", "mAP"), ("map50", "AP50"), ("map75", "AP75"),
                     ("voc07_map", "VOC07 mAP"), ("map_small", "AP small"),
                     ("map_medium", "AP medium"), ("map_large", "AP large"))


class _LossMeter(Meter):
    """Image-weighted means of the total loss and of each of the detector's loss terms."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: list[str] = []
        self.totals: Tensor | None = None  # loss, parts..., images

    def update(self, outputs: Any, targets: Any, loss: Tensor) -> None:
        parts: dict[str, Tensor] = outputs
        if self.totals is None:
            self.names = sorted(parts)
            self.totals = torch.zeros(len(self.names) + 2, dtype=torch.float64,
                                      device=self.device)
        n = float(len(targets))
        values = torch.stack([loss.detach().double(),
                              *[parts[k].detach().double() for k in self.names],
                              torch.ones((), dtype=torch.float64, device=loss.device)])
        self.totals += (values * n).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        if self.totals is None:
            return {}
        return {"names": list(self.names), "totals": self.totals.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("totals") is not None:
            self.names = list(state["names"])
            self.totals = state["totals"].to(self.device)

    def compute(self) -> dict[str, float]:
        if self.totals is None:
            return {"loss": math.nan}
        values = all_reduce_sum(self.totals).tolist()
        n = max(values[-1], 1.0)
        out = {"loss": values[0] / n}
        out.update({f"loss_{k}": v / n for k, v in zip(self.names, values[1:-1], strict=True)})
        return out


@TASKS.register("detection", "boxes and classes: the detector's losses, COCO and VOC07 mAP")
class DetectionTask(Task):
    name = "detection"
    metrics = ("map", "map50", "map75", "voc07_map")
    default_metric = "map"
    collate_fn = staticmethod(collate_detection)

    def to_device(self, batch: Any, device: torch.device,
                  memory_format: torch.memory_format) -> tuple[Tensor, list[dict[str, Any]]]:
        images, targets = batch
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        moved = [{k: (v.to(device, non_blocking=True) if k in ("boxes", "labels") else v)
                  for k, v in t.items()} for t in targets]
        return images, moved

    def check_model(self, model: nn.Module, model_name: str, data_name: str) -> None:
        from prunecli.models.detection import is_detector

        if not is_detector(model):
            raise ConfigError(f"data={data_name} is a detection dataset but model {model_name} is "
                              "not a detector; use model=ssd512_resnet50, ssd300_resnet50, "
                              "ssd_tiny or model=torchvision_det model.name=NAME")

    def loss(self, model: nn.Module, inputs: Tensor, targets: Any
             ) -> tuple[Tensor, dict[str, Tensor]]:
        parts: dict[str, Tensor] = model(inputs, targets)
        total = torch.stack([v.float() for v in parts.values()]).sum()
        return total, parts

    def class_logits(self, model: nn.Module, core_output: Any) -> tuple[Tensor, str]:
        """Per-box class scores (SSD: softmax over K + 1 with background; RetinaNet, FCOS:
        sigmoid per class; Faster R-CNN: the RPN's objectness)."""
        return model.class_logits(core_output)

    #: class-score distillation is off unless asked for: on the detection demo it cost mAP at
    #: every alpha tried, while box distillation helped
    #: (``benchmarks/results/detection_distill_boxes.md``)
    kd_alpha = 0.0
    has_boxes = True

    def box_regressions(self, model: nn.Module, core_output: Any) -> Tensor:
        """The detector's encoded box regressions in the standard offset units
        (:meth:`Detector.box_scale`): RetinaNet's and the RPN's (1, 1, 1, 1) encodings times
        (10, 10, 5, 5), SSD's as they are, FCOS's distances as they are."""
        boxes = model.box_regressions(core_output)
        scale = model.box_scale(boxes.device, boxes.dtype)
        return boxes if scale is None else boxes * scale

    def split_loss(self, model: nn.Module, loss: Tensor, outputs: Any
                   ) -> tuple[Tensor, Tensor | None]:
        """The losses of the distilled scores (the detector's ``class_loss_keys``) and the rest
        (box regression, centerness, the ROI heads), which distillation leaves at full weight."""
        keys = set(model.class_loss_keys)
        if not keys <= outputs.keys():
            raise ConfigError(f"distillation: the detector's losses {sorted(outputs)} lack "
                              f"{sorted(keys - outputs.keys())}; its adapter names the wrong "
                              "class_loss_keys")
        supervised = torch.stack([v.float() for k, v in outputs.items() if k in keys]).sum()
        others = [v.float() for k, v in outputs.items() if k not in keys]
        return supervised, torch.stack(others).sum() if others else None

    def train_meter(self, device: torch.device) -> Meter:
        return _LossMeter(device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device,
                 precision: Precision, channels_last: bool = False,
                 limit: int | None = None, per_class: bool = False) -> dict[str, float]:
        """COCO metrics and VOC07 mAP of every image the loaders of all ranks cover (each image
        once), scored on rank 0 and sent to every rank."""
        was_training = model.training
        model.eval()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        detections: list[ImageDetections] = []
        for i, (images, targets) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
            with precision.autocast():
                outputs = model(images)
            detections += to_original_size(outputs, targets, images.shape[-2:])
        model.train(was_training)
        gathered = gather_to_main(detections)
        metrics: dict[str, float] | None = None
        if gathered is not None:
            # a DistributedSampler pads the last round with repeated images: score each once
            unique = {d.image_id: d for part in reversed(gathered) for d in part}  # type: ignore
            everything = list(unique.values())
            metrics = self.score(loader.dataset, everything,  # type: ignore[attr-defined]
                                 per_class=per_class)
        return broadcast_object(metrics)  # type: ignore[return-value]

    def score(self, dataset: Any, detections: list[ImageDetections],
              per_class: bool = False) -> dict[str, Any]:
        """The metrics of ``detections`` against the ground truth of the images they cover
        (``per_class``: also each class's AP, AP50, VOC07 AP and object count)."""
        from prunecli.metrics import coco_metrics, voc07_map

        base, _ = detection_base(dataset)
        ids = sorted({d.image_id for d in detections})
        truth = [base.ground_truth(i) for i in ids]
        table: dict[str, dict[str, float]] | None = {} if per_class else None
        metrics: dict[str, Any] = coco_metrics(truth, detections, base.class_names,
                                               per_class=table)
        voc = voc07_map(truth, detections, len(base.class_names))
        metrics["voc07_map"] = voc["voc07_map"]
        metrics["images"] = len(ids)
        if table is not None:
            labels = np.concatenate([t.labels[~t.ignore] for t in truth] or [np.zeros(0, int)])
            for k, name in enumerate(base.class_names):
                table[name].update({"VOC07 AP": voc["ap_per_class"][k + 1],
                                    "objects": int((labels == k + 1).sum())})
            metrics["per_class"] = table
        return metrics

    def describe(self, metrics: dict[str, float]) -> str:
        if "map" not in metrics:
            return f"loss {metrics['loss']:.4f}" if "loss" in metrics else "no eval"
        shown = [k for k in ("map", "map50", "voc07_map") if k in metrics]
        return " ".join(f"{dict(DETECTION_METRICS)[k]} {metrics[k]:.2f}" for k in shown)


def to_original_size(outputs: list[dict[str, Tensor]], targets: list[dict[str, Any]],
                     input_hw: Any) -> list[ImageDetections]:
    """Detections in the pixels of each image's original size (the input was resized to
    ``input_hw`` without keeping the aspect ratio, so x and y scale separately)."""
    in_h, in_w = (int(v) for v in input_hw)
    found = []
    for out, target in zip(outputs, targets, strict=True):
        h, w = (int(v) for v in target["orig_size"])
        scale = torch.tensor([w / in_w, h / in_h, w / in_w, h / in_h])
        boxes = out["boxes"].detach().float().cpu() * scale
        found.append(ImageDetections(int(target["image_id"]), boxes.numpy(),
                                     out["scores"].detach().float().cpu().numpy(),
                                     out["labels"].detach().cpu().numpy()))
    return found
