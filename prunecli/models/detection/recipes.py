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

The recipes also warm the rate up (NVIDIA 300 iterations, torchvision's references up to 1000 in
the first epoch, SMCP 50 of 800 epochs), which keeps the freshly initialised heads from taking a
full-rate step on their first, largest losses. A run that sets neither ``optim.lr`` nor
``optim.warmup_epochs`` gets that warm-up too (:func:`published_warmup`), capped at one epoch as
torchvision does and at 5% of the run, so a short run on a few images (the case above, where a
warm-up epoch cost mAP) is hardly slowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: how far above the published rate per image a run may go before the warning
TOLERANCE = 4.0
#: the share of a run the recipe's warm-up may take at most when it is filled in
WARMUP_SHARE = 0.05


@dataclass(frozen=True)
class Recipe:
    """SGD ``lr`` for a global batch of ``images``, as ``source`` trains the model, after a
    linear warm-up of ``warmup_steps`` optimizer steps."""

    lr: float
    images: int
    source: str
    warmup_steps: int = 0
    experiment: str | None = None

    def per_image(self) -> float:
        return self.lr / self.images


PRUNECLI_RECIPES = {
    "ssd300_resnet50": Recipe(2.6e-3, 32, "NVIDIA's SSD300 v1.1", 300, "ssd300_resnet50_coco"),
    # 50 epochs of VOC07+12 at 128 images (129 steps each); always capped at one epoch here
    "ssd512_resnet50": Recipe(8e-3, 128, "SMCP's SSD512", 50 * 129, "ssd512_resnet50_voc"),
}
#: torchvision's detection references (references/detection: 8 GPUs x 2 images unless noted)
TORCHVISION_RECIPES = {
    "fasterrcnn": Recipe(0.02, 16, "torchvision's reference", 1000),
    "retinanet": Recipe(0.01, 16, "torchvision's reference", 1000),
    "fcos": Recipe(0.01, 16, "torchvision's reference", 1000),
    "ssd300_vgg16": Recipe(2e-3, 32, "torchvision's reference", 1000),
    "ssdlite": Recipe(0.15, 192, "torchvision's reference", 1000),
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


def published_warmup(model_cfg: Any, steps_per_epoch: int, total_steps: int
                     ) -> tuple[int, str] | None:
    """The recipe's warm-up in optimizer steps, at most one epoch (``steps_per_epoch``) and
    :data:`WARMUP_SHARE` of the run (``total_steps``), with the text that says so; None for
    models without a recipe and runs too short for two steps of it."""
    recipe = recipe_of(model_cfg)
    if recipe is None:
        return None
    steps = min(recipe.warmup_steps, steps_per_epoch, round(WARMUP_SHARE * total_steps))
    if steps < 2:
        return None
    return steps, (f"a linear warm-up over the first {steps} steps ({recipe.source} warms up "
                   f"over {recipe.warmup_steps}; here at most one epoch and "
                   f"{WARMUP_SHARE:.0%} of the run; set optim.warmup_epochs to choose another)")


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
