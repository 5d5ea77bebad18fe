"""The 20-point body, the hands and the face cut out of the 133 COCO-WholeBody keypoints.

Contract, "Keypoints": the skeleton the model was trained on uses its own 20-point body (OpenPose order plus
two toes), built from COCO-WholeBody points, with the hands and the 68 facial landmarks taken as they are.
All coordinates here are ``(x, y, score)`` in pixels of the image the keypoints belong to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

BODY_NAMES: tuple[str, ...] = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "RHip", "RKnee",
    "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LToe", "RToe",
)  # fmt: skip
"""The 20 body points in the contract's order (index 0 = Nose)."""

BODY_INDEX: dict[str, int] = {name: index for index, name in enumerate(BODY_NAMES)}
"""0-based position of each body point by name."""

LIMBS: tuple[tuple[int, int], ...] = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12),
    (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (14, 19), (11, 20),
)  # fmt: skip
"""The 19 limbs as **1-based** pairs into `BODY_NAMES`, in the contract's (drawing) order."""

LIMBS_0BASED: tuple[tuple[int, int], ...] = tuple((a - 1, b - 1) for a, b in LIMBS)
"""`LIMBS` as 0-based indices into the body array."""

LIMB_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (200, 200, 0),
)  # fmt: skip
"""RGB colour of each limb in `LIMBS` (drawn at 0.6 of it)."""

BODY_POINT_COLORS: tuple[tuple[int, int, int], ...] = LIMB_COLORS[:18] + ((200, 200, 0), (100, 100, 0))
"""RGB colour of each body point: the first 18 limb colours for points 1..18, then the two toes."""

HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
"""The 20 edges of a 21-point hand (0 = wrist), 0-based, in drawing order."""

NUM_WHOLEBODY = 133
NUM_BODY = 20
NUM_HAND = 21
NUM_FACE = 68

# Each body point is the mean of two COCO-WholeBody points; a point taken as it is appears twice.
# Neck = mean(left shoulder 5, right shoulder 6); LToe = mean(17, 18), RToe = mean(20, 21) (big and small toe).
_BODY_SOURCES = np.array(
    [(0, 0), (5, 6), (6, 6), (8, 8), (10, 10), (5, 5), (7, 7), (9, 9), (12, 12), (14, 14),
     (16, 16), (11, 11), (13, 13), (15, 15), (2, 2), (1, 1), (4, 4), (3, 3), (17, 18), (20, 21)]
)  # fmt: skip
POSE_PARTS = ("body", "left_hand", "right_hand", "face")
"""Field names of `WholeBodyPose`."""

_LEFT_HAND = slice(91, 112)
_RIGHT_HAND = slice(112, 133)
_FACE = slice(23, 91)


@dataclass(frozen=True, eq=False)
class WholeBodyPose:
    """Keypoints of one person, as ``(x, y, score)`` in pixels; leading dimensions (e.g. ``T``) allowed.

    Attributes:
        body: ``(..., 20, 3)`` body points in `BODY_NAMES` order.
        left_hand: ``(..., 21, 3)`` the person's left hand (COCO-WholeBody 91..111).
        right_hand: ``(..., 21, 3)`` the person's right hand (COCO-WholeBody 112..132).
        face: ``(..., 68, 3)`` the 68 facial landmarks (COCO-WholeBody 23..90).
    """

    body: np.ndarray
    left_hand: np.ndarray
    right_hand: np.ndarray
    face: np.ndarray

    def __post_init__(self) -> None:
        lead = self.body.shape[:-2]
        for name, count in (("body", NUM_BODY), ("left_hand", NUM_HAND), ("right_hand", NUM_HAND), ("face", NUM_FACE)):
            shape = getattr(self, name).shape
            if shape[-2:] != (count, 3) or shape[:-2] != lead:
                raise ValueError(f"WholeBodyPose.{name} has shape {shape}; expected {(*lead, count, 3)}.")

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """The leading dimensions, e.g. ``(T,)`` for a clip, ``()`` for one frame."""
        return tuple(self.body.shape[:-2])

    def map_parts(self, function: Callable[[np.ndarray], np.ndarray]) -> WholeBodyPose:
        """A new pose with ``function`` applied to each of the four ``(..., N, 3)`` arrays."""
        return WholeBodyPose(**{part: function(getattr(self, part)) for part in POSE_PARTS})

    def frame(self, index: int) -> WholeBodyPose:
        """The pose of one frame of a clip (first leading dimension)."""
        return self.map_parts(lambda points: points[index])

    @staticmethod
    def stack(poses: Sequence[WholeBodyPose]) -> WholeBodyPose:
        """Stack one-frame poses (or clips) along a new first dimension."""
        return WholeBodyPose(**{part: np.stack([getattr(pose, part) for pose in poses]) for part in POSE_PARTS})

    def scaled(self, scale_x: float, scale_y: float, offset_x: float = 0.0, offset_y: float = 0.0) -> WholeBodyPose:
        """Map every point to ``(x * scale_x + offset_x, y * scale_y + offset_y)``; scores are kept.

        Used to carry keypoints from the frames they were found in to another pixel grid (a resized frame,
        or a letterbox with `sizing.letterbox_transform`).
        """

        def mapped(points: np.ndarray) -> np.ndarray:
            out = points.astype(np.float64, copy=True)
            out[..., 0] = out[..., 0] * scale_x + offset_x
            out[..., 1] = out[..., 1] * scale_y + offset_y
            return out

        return self.map_parts(mapped)


