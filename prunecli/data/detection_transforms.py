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

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from prunecli.data.transforms import IMAGENET_MEAN

# the zoom-out canvas is filled with the ImageNet mean, as in SSD, so the padding normalises to ~0
ZOOM_OUT_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104)


class SafeRandomIoUCrop(v2.RandomIoUCrop):
    """torchvision's ``RandomIoUCrop`` (SSD's crop sampler), with its trials drawn at once.

    The sampler is torchvision's: pick a minimum IoU from the options (or "leave as is"), then up
    to ``trials`` independent random crops, and take the first whose size, aspect ratio, box
    centres and IoU pass; if none does, pick an option again. torchvision runs those trials one
    by one in Python, and on images whose objects are small next to the image (most of VOC and
    COCO) the strict options fail all 40, so a sample cost ~9 ms, three quarters of SSD's whole
    augmentation. Here an option's trials are drawn and checked as one array: the first passing
    trial of the same independent draws has the same distribution, at ~0.2 ms a sample
    (``tests/test_det_data.py`` compares the two).

    An image without (non-ignored) boxes is left as it is at once; torchvision's version loops
    until it happens to draw "leave as is". Such images are real: a VOC image whose objects are
    all ``difficult``, or one where an earlier op removed them.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # check_inputs (torchvision's) has made sure the sample has boxes
        boxes = next(x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes))
        if boxes.numel() == 0:
            return {}  # the parent's "leave as is" parameters
        orig_h, orig_w = boxes.canvas_size  # the image's size: v2 keeps the two in step
        xyxy = F.convert_bounding_box_format(boxes.as_subclass(torch.Tensor), boxes.format,
                                             tv_tensors.BoundingBoxFormat.XYXY)
        xyxy_np = xyxy.reshape(-1, 4).cpu().numpy()
        cx = 0.5 * (xyxy_np[:, 0] + xyxy_np[:, 2])
        cy = 0.5 * (xyxy_np[:, 1] + xyxy_np[:, 3])
        box_area = (xyxy_np[:, 2] - xyxy_np[:, 0]) * (xyxy_np[:, 3] - xyxy_np[:, 1])
        while True:
            min_iou = self.options[int(torch.randint(0, len(self.options), (1,)))]
            if min_iou >= 1.0:  # the "leave as is" option
                return {}
            r = torch.rand(self.trials, 4, dtype=torch.float64).numpy()
            scale = self.min_scale + (self.max_scale - self.min_scale) * r[:, :2]
            new_w = (orig_w * scale[:, 0]).astype(np.int64)  # int() of a positive number
            new_h = (orig_h * scale[:, 1]).astype(np.int64)
            aspect = new_w / np.maximum(new_h, 1)
            left = ((orig_w - new_w) * r[:, 2]).astype(np.int64)
            top = ((orig_h - new_h) * r[:, 3]).astype(np.int64)
            right, bottom = left + new_w, top + new_h
            inside = ((left[:, None] < cx) & (cx < right[:, None])
                      & (top[:, None] < cy) & (cy < bottom[:, None]))  # trials x boxes
            iw = np.clip(np.minimum(right[:, None], xyxy_np[:, 2])
                         - np.maximum(left[:, None], xyxy_np[:, 0]), 0, None)
            ih = np.clip(np.minimum(bottom[:, None], xyxy_np[:, 3])
                         - np.maximum(top[:, None], xyxy_np[:, 1]), 0, None)
            inter = iw * ih
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = inter / ((new_w * new_h)[:, None] + box_area - inter)
            best = np.where(inside, np.nan_to_num(iou, nan=0.0), -1.0).max(axis=1)
            ok = ((new_w > 0) & (new_h > 0)
                  & (self.min_aspect_ratio <= aspect) & (aspect <= self.max_aspect_ratio)
                  & inside.any(axis=1) & (best >= min_iou))
            if ok.any():
                t = int(ok.argmax())
                within = torch.from_numpy(inside[t]).reshape(xyxy.shape[:-1]).to(xyxy.device)
                return {"top": int(top[t]), "left": int(left[t]), "height": int(new_h[t]),
                        "width": int(new_w[t]), "is_within_crop_area": within}


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
