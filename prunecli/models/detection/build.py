"""Building detectors from a model config: what ``build_model`` hands detection models to.

Detectors differ from classifiers in what ``model.pretrained`` means: torchvision's COCO weights
for ``torchvision_det`` models, an ImageNet ResNet-50 trunk for prunecli's ResNet-50 SSDs. In both
cases a local ``model.weights=FILE`` with ``pretrained=true`` stands for those weights (no
download); without ``pretrained`` the file is the detector's own state_dict, loaded exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from prunecli.config.schema import ModelConfig
from prunecli.errors import CheckpointError, ConfigError
from prunecli.models.detection.base import Detector
from prunecli.models.registry import MODELS, _as_config, _build_prunecli
from prunecli.models.weights import _read, extract_state_dict, load_weights


def is_detector_config(cfg: ModelConfig) -> bool:
    """Whether ``cfg`` names a detection model (source ``torchvision_det`` or a prunecli
    detection family)."""
    if cfg.source == "torchvision_det":
        return True
    return (
        cfg.source == "prunecli"
        and cfg.name in MODELS
        and bool(getattr(MODELS.get(cfg.name), "is_detector", False))
    )


def build_detector(cfg: ModelConfig, *, num_classes: int, in_chans: int = 3) -> Detector:
    """The detector ``cfg`` names, for ``num_classes`` object classes (labels 1..K)."""
    from prunecli.models.detection import torchvision_det

    kwargs = dict(cfg.kwargs or {})
    if cfg.source == "torchvision_det":
        det = torchvision_det.build_torchvision_detector(
            cfg.name, num_classes=num_classes, in_chans=in_chans, kwargs=kwargs
        )
        if cfg.pretrained:
            torchvision_det.load_pretrained(det, cfg.name, cfg.weights)
        elif cfg.weights:
            _load_own(det, cfg.weights)
        return det
    factory = MODELS.get(cfg.name)
    det = _build_prunecli(cfg.name, num_classes, in_chans, kwargs)  # type: ignore[assignment]
    if cfg.pretrained:
        loader = getattr(factory, "load_pretrained", None)
        if loader is None:
            raise ConfigError(
                f"prunecli model '{cfg.name}' has no pretrained weights; pass its own weights "
                "with model.weights=FILE (without model.pretrained) or set model.pretrained=false."
            )
        loader(det, cfg.weights)
    elif cfg.weights:
        load_weights(det, cfg.weights)
    return det


def _load_own(det: Detector, path: str) -> None:
    """This detector's own weights (``net.*`` keys), exactly; a plain torchvision detection
    state_dict fails with a hint to add ``model.pretrained=true``."""
    try:
        load_weights(det, path)
    except CheckpointError as exc:
        try:
            keys = list(extract_state_dict(_read(path), path))
        except CheckpointError:
            raise exc from None
        own = det.state_dict()
        if keys and not any(k.startswith("net.") for k in keys) and f"net.{keys[0]}" in own:
            raise CheckpointError(
                f"model weights '{path}' hold a torchvision detection state_dict (keys without "
                "'net.'), not a prunecli detector's; add model.pretrained=true to load them "
                "where shapes match."
            ) from exc
        raise


def native_input_size(model_cfg: ModelConfig | Mapping[str, Any]) -> int | None:
    """The square input size ``S`` a detection config is built for (no model is built), or
    None for a classifier. FPN models take any multiple of 32; 512 is their documented
    default (set ``data.image_size`` to change it)."""
    cfg = _as_config(model_cfg)
    if cfg.source == "torchvision_det":
        from prunecli.models.detection.torchvision_det import native_size

        return native_size(cfg.name)
    if not is_detector_config(cfg):
        return None
    factory = MODELS.get(cfg.name)
    size = inspect.signature(factory).parameters.get("size")
    if size is not None:
        return int((cfg.kwargs or {}).get("size", size.default))
    return int(factory.input_size)  # type: ignore[attr-defined]