def split_wholebody(keypoints: np.ndarray) -> WholeBodyPose:
    """Split 133 COCO-WholeBody keypoints into the contract's body, hands and face.

    Contract, "Keypoints / Split of the 133 points": body = COCO 0, mean(5,6), 6, 8, 10, 5, 7, 9, 12, 14, 16,
    11, 13, 15, 2, 1, 4, 3, mean(17,18), mean(20,21) (Neck and toes are means, scores included); left hand
    91..111, right hand 112..132, face 23..90.

    Args:
        keypoints: ``(..., 133, 3)`` ``(x, y, score)`` in pixels.

    Returns:
        The split pose (float64), with the same leading dimensions.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape[-2:] != (NUM_WHOLEBODY, 3):
        raise ValueError(f"Expected (..., 133, 3) COCO-WholeBody keypoints, got shape {keypoints.shape}.")
    body = (keypoints[..., _BODY_SOURCES[:, 0], :] + keypoints[..., _BODY_SOURCES[:, 1], :]) / 2
    return WholeBodyPose(
        body=body,
        left_hand=keypoints[..., _LEFT_HAND, :].copy(),
        right_hand=keypoints[..., _RIGHT_HAND, :].copy(),
        face=keypoints[..., _FACE, :].copy(),
    )


def present_points(points: np.ndarray, threshold: float) -> np.ndarray:
    """Which points count as found: score >= ``threshold``, finite, and not at negative coordinates.

    Negative coordinates are upstream's marker of "no detection", so they count as missing whatever the score.

    Args:
        points: ``(..., 3)`` ``(x, y, score)``.
        threshold: Minimum score.

    Returns:
        Boolean array of shape ``points.shape[:-1]``.
    """
    finite = np.isfinite(points).all(axis=-1)
    with np.errstate(invalid="ignore"):
        return finite & (points[..., 2] >= threshold) & (points[..., 0] >= 0) & (points[..., 1] >= 0)


def fill_missing_bodies(body: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Give a frame with no body point found the previous frame's body.

    Contract, "Keypoints": a frame whose body points are all missing reuses the previous frame's body (so the
    skeleton holds still through a dropped detection instead of vanishing for a frame). A point is missing as
    `present_points` says. Frames before the first frame with a body are left as they are: there is nothing
    earlier to reuse, and their low scores keep them from being drawn.

    Args:
        body: ``(T, 20, 3)`` body points of a clip.
        threshold: Score below which a point counts as missing.

    Returns:
        A filled copy, ``(T, 20, 3)``.
    """
    body = np.array(body, dtype=np.float64, copy=True)
    if body.ndim != 3 or body.shape[1:] != (NUM_BODY, 3):
        raise ValueError(f"Expected (T, 20, 3) body points, got shape {body.shape}.")
    empty = ~present_points(body, threshold).any(axis=1)
    for t in range(1, len(body)):
        if empty[t]:
            # body[t - 1] is itself already filled, so a run of empty frames repeats the last real body.
            body[t] = body[t - 1]
    return body
