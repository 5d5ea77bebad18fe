"""The skeleton video (``pose_video``) drawn exactly as the model saw it in training.

Contract, "Skeleton video": black RGB canvas; 19 limbs as filled ellipses at 0.6 of their colour, then the
body points as filled circles in full colour, then both hands (HSV-coloured edges, blue points). Face
landmarks are not drawn. Every number below (widths, colours, thresholds, truncations) is the contract's;
a different stroke width or colour is an input the model never saw.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from .keypoints import BODY_POINT_COLORS, HAND_EDGES, LIMB_COLORS, LIMBS_0BASED, WholeBodyPose

SCORE_THRESHOLD = 0.5
"""Contract: a point is drawn when its score is >= 0.5."""

LIMB_COLOR_FACTOR = 0.6
"""Contract: limbs are drawn at 0.6 of their colour (integer-truncated), points at full colour."""

HAND_POINT_COLOR = (0, 0, 255)
"""Contract: hand points are RGB blue."""

_HAND_MIN_PIXEL = 0.01
# OpenCV works in int32 pixel coordinates; a point far outside any canvas is treated as not drawable.
_MAX_COORDINATE = 1 << 24


def body_stroke_width(height: int, width: int) -> int:
    """Contract: body stroke width ``w = max(int(min(H, W) / 200) - 1, 1)`` (2 at 720p, 1 at 480p)."""
    return max(int(min(height, width) / 200) - 1, 1)


def hand_stroke_width(height: int, width: int) -> int:
    """Contract: hand width ``max(max(int(min(H, W) / 200) - 1, 1) // 2, 1)`` (1 at both 720p and 480p)."""
    return max(body_stroke_width(height, width) // 2, 1)


def hand_edge_color(index: int) -> tuple[float, float, float]:
    """Contract: hand edge ``i`` has the HSV colour ``(i / 20, 1, 1) x 255``, as floats (OpenCV rounds them)."""
    red, green, blue = colorsys.hsv_to_rgb(index / float(len(HAND_EDGES)), 1.0, 1.0)
    return red * 255, green * 255, blue * 255


def _drawable(point: np.ndarray, threshold: float) -> bool:
    """Score at least ``threshold`` and coordinates OpenCV can take (finite, within int32 with room)."""
    x, y, score = (float(v) for v in point)
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(score)):
        return False
    return score >= threshold and abs(x) < _MAX_COORDINATE and abs(y) < _MAX_COORDINATE


def draw_limb(canvas: np.ndarray, start: np.ndarray, end: np.ndarray, color: tuple[int, int, int], width: int) -> None:
    """Draw one limb in place: a filled ellipse between two points.

    Contract: centred between the two points, half-axes ``(length / 2, w)``, rotated along the limb
    (``ellipse2Poly`` with 1-degree steps, then ``fillConvexPoly``), in ``int(c * 0.6)`` of the colour;
    centre, half-length and angle (degrees) truncated to integers.
    """
    x1, y1 = float(start[0]), float(start[1])
    x2, y2 = float(end[0]), float(end[1])
    center = (int((x1 + x2) / 2), int((y1 + y2) / 2))
    length = math.hypot(x1 - x2, y1 - y2)
    angle = math.degrees(math.atan2(y1 - y2, x1 - x2))
    polygon = cv2.ellipse2Poly(center, (int(length / 2), width), int(angle), 0, 360, 1)
    cv2.fillConvexPoly(canvas, polygon, [int(float(c) * LIMB_COLOR_FACTOR) for c in color])


def draw_body(canvas: np.ndarray, body: np.ndarray, threshold: float = SCORE_THRESHOLD) -> None:
    """Draw the 20-point body in place: the 19 limbs first, then the points on top.

    Contract: a limb is drawn when both its points score >= threshold; every body point with score >=
    threshold is a filled circle of radius ``w`` in its own colour (`BODY_POINT_COLORS`).
    """
    width = body_stroke_width(*canvas.shape[:2])
    drawable = [_drawable(point, threshold) for point in body]
    for (a, b), color in zip(LIMBS_0BASED, LIMB_COLORS):
        if drawable[a] and drawable[b]:
            draw_limb(canvas, body[a], body[b], color, width)
    for point, color, ok in zip(body, BODY_POINT_COLORS, drawable):
        if ok:
            cv2.circle(canvas, (int(point[0]), int(point[1])), width, color, thickness=-1)


def draw_hand(canvas: np.ndarray, hand: np.ndarray, threshold: float = SCORE_THRESHOLD) -> None:
    """Draw one 21-point hand in place: the 20 edges, then the points.

    Contract: hand width rule; edge ``i`` is an 8-connected OpenCV line in `hand_edge_color(i)`, drawn when
    both ends score >= threshold and both ends' integer-truncated x and y are > 0.01 (so >= 1); then each
    point passing the same rules is a filled circle of radius = hand width in RGB (0, 0, 255).
    """
    width = hand_stroke_width(*canvas.shape[:2])
    pixels: list[tuple[int, int] | None] = []
    for point in hand:
        x, y = (int(point[0]), int(point[1])) if _drawable(point, threshold) else (0, 0)
        pixels.append((x, y) if x > _HAND_MIN_PIXEL and y > _HAND_MIN_PIXEL else None)
    for index, (a, b) in enumerate(HAND_EDGES):
        if pixels[a] is not None and pixels[b] is not None:
            cv2.line(canvas, pixels[a], pixels[b], hand_edge_color(index), thickness=width)
    for pixel in pixels:
        if pixel is not None:
            cv2.circle(canvas, pixel, width, HAND_POINT_COLOR, thickness=-1)


def draw_skeleton(pose: WholeBodyPose, canvas_size: tuple[int, int], threshold: float = SCORE_THRESHOLD) -> np.ndarray:
    """Draw one frame of the skeleton video.

    Contract, "Skeleton video": black canvas of ``canvas_size``; body (limbs, then points), then the left
    hand, then the right hand; face landmarks are not drawn. Stroke widths follow from the canvas size, so
    draw on the canvas the contract names for the mode (see ``WAN_ANIMATE_CONTRACT.md``).

    Args:
        pose: One frame's pose (no leading dimensions), in pixels of ``canvas_size``.
        canvas_size: ``(height, width)``.
        threshold: Minimum score of a drawn point (the contract's 0.5).

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    if pose.leading_shape:
        raise ValueError(f"draw_skeleton takes one frame; got leading dimensions {pose.leading_shape}.")
    height, width = canvas_size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    draw_body(canvas, pose.body, threshold)
    draw_hand(canvas, pose.left_hand, threshold)
    draw_hand(canvas, pose.right_hand, threshold)
    return canvas


def render_skeleton_frames(
    poses: WholeBodyPose, canvas_size: tuple[int, int], threshold: float = SCORE_THRESHOLD
) -> np.ndarray:
    """Draw every frame of a clip with `draw_skeleton`.

    Args:
        poses: Poses with one leading dimension ``T``.
        canvas_size: ``(height, width)``.
        threshold: Minimum score of a drawn point.

    Returns:
        ``(T, height, width, 3)`` uint8 RGB.
    """
    if len(poses.leading_shape) != 1:
        raise ValueError(f"render_skeleton_frames takes (T, ...) poses; got leading dimensions {poses.leading_shape}.")
    frames = np.empty((poses.leading_shape[0], *canvas_size, 3), dtype=np.uint8)
    for index in range(len(frames)):
        frames[index] = draw_skeleton(poses.frame(index), canvas_size, threshold)
    return frames
