"""The :class:`Detector` every prunecli detection model is: torchvision's detector plus a core.

Why a wrapper rather than torchvision's model itself: pruning needs one plain tensor function to
trace (torch.fx cannot follow box matching, NMS or per-image loops), and training needs the
batch to stay one tensor (torchvision's ``GeneralizedRCNNTransform`` re-batches every image into a
new tensor, losing ``channels_last``, and would resize images the data pipeline already sized).

So a detector has two views of the same modules:

- ``net``: the torchvision detection model (``SSD``, ``RetinaNet``, ``FCOS``, ``FasterRCNN``), the
  only registered child, so state_dict keys are torchvision's own under ``net.``;
- ``core``: an unregistered module from the *normalised* image batch to the raw per-level head
  conv outputs, as a flat tuple of tensors. Its children are the very module objects inside
  ``net`` (backbone, head containers), so masks put on core's modules act in the detector and
  slimming, which edits or replaces leaves inside those shared containers, changes both. The
  final class/box convs are graph outputs, so the tracer never prunes their output channels, and
  no permute/reshape of the head outputs is inside the traced graph.

``forward`` normalises (each detector's own mean/std: torchvision's pretrained SSD300-VGG16 works
on 0-255 pixel values), runs ``core`` and hands the maps to torchvision's own parts: flattening to
torchvision's ``(N, sum HWA, C)`` layout, its anchor generators, ``compute_loss`` and
``postprocess_detections``. Nothing here matches, encodes or suppresses boxes by hand.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # torchvision's import costs ~1.5 s: only when a detector runs
    from torchvision.models.detection.image_list import ImageList

Target = dict[str, Tensor]
Detections = list[dict[str, Tensor]]

#: The units box distillation compares regressions in: centre offsets in tenths and log-sizes in
#: fifths of the anchor, the (10, 10, 5, 5) weights of SSD's and the ROI heads' box coders.
STANDARD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class DetectorCore(nn.Module, ABC):
    """Normalised images -> flat tuple of per-level head maps (see the module docstring).

    Subclasses set ``output_names`` (one name per output) and ``final_convs`` (core-relative
    names of the convs whose outputs are the core's outputs). Every child must be a container
    shared with ``net`` -- never a bare leaf -- so that replacing a leaf (slimming a dropped
    group) happens inside a container both views hold.
    """

    output_names: tuple[str, ...] = ()
    final_convs: tuple[str, ...] = ()

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        ...


def flatten_levels(maps: Sequence[Tensor], columns: int) -> Tensor:
    """Per-level ``(N, A*C, H, W)`` maps -> ``(N, sum HWA, C)``, exactly as torchvision's heads
    lay out their outputs (``SSDScoringHead``, ``RetinaNet*Head``, ``FCOS*Head``)."""
    out = []
    for m in maps:
        n, _, h, w = m.shape
        out.append(m.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, columns))
    return torch.cat(out, dim=1)


def last_conv(module: nn.Module, prefix: str) -> str:
    """Qualified name of the last Conv2d in ``module`` (``prefix`` + its path)."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError(f"{prefix} holds no Conv2d")
    return f"{prefix}.{names[-1]}" if names[-1] else prefix


class Detector(nn.Module, ABC):
    """A detector on ``N x 3 x H x W`` batches in [0, 1] (``H = W = input_size`` natively).

    Training mode: ``forward(images, targets)`` returns torchvision's loss dict. Eval mode:
    ``forward(images)`` returns one dict per image with ``boxes`` (xyxy pixels of the input),
    ``scores`` and ``labels`` (1..K). ``num_classes`` is K, the object classes; the background
    class torchvision adds is inside ``net``.

    Pruning works on ``core``: ``trace_structure(det.core, det.normalise(images))``; masks
    (``ChannelMasker(det.core, ...)``) act in the detector. To slim, slim the core of a copy in
    place -- ``small = copy.deepcopy(det); slim(small.core, structure, keep, inplace=True)`` --
    since ``slim(det.core, ...)`` without ``inplace`` returns a core detached from any ``net``.
    """

    #: the training losses (keys of torchvision's loss dict) that supervise the scores
    #: ``class_logits`` returns: distillation shares their weight and leaves the others whole
    class_loss_keys: tuple[str, ...] = ("classification",)

    #: spatial sizes must be a multiple of this (torchvision pads FPN models' batches to 32,
    #: so anchors strides come out whole; we never pad, so we require it instead)
    size_divisible: int = 1

    def __init__(self, net: nn.Module, *, num_classes: int, input_size: int) -> None:
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)
        self.input_size = int(input_size)
        transform = net.transform  # every torchvision detector carries its mean/std here
        self.register_buffer("mean", _channel_vector(transform.image_mean), persistent=False)
        self.register_buffer("std", _channel_vector(transform.image_std), persistent=False)
        # not a registered child: no duplicate state_dict keys, no double .to()/.train()
        object.__setattr__(self, "_core", self.build_core(net))

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def build_core(self, net: nn.Module) -> DetectorCore:
        ...

    @abstractmethod
    def detect(
        self, image_list: ImageList, maps: tuple[Tensor, ...], targets: list[Target] | None
    ) -> dict[str, Tensor] | Detections:
        """Losses (training) or detections (eval) from the core's outputs."""
        ...

    @abstractmethod
    def class_layers(self) -> tuple[str, ...]:
        """Detector-relative names of the modules whose shapes depend on the class count: the
        layers pretrained weights for another class count leave freshly initialised."""
        ...

    @abstractmethod
    def class_logits(self, maps: tuple[Tensor, ...]) -> tuple[Tensor, str]:
        """The class scores among the core's outputs as ``(N, boxes, columns)`` logits, and how
        they become probabilities: ``"softmax"`` over the columns or ``"sigmoid"`` per column.
        What distillation matches between a teacher and a student."""
        ...

    @abstractmethod
    def box_regressions(self, maps: tuple[Tensor, ...]) -> Tensor:
        """The box regressions among the core's outputs as ``(N, boxes, 4)``, in the order of
        :meth:`class_logits`' boxes and encoded as the detector's box coder encodes its
        targets: what box distillation matches on the boxes the teacher holds for objects."""
        ...

    def box_coder(self) -> Any:
        """The torchvision box coder that encodes :meth:`box_regressions` (None: unknown)."""
        return None

    def box_scale(self, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> Tensor | None:
        """Per-coordinate factors from this detector's box encoding to
        :data:`STANDARD_BOX_WEIGHTS`' units (None: already in them, or not a weighted
        ``BoxCoder``, as FCOS's distances). RetinaNet and the RPN encode with weights (1, 1, 1, 1),
        so their offsets are 5-10x smaller than SSD's for the same boxes; scaled, one
        ``distill.box_weight`` means the same for every detector. Kept per device and dtype, so
        the distiller's every step copies nothing to the accelerator."""
        cache = self.__dict__.setdefault("_box_scales", {})
        key = (str(device), dtype)
        if key not in cache:
            weights = getattr(self.box_coder(), "weights", None)
            scale = None if weights is None else (
                torch.tensor(STANDARD_BOX_WEIGHTS) / torch.tensor(weights, dtype=torch.float32))
            cache[key] = None if scale is None or bool((scale == 1).all()) else \
                scale.to(device, dtype)
        return cache[key]

    # ------------------------------------------------------------------ common
    @property
    def core(self) -> DetectorCore:
        return self._core

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        self._core.training = mode  # its children are net's, already switched
        return self

    def model_name(self, core_name: str) -> str:
        """The detector-relative name of a core-relative module, parameter or buffer name
        (``"backbone.body.conv1.weight"`` -> ``"net.backbone.body.conv1.weight"``): how a
        channel structure traced on the core maps onto the detector's state_dict."""
        owners = {id(m): n for n, m in self.named_modules()}
        module, _, attr = core_name.rpartition(".")
        for path, tail in ((core_name, ""), (module, attr)):
            try:
                target = self._core.get_submodule(path) if path else self._core
            except AttributeError:
                continue
            if id(target) in owners and (not tail or hasattr(target, tail)):
                return ".".join(x for x in (owners[id(target)], tail) if x)
        raise KeyError(f"{core_name!r} names nothing in {type(self).__name__}.core")

    def normalise(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: list[Target] | None = None
    ) -> dict[str, Tensor] | Detections:
        if not isinstance(images, Tensor):  # a list of equal-size images, torchvision style
            images = torch.stack(list(images))
        if images.dim() != 4:
            raise ValueError(f"expected an N x C x H x W batch, got shape {tuple(images.shape)}")
        n, _, h, w = images.shape
        if h % self.size_divisible or w % self.size_divisible:
            raise ValueError(
                f"{type(self).__name__} needs image sides divisible by {self.size_divisible} "
                f"(set data.image_size), got {h}x{w}"
            )
        if self.training and (targets is None or len(targets) != n):
            raise ValueError("training mode needs one target dict per image")
        from torchvision.models.detection.image_list import ImageList

        x = self.normalise(images)
        # box math (anchors, decoding, losses) in float32 even under fp16/bf16 autocast: bf16
        # anchors would be off by pixels at 512 px; a no-op for float32 maps
        maps = tuple(m.float() for m in self.core(x))
        return self.detect(ImageList(x, [(h, w)] * n), maps, targets if self.training else None)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, input_size={self.input_size}"


def _channel_vector(values: Sequence[float]) -> Tensor:
    return torch.tensor([float(v) for v in values]).view(1, -1, 1, 1)


def is_detector(model: Any) -> bool:
    """Whether ``model`` is a prunecli :class:`Detector`."""
    return isinstance(model, Detector)


def core_of(model: nn.Module) -> nn.Module:
    """What pruning traces: a detector's core, or the model itself for a classifier."""
    return model.core if isinstance(model, Detector) else model


def core_input(model: nn.Module, images: Tensor) -> Tensor:
    """What ``core_of(model)`` takes for an image batch: a detector's normalised images, the
    images themselves for a classifier."""
    return model.normalise(images) if isinstance(model, Detector) else images


def names_in_core(model: nn.Module) -> dict[str, str]:
    """``{name in model: name in core_of(model)}`` for the core's modules: a detector's state_dict
    names its layers from the detector (``net.backbone...``), its structure from the core."""
    core = core_of(model)
    if core is model:
        return {n: n for n, _ in model.named_modules()}
    inside = {id(m): n for n, m in core.named_modules()}
    return {n: inside[id(m)] for n, m in model.named_modules() if id(m) in inside}
