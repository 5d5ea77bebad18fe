"""The face video (``face_video``): a box around the 68 facial landmarks per frame, cropped to 512 x 512.

Contract, "Face video": box = landmarks' min/max, area x 1.3 keeping the aspect, the extra width split on
both sides and the extra height 3:1 above/below (room for the forehead), clamped, int-truncated; the crop is
stretched to 512 x 512. Fix over upstream: a frame where the face is not found reuses the last good box,
and boxes are smoothed over time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sized

import cv2
import numpy as np
import torch

from .keypoints import NUM_FACE

FACE_AREA_SCALE = 1.3
"""Contract: the landmarks' box is grown to 1.3 x its area."""

FACE_CROP_SIZE = 512
"""Contract: face crops are 512 x 512."""

MIN_LANDMARK_SCORE = 0.3
"""Default score a landmark needs to count towards "face found"."""

MIN_LANDMARKS = NUM_FACE // 2
"""Default number of landmarks (of 68) that must pass `MIN_LANDMARK_SCORE` for the face to count as found."""

SMOOTHING = 2
"""Default half-window (frames) of the boxes' centred moving average: 5 frames, 1/6 s at 30 fps."""


def face_box_float(landmarks: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """`face_box` before the final integer truncation (what smoothing averages)."""
    points = np.asarray(landmarks, dtype=np.float64)[..., :2]
    if not np.isfinite(points).all():
        raise ValueError("Face landmarks contain NaN or infinite coordinates.")
    height, width = image_size
    min_x, min_y = points.min(axis=0)
    max_x, max_y = points.max(axis=0)
    box_w, box_h = max_x - min_x, max_y - min_y
    # Area x 1.3 keeping the aspect: each side grows by sqrt(1.3).
    delta_w = (math.sqrt(FACE_AREA_SCALE) * box_w - box_w) / 2
    delta_h = (math.sqrt(FACE_AREA_SCALE) * box_h - box_h) / 4
    return np.array(
        [
            max(min_x - delta_w, 0.0),
            max(min_y - 3 * delta_h, 0.0),
            min(max_x + delta_w, float(width)),
            min(max_y + delta_h, float(height)),
        ]
    )


def face_box(landmarks: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The face crop box of one frame.

    Contract, "Face video": box = landmarks' min/max; ``new_w = sqrt(1.3) w``, ``new_h = sqrt(1.3) h``;
    ``dw = (new_w - w) / 2`` added on each side; ``dh = (new_h - h) / 4``, added 3 dh above and dh below;
    clamped to the image; int-truncated.

    Args:
        landmarks: ``(68, 2)`` (or ``(68, 3)``; the score is ignored) in pixels of the image.
        image_size: ``(height, width)`` of that image.

    Returns:
        ``[x1, y1, x2, y2]`` int64; crop as ``image[y1:y2, x1:x2]``.
    """
    return face_box_float(landmarks, image_size).astype(np.int64)


def face_found(
    face: np.ndarray, min_score: float = MIN_LANDMARK_SCORE, min_landmarks: int = MIN_LANDMARKS
) -> np.ndarray:
    """Whether a face is found in each frame: at least ``min_landmarks`` finite landmarks score >= ``min_score``.

    Args:
        face: ``(..., 68, 3)`` landmarks with scores.
        min_score: Score a landmark needs.
        min_landmarks: Landmarks needed.

    Returns:
        Boolean array of shape ``face.shape[:-2]``.
    """
    face = np.asarray(face, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        good = np.isfinite(face).all(axis=-1) & (face[..., 2] >= min_score)
    return good.sum(axis=-1) >= min_landmarks


def smooth_boxes(boxes: np.ndarray, smoothing: int) -> np.ndarray:
    """Centred moving average of boxes over ``2 * smoothing + 1`` frames (fewer at the clip's ends).

    Averaging the corners of boxes that each lie inside the image gives a box inside the image, so no
    clamping is needed afterwards. ``smoothing = 0`` returns the boxes unchanged.

    Args:
        boxes: ``(T, 4)`` float boxes.
        smoothing: Half-window in frames.

    Returns:
        ``(T, 4)`` float boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if smoothing <= 0 or len(boxes) < 2:
        return boxes.copy()
    cumulative = np.concatenate([np.zeros((1, 4)), np.cumsum(boxes, axis=0)])
    index = np.arange(len(boxes))
    low = np.clip(index - smoothing, 0, len(boxes))
    high = np.clip(index + smoothing + 1, 0, len(boxes))
    return (cumulative[high] - cumulative[low]) / (high - low)[:, None]


def track_face_boxes(
    face: np.ndarray,
    image_size: tuple[int, int],
    min_score: float = MIN_LANDMARK_SCORE,
    min_landmarks: int = MIN_LANDMARKS,
    smoothing: int = SMOOTHING,
) -> tuple[np.ndarray, np.ndarray]:
    """Face boxes for a clip, with the contract's fix for frames without a face.

    Contract, "Face video" (fix): a frame where the face is not found (`face_found`) reuses the last good
    box; frames before the first good one take the first good box. Then the boxes are smoothed with a
    centred moving average (`smooth_boxes`) so the crop doesn't jitter; with ``smoothing = 0`` a found
    frame's box is exactly `face_box`.

    Args:
        face: ``(T, 68, 3)`` landmarks in pixels of frames of ``image_size``.
        image_size: ``(height, width)`` of the frames.
        min_score: Score a landmark needs to count.
        min_landmarks: Landmarks needed for "found".
        smoothing: Half-window of the moving average in frames; 0 turns smoothing off.

    Returns:
        ``(boxes, found)``: ``(T, 4)`` int64 ``[x1, y1, x2, y2]`` and ``(T,)`` bool. When no frame has a face,
        every box is the whole image and ``found`` is all False (the caller decides whether to refuse).
    """
    face = np.asarray(face, dtype=np.float64)
    if face.ndim != 3 or face.shape[1:] != (NUM_FACE, 3):
        raise ValueError(f"Expected (T, 68, 3) face landmarks, got shape {face.shape}.")
    height, width = image_size
    found = face_found(face, min_score, min_landmarks)
    boxes = np.zeros((len(face), 4))
    for t in np.flatnonzero(found):
        boxes[t] = face_box_float(face[t], image_size)
        # A box under 2 pixels across can't be cropped meaningfully: treat the face as not found.
        if boxes[t, 2] - boxes[t, 0] < 2 or boxes[t, 3] - boxes[t, 1] < 2:
            found[t] = False
    if not found.any():
        return np.tile(np.array([0, 0, width, height], dtype=np.int64), (len(face), 1)), found
    last = boxes[np.argmax(found)]  # frames before the first good one take the first good box
    for t in range(len(face)):
        if found[t]:
            last = boxes[t]
        else:
            boxes[t] = last
    return smooth_boxes(boxes, smoothing).astype(np.int64), found


def crop_faces(
    frames: np.ndarray | Iterable[np.ndarray | torch.Tensor], boxes: np.ndarray, size: int = FACE_CROP_SIZE
) -> np.ndarray:
    """Cut each frame's face box and stretch it to ``size`` x ``size``.

    Contract, "Face video": the crop is resized to 512 x 512, stretched (aspect not kept), with OpenCV's
    default (bilinear) interpolation.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB, or T ``(H, W, 3)`` uint8 arrays or tensors on any device (only the
            face region is copied to the CPU), e.g. as a decoder yields them.
        boxes: ``(T, 4)`` int ``[x1, y1, x2, y2]`` (from `track_face_boxes`).
        size: Side of the square crops.

    Returns:
        ``(T, size, size, 3)`` uint8 RGB.

    Raises:
        ValueError: Not as many frames as boxes.
    """
    if isinstance(frames, Sized) and len(frames) != len(boxes):
        raise ValueError(f"{len(frames)} frames but {len(boxes)} face boxes.")
    crops = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for index, (frame, box) in enumerate(zip(frames, boxes, strict=True)):
        height, width = frame.shape[:2]
        # Keep at least one pixel so a degenerate box still gives a (flat) crop instead of an OpenCV error.
        x1 = min(max(int(box[0]), 0), width - 1)
        y1 = min(max(int(box[1]), 0), height - 1)
        x2 = min(max(int(box[2]), x1 + 1), width)
        y2 = min(max(int(box[3]), y1 + 1), height)
        face = frame[y1:y2, x1:x2]
        if isinstance(face, torch.Tensor):
            face = face.cpu().numpy()
        crops[index] = cv2.resize(face, (size, size)).reshape(size, size, -1)
    return crops
