"""torchvision's detectors by name (model source ``torchvision_det``), wrapped as Detectors.

Built with ``weights=None, weights_backbone=None`` and ``num_classes = K + 1`` (torchvision's
convention, 91 for COCO's 80 classes); pretrained COCO weights are then loaded where shapes
match. Building without torchvision's weights matters twice: torchvision swaps BatchNorm for
FrozenBatchNorm2d whenever it is given weights (frozen statistics cannot be trained, and the
pruning tools of other projects fail on them), and it freezes early backbone stages. Here every
norm is a real BatchNorm2d and every layer trains, unless ``trainable_backbone_layers`` asks for
torchvision's freezing.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from prunecli.errors import CheckpointError, ConfigError, PrunecliError, UnknownNameError
from prunecli.models.detection.base import Detector
from prunecli.models.registry import close_matches_hint, construct, one_line

#: builders whose model this package can wrap (Mask/Keypoint R-CNN add heads it does not run)
FAMILIES = ("ssd", "retinanet", "fcos", "fasterrcnn")
#: torchvision's R-CNNs with a head beyond boxes: named in their error with the box-only builder
NOT_BOXES = {"maskrcnn": "instance masks", "keypointrcnn": "keypoints"}
#: native square input sizes; FPN models take any multiple of 32 (see DEFAULT_FPN_SIZE)
NATIVE_SIZES = {
    "ssd300_vgg16": 300,
    "ssdlite320_mobilenet_v3_large": 320,
    "fasterrcnn_mobilenet_v3_large_320_fpn": 320,
}
#: the documented default for the FPN models (torchvision resizes to 800-1333; users set
#: data.image_size, a multiple of 32)
DEFAULT_FPN_SIZE = 512
_SET_BY_PRUNECLI = ("weights", "weights_backbone", "num_classes", "pretrained")


def torchvision_det_names() -> list[str]:
    """The torchvision detection builders prunecli can wrap."""
    import torchvision.models

    names = torchvision.models.list_models(module=torchvision.models.detection)
    return sorted(n for n in names if n.startswith(FAMILIES))


def check_name(name: str) -> str:
    """The builder name (lower case), or a one-line :class:`UnknownNameError` with a hint."""
    names = torchvision_det_names()
    key = name.lower()
    extra = next((k for k in NOT_BOXES if key.startswith(k)), None)
    if extra is not None:
        boxes = "fasterrcnn" + key.removeprefix(extra)
        instead = boxes if boxes in names else "fasterrcnn_resnet50_fpn"
        raise UnknownNameError(
            f"torchvision's {name} also predicts {NOT_BOXES[extra]}, and prunecli's detection "
            f"task trains, prunes and evaluates boxes only (that head would stay untrained): use "
            f"model.name={instead}, the same backbone, FPN, RPN and box heads")
    if key not in names:
        raise UnknownNameError(
            f"unknown torchvision detection model '{name}'.{close_matches_hint(key, names)} "
            f"Supported: {', '.join(names)}."
        )
    return key


def native_size(name: str) -> int | None:
    """The native input size of builder ``name`` (None for a name that is no detector)."""
    key = name.lower()
    return NATIVE_SIZES.get(key, DEFAULT_FPN_SIZE if key.endswith("_fpn") else None)


# --------------------------------------------------------------------------- building


def _trainable_layers(is_trained: bool, value: int | None, max_value: int, default: int) -> int:
    """torchvision's ``_validate_trainable_layers`` without its "no weights, so train all"
    override: all layers unless the user asked for fewer."""
    value = max_value if value is None else value
    if not 0 <= value <= max_value:
        raise ValueError(f"trainable_backbone_layers must be in [0, {max_value}], got {value}")
    return value


def _check_kwargs(what: str, key: str, builder: Any, kwargs: Mapping[str, Any]) -> None:
    """torchvision's detection transform swallows unknown keyword arguments, so a typo in
    model.kwargs would silently do nothing: accept only what the builder, the detector class
    or its transform (or SSDlite's MobileNetV3) take."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.models.mobilenetv3 import _mobilenet_v3_conf

    family = {"ssd": SSD, "ssdlite": SSD, "retinanet": RetinaNet, "fcos": FCOS,
              "fasterrcnn": FasterRCNN}[key.split("_")[0].rstrip("0123456789")]  # fmt: skip
    takers = [builder, family.__init__, GeneralizedRCNNTransform.__init__]
    if key.startswith("ssdlite"):
        takers.append(_mobilenet_v3_conf)
    accepted = {
        name
        for fn in takers
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"
    } - set(_SET_BY_PRUNECLI) - {"progress", "backbone", "anchor_generator", "head", "size", "arch"}
    bad = sorted(k for k in kwargs if k not in accepted)
    if bad:
        raise ConfigError(
            f"{what} got an unknown argument '{bad[0]}' in model.kwargs; it accepts: "
            f"{', '.join(sorted(accepted))}."
        )


def unfreeze_batchnorm(module: nn.Module) -> int:
    """Replace every FrozenBatchNorm2d by an ``nn.BatchNorm2d`` carrying its weight, bias,
    running statistics and eps (in place); returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, FrozenBatchNorm2d):
            bn = nn.BatchNorm2d(child.weight.numel(), eps=child.eps)
            bn = bn.to(device=child.weight.device, dtype=child.weight.dtype).train(child.training)
            with torch.no_grad():
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, attr).copy_(getattr(child, attr))
            setattr(module, name, bn)
            count += 1
        else:
            count += unfreeze_batchnorm(child)
    return count


def wrap(net: nn.Module, *, num_classes: int, input_size: int) -> Detector:
    """The adapter for a torchvision detection model, by its class."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    from prunecli.models.detection.dense import FCOSDetector, RetinaNetDetector
    from prunecli.models.detection.rcnn import FasterRCNNDetector
    from prunecli.models.detection.ssd import SSDDetector

    adapters: list[tuple[type, type[Detector]]] = [
        (SSD, SSDDetector), (RetinaNet, RetinaNetDetector), (FCOS, FCOSDetector),
        (FasterRCNN, FasterRCNNDetector),
    ]  # fmt: skip
    for cls, adapter in adapters:
        if isinstance(net, cls):
            return adapter(net, num_classes=num_classes, input_size=input_size)
    raise ConfigError(f"no detector adapter for {type(net).__name__}")


def build_torchvision_detector(
    name: str, *, num_classes: int, in_chans: int = 3, kwargs: Mapping[str, Any] | None = None
) -> Detector:
    """torchvision detector ``name`` for ``num_classes`` object classes, untrained, all real
    BatchNorm; ``kwargs`` go to torchvision's builder (``score_thresh``, ``trainable_backbone_
    layers``, ``min_size`` for its own transform, ...)."""
    import torchvision.models

    key = check_name(name)
    what = f"torchvision detection model '{name}'"
    if in_chans != 3:
        raise ConfigError(f"{what} takes RGB images; set data.channels=3 (got {in_chans}).")
    kwargs = dict(kwargs or {})
    for arg in _SET_BY_PRUNECLI:
        if arg in kwargs:
            raise ConfigError(
                f"{what}: '{arg}' is set by prunecli; remove model.kwargs.{arg} (use "
                "model.pretrained / model.weights for weights)."
            )
    builder = torchvision.models.get_model_builder(key)
    _check_kwargs(what, key, builder, kwargs)
    # torchvision freezes early stages only when given weights, and we never give it any (they
    # come with FrozenBatchNorm2d): its validator is swapped for the build, so all layers train
    # unless model.kwargs.trainable_backbone_layers says otherwise
    module = sys.modules[builder.__module__]
    patch = (
        mock.patch.object(module, "_validate_trainable_layers", _trainable_layers)
        if hasattr(module, "_validate_trainable_layers")
        else contextlib.nullcontext()
    )
    with patch:
        net = construct(
            what,
            lambda: builder(
                weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs
            ),
        )
    unfreeze_batchnorm(net)
    return wrap(net, num_classes=num_classes, input_size=native_size(key) or DEFAULT_FPN_SIZE)


# --------------------------------------------------------------------------- pretrained weights


def coco_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's COCO weights for detector ``name``, downloaded into the torch hub cache
    (a failed download is a one-line error naming model.weights=FILE)."""
    import torchvision.models

    from prunecli.models.external import _prefetch

    weights = torchvision.models.get_model_weights(check_name(name)).DEFAULT
    _prefetch(weights.url, name)
    try:
        return dict(weights.get_state_dict(progress=False, check_hash=True))
    except (RuntimeError, OSError) as exc:  # a cached file torch cannot read
        raise PrunecliError(
            f"pretrained weights for torchvision detection model '{name}' could not be loaded "
            f"({one_line(exc, 120)}); delete the cached file under {torch.hub.get_dir()}"
            "/checkpoints or pass model.weights=FILE."
        ) from exc


def load_matching(
    det: Detector, state: Mapping[str, torch.Tensor], path: str | Path = "<pretrained>"
) -> list[str]:
    """Load a torchvision detection state_dict (keys as in ``det.net``; a Detector's own
    ``net.`` keys are accepted too) where shapes match; returns the keys left fresh.

    Only the class layers (:meth:`Detector.class_layers`) may differ in shape, and only they and
    BatchNorm's ``num_batches_tracked`` (absent from FrozenBatchNorm2d weights) may be missing:
    anything else means weights of another architecture, a one-line :class:`CheckpointError`.
    torchvision's version hooks still run, so older RetinaNet/RPN key layouts load too.
    """
    state = dict(state)
    if state and all(k.startswith("net.") for k in state):
        state = {k[len("net.") :]: v for k, v in state.items()}
    own = det.net.state_dict()
    class_prefixes = tuple(p[len("net.") :] + "." for p in det.class_layers())
    fresh = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    wrong = [k for k in fresh if not k.startswith(class_prefixes)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"model weights '{path}' do not fit the detector: '{k}' has shape "
            f"{tuple(state[k].shape)} in the file but {tuple(own[k].shape)} in the model; were "
            "they saved from another model or model.kwargs?"
        )
    for k in fresh:
        del state[k]
    try:
        result = det.net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes only known after torchvision's key conversions
        raise CheckpointError(f"could not load model weights '{path}': {one_line(exc)}") from exc
    missing = [
        k for k in result.missing_keys if not k.endswith("num_batches_tracked") and k not in fresh
    ]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        parts = [f"{len(missing)} missing key(s): {', '.join(missing[:5])}"] if missing else []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:5])}")
        raise CheckpointError(
            f"model weights '{path}' do not match the detector ({'; '.join(parts)}); were they "
            "saved from another model?"
        )
    return fresh


def load_pretrained(det: Detector, name: str, weights: str | Path | None) -> None:
    """``model.pretrained=true``: torchvision's COCO weights, or the local file ``weights``
    (a torchvision detection state_dict), with class layers for another class count fresh."""
    if weights is None:
        load_matching(det, coco_state_dict(name), f"torchvision COCO weights of {name}")
        return
    from prunecli.models.weights import _read, extract_state_dict

    load_matching(det, extract_state_dict(_read(weights), weights), weights)
