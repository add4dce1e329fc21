"""torchvision.transforms.v2 pipelines for detection samples: ``(Image, {"boxes", "labels"})``.

The image is a ``tv_tensors.Image`` (uint8 ``3 x H x W``), the boxes ``tv_tensors.BoundingBoxes``
in XYXY pixels; v2 moves boxes with every geometric op, so no box code is written by hand here.
The training pipeline is SSD's (Liu et al. 2016, as in torchvision's detection references):
photometric distortion, zoom-out, IoU crop, flip, resize. Everything before the final
``ToDtype`` runs on uint8, which is several times cheaper than float for the zoom-out canvas
(up to 4 x 4 times the image) and for the antialiased resize.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from prunecli.data.transforms import IMAGENET_MEAN

# the zoom-out canvas is filled with the ImageNet mean, as in SSD, so the padding normalises to ~0
ZOOM_OUT_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104)


class SafeRandomIoUCrop(v2.RandomIoUCrop):
    """``RandomIoUCrop`` that leaves an image without boxes as it is, at once.

    torchvision's version looks for a crop holding the centre of some box; with no box no trial
    succeeds, so it loops until it happens to draw its "keep the whole image" option (about 18 ms
    per sample here, against ~1 ms normally) and returns the image uncropped anyway. Images
    without (non-ignored) boxes are real: a VOC image whose objects are all ``difficult``, or one
    where an earlier op removed them.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = [x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes)]
        if boxes and boxes[0].numel() == 0:
            return {}  # the parent's "leave as is" parameters
        return super().make_params(flat_inputs)


def train_transform(size: int, *, augment: bool = True, hflip: bool = True) -> v2.Compose:
    """SSD's training augmentation, ending in a ``size x size`` float32 image in [0, 1].

    ``SanitizeBoundingBoxes`` drops the boxes the crop pushed out (IoU crop marks them
    degenerate) and those resized below one pixel, with their labels; a sample may end up with
    no boxes, which torchvision's detectors accept (all anchors are background).
    """
    resize_and_scale = [v2.Resize((size, size)), v2.ToDtype(torch.float32, scale=True)]
    if not augment:
        return v2.Compose(resize_and_scale)
    ops: list[v2.Transform] = [
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill={tv_tensors.Image: ZOOM_OUT_FILL, "others": 0},
                         side_range=(1.0, 4.0), p=0.5),
        SafeRandomIoUCrop(),
    ]
    if hflip:
        ops.append(v2.RandomHorizontalFlip(0.5))
    ops += [v2.Resize((size, size)), v2.SanitizeBoundingBoxes(), resize_and_scale[1]]
    return v2.Compose(ops)


def eval_transform(size: int) -> v2.Compose:
    """Resize to ``size x size`` (boxes scaled by ``size / w``, ``size / h``), scale to [0, 1]."""
    return v2.Compose([v2.Resize((size, size)), v2.ToDtype(torch.float32, scale=True)])
