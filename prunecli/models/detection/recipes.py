"""The learning rates detectors are published with: the default for a run that sets none, and
the yardstick for a warning when a run sets one far above it.

SGD's rate for classifiers (and the embedded demo) is 0.1 per batch. SSD300-ResNet-50 from
scratch on 60 images at batch 8, three epochs: at lr 0.1 the training loss went 610 -> 3,400
(mAP 0); at 0.01 with a warm-up epoch 38 -> 108 -> 51 (mAP 0.24 -> 0.00 -> 0.02); at NVIDIA's
rate for that batch (6.5e-4) 21 -> 22 -> 16 (mAP 0.06 -> 0.15 -> 0.25) with a warm-up epoch and
19 -> 17 -> 13 (mAP 0.05 -> 0.19 -> 2.88) without; at 2e-3 (3x) with warm-up 21 -> 29 -> 25
(mAP 0.06 -> 0.52 -> 0.41). So a detector with a published recipe trains, when ``optim.lr`` is
not set, at that recipe's rate per image times the run's global batch (:func:`published_lr`); a
rate the user sets is kept, and :func:`lr_warning` says when it is far above the published one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: how far above the published rate per image a run may go before the warning
TOLERANCE = 4.0


@dataclass(frozen=True)
class Recipe:
    """SGD ``lr`` for a global batch of ``images``, as ``source`` trains the model."""

    lr: float
    images: int
    source: str
    experiment: str | None = None

    def per_image(self) -> float:
        return self.lr / self.images


PRUNECLI_RECIPES = {
    "ssd300_resnet50": Recipe(2.6e-3, 32, "NVIDIA's SSD300 v1.1", "ssd300_resnet50_coco"),
    "ssd512_resnet50": Recipe(8e-3, 128, "SMCP's SSD512", "ssd512_resnet50_voc"),
}
#: torchvision's detection references (references/detection: 8 GPUs x 2 images unless noted)
TORCHVISION_RECIPES = {
    "fasterrcnn": Recipe(0.02, 16, "torchvision's reference"),
    "retinanet": Recipe(0.01, 16, "torchvision's reference"),
    "fcos": Recipe(0.01, 16, "torchvision's reference"),
    "ssd300_vgg16": Recipe(2e-3, 32, "torchvision's reference"),
    "ssdlite": Recipe(0.15, 192, "torchvision's reference"),
}


def recipe_of(model_cfg: Any) -> Recipe | None:
    """The published recipe of a detector config, or None (classifiers, ``ssd_tiny``)."""
    source, name = str(model_cfg.get("source", "")), str(model_cfg.get("name", "")).lower()
    if source == "torchvision_det":
        return next((r for prefix, r in TORCHVISION_RECIPES.items() if name.startswith(prefix)),
                    None)
    return PRUNECLI_RECIPES.get(name)


def published_lr(model_cfg: Any, optim_name: str, global_batch: int) -> tuple[float, str] | None:
    """SGD's rate for ``global_batch`` images at the model's published rate per image, with the
    line that says so; None for other optimisers and for models without a recipe."""
    recipe = recipe_of(model_cfg)
    if recipe is None or optim_name != "sgd" or global_batch < 1:
        return None
    lr = recipe.per_image() * global_batch
    return lr, (f"optim.lr not set: {lr:.3g} for {model_cfg.get('name')} ({recipe.source}: "
                f"{recipe.lr:g} per {recipe.images} images, scaled to the global batch of "
                f"{global_batch}; set optim.lr to choose another)")


def lr_warning(model_cfg: Any, optim_cfg: Any, global_batch: int) -> str | None:
    """A warning when SGD's ``optim.lr`` for ``global_batch`` images is more than
    :data:`TOLERANCE` times the model's published rate per image, else None."""
    recipe = recipe_of(model_cfg)
    if recipe is None or optim_cfg.get("name") != "sgd" or global_batch < 1:
        return None
    lr = float(optim_cfg.get("lr"))
    ratio = lr / global_batch / recipe.per_image()
    if ratio <= TOLERANCE:
        return None
    scaled = recipe.per_image() * global_batch
    warmup = "" if optim_cfg.get("warmup_epochs") else " optim.warmup_epochs=1"
    start = (f" (experiment={recipe.experiment} holds the whole recipe, its lr for the batch "
             "it names)" if recipe.experiment else "")
    return (f"optim.lr={lr:g} for {global_batch} images is {ratio:.0f}x the rate "
            f"{model_cfg.get('name')} is published with ({recipe.source}: {recipe.lr:g} per "
            f"{recipe.images} images); a detector usually diverges there: set "
            f"optim.lr={scaled:.2g}{warmup}{start}")
