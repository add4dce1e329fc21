"""Image files read with PIL as the models take them: 8-bit RGB.

PIL's ``convert("RGB")`` clips 16-bit grey images (modes ``I;16*`` and ``I``: 16-bit PNGs and
TIFFs, common in medical and industrial imaging) at 255, so such an image arrived almost white
(99.6% of a test image's pixels); here its values are scaled to 8 bits first (65535 -> 255), as
torchvision's ``to_dtype(..., scale=True)`` does for tensors.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

import numpy as np

from prunecli.errors import DataError

log = logging.getLogger("prunecli")

#: PIL modes of one 16-bit (or wider integer) channel
SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def to_rgb(image: Any) -> Any:
    """``image`` (a PIL image of any mode) as 8-bit RGB, 16-bit grey scaled rather than
    clipped."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image).astype(np.int64)
        image = Image.fromarray(np.clip(values // 257, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike[str]) -> Any:
    """The file as an 8-bit RGB PIL image (ImageFolder's loader, 16-bit aware). A file PIL
    cannot read (truncated, not an image) is a one-line error naming it, rather than a
    traceback from a DataLoader worker hours into a run."""
    from PIL import Image

    try:
        with open(path, "rb") as f, Image.open(f) as image:
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for broken files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path} as an image ({reason}); replace or remove the "
                        "file") from None


def warn_left_out(where: object, reader: str, other: Counter) -> None:
    """Say how many files of ``where`` a reader left out for their format (``other``: count by
    extension), so that a folder of phone photos (``.heic``) is not trained on without them
    silently."""
    if other:
        log.warning("%s: %d files left out, in formats %s does not read (%s); convert them to "
                    "JPEG or PNG to use them", where, sum(other.values()), reader,
                    ", ".join(f"{e} {n}" for e, n in other.most_common()))
