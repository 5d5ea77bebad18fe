"""Output size and letterboxing.

Contract, "Size, frame rate, segments": the output keeps the input's aspect ratio at a fixed pixel area
(1280 x 720 or 832 x 480), each side floored to a multiple of 16; images are letterboxed into it (resized to
fit, black padding centred).
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np

from ..errors import WanAnimateError

Resolution = Literal["720p", "480p"]

RESOLUTION_AREAS: dict[str, int] = {"720p": 1280 * 720, "480p": 832 * 480}
"""Target pixel area of each resolution."""

SIZE_MULTIPLE = 16
"""Both output sides are multiples of this (the VAE and patch grid need it)."""

Interpolation = Literal["bilinear", "area", "auto"]
_CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}


def output_size(height: int, width: int, resolution: Resolution = "720p") -> tuple[int, int]:
    """The conditioning/output ``(height, width)`` for an input of the given size.

    Contract, "Output size": keep the aspect ratio, target area 1280 x 720 (or 832 x 480), each side floored
    to a multiple of 16, with ``new_h = sqrt(area / aspect)``, ``new_w = area / new_h`` and
    ``aspect = width / height``. Upstream evaluates this in floating point; here the same formula is evaluated
    exactly in integers (``new_h = sqrt(area * h / w)``, ``new_w = sqrt(area * w / h)``) so that a side that
    is exactly a multiple of 16 (e.g. 720 for 16:9) never drops by 16 through a rounding error.

    Args:
        height: Input height in pixels.
        width: Input width in pixels.
        resolution: ``"720p"`` or ``"480p"``.

    Returns:
        ``(height, width)``, both multiples of 16.

    Raises:
        WanAnimateError: Unknown resolution, or an aspect ratio so extreme that a side would be 0.
    """
    if resolution not in RESOLUTION_AREAS:
        raise WanAnimateError(f"Unknown resolution {resolution!r}: use one of {', '.join(RESOLUTION_AREAS)}.")
    if height <= 0 or width <= 0:
        raise WanAnimateError(f"The input has no pixels ({width} x {height}).")
    area = RESOLUTION_AREAS[resolution]
    # floor(sqrt(x)) == isqrt(floor(x)) for x >= 0, so these are the exact floors of the contract's formula.
    new_h = math.isqrt(area * height // width)
    new_w = math.isqrt(area * width // height)
    new_h -= new_h % SIZE_MULTIPLE
    new_w -= new_w % SIZE_MULTIPLE
    if new_h == 0 or new_w == 0:
        raise WanAnimateError(
            f"The input's aspect ratio ({width} x {height}) is too extreme for {resolution}; crop it closer to "
            "the subject."
        )
    return new_h, new_w


def letterbox_fit(src_size: tuple[int, int], dst_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(fitted_h, fitted_w, pad_top, pad_left)`` of a letterbox, with upstream's integer truncation.

    The source is fitted to the destination's height when it is relatively taller (compared exactly, in
    integers), else to its width; the other side is floored and the padding is split with the odd pixel
    going to the bottom/right.
    """
    src_h, src_w = src_size
    dst_h, dst_w = dst_size
    if src_h * dst_w > dst_h * src_w:
        fitted_h, fitted_w = dst_h, max(1, dst_h * src_w // src_h)
    else:
        fitted_h, fitted_w = max(1, dst_w * src_h // src_w), dst_w
    return fitted_h, fitted_w, (dst_h - fitted_h) // 2, (dst_w - fitted_w) // 2


def letterbox_transform(src_size: tuple[int, int], dst_size: tuple[int, int]) -> tuple[float, float, float]:
    """How `letterbox` maps pixel coordinates: ``x' = x * scale + offset_x``, ``y' = y * scale + offset_y``.

    The scale is the exact fit ratio; the letterboxed image floors the other side to whole pixels, so a
    mapped point can be off by under a pixel along that side.

    Args:
        src_size: ``(height, width)`` of the image before letterboxing.
        dst_size: ``(height, width)`` of the letterboxed image.

    Returns:
        ``(scale, offset_x, offset_y)``; use it with `WholeBodyPose.scaled(scale, scale, offset_x, offset_y)`.
    """
    src_h, src_w = src_size
    dst_h, dst_w = dst_size
    _, _, pad_top, pad_left = letterbox_fit(src_size, dst_size)
    scale = dst_h / src_h if src_h * dst_w > dst_h * src_w else dst_w / src_w
    return scale, float(pad_left), float(pad_top)


def letterbox(image: np.ndarray, size: tuple[int, int], interpolation: Interpolation = "bilinear") -> np.ndarray:
    """Resize ``image`` to fit inside ``size`` keeping its aspect ratio, centred on black.

    Contract, "Output size" and "Skeleton video": images are letterboxed into the output size (resized to
    fit, black padding centred); the skeleton of Animation without retargeting is letterboxed bilinearly.

    Args:
        image: ``(h, w)`` or ``(h, w, c)`` array (uint8 or float).
        size: ``(height, width)`` of the result.
        interpolation: ``"bilinear"`` (the contract's, default), ``"area"``, or ``"auto"`` (area when
            shrinking, bilinear when enlarging: what upstream does for the reference photo, less aliasing
            when a large photo is brought down to 720p).

    Returns:
        The letterboxed image, ``(height, width[, c])``, same dtype.
    """
    src_h, src_w = image.shape[:2]
    dst_h, dst_w = size
    fitted_h, fitted_w, pad_top, pad_left = letterbox_fit((src_h, src_w), (dst_h, dst_w))
    fitted = resize_frame(image, (fitted_h, fitted_w), interpolation)
    out = np.zeros((dst_h, dst_w, *image.shape[2:]), dtype=image.dtype)
    fitted = fitted.reshape(fitted_h, fitted_w, *image.shape[2:])  # OpenCV drops a single channel axis
    out[pad_top : pad_top + fitted_h, pad_left : pad_left + fitted_w] = fitted
    return out


def resize_frame(image: np.ndarray, size: tuple[int, int], interpolation: Interpolation = "auto") -> np.ndarray:
    """Resize ``image`` to exactly ``size`` (stretching if the aspect differs).

    For frames whose aspect already matches ``size`` up to the 16-pixel flooring of `output_size`.
    (Upstream letterboxes Replacement frames instead, which leaves bars of a few black pixels.)

    Args:
        image: ``(h, w)`` or ``(h, w, c)`` array.
        size: ``(height, width)``.
        interpolation: ``"auto"`` (default: area when shrinking, bilinear when enlarging), ``"area"`` or
            ``"bilinear"``.

    Returns:
        The resized image; the input itself when it already has that size.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    if interpolation == "auto":
        shrinking = height * width < image.shape[0] * image.shape[1]
        flag = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    else:
        flag = _CV2_INTERPOLATION[interpolation]
    return cv2.resize(image, (width, height), interpolation=flag)
