"""Clicks on frames of the driving video: choosing the person and fixing the Replacement mask.

A click is kept in fractions of the frame's width and height, with the index of the conditioning frame
(after trimming and frame-rate resampling) it was made on, so the same clicks serve a 720p extraction and
a 480p draft. `to_point_prompts` turns them into SAM2 prompts in output-size pixels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from .errors import WanAnimateError
from .preprocess.mask import PointPrompt
from .video import iter_video, probe_video, read_image

POSITIVE_COLOR = (40, 220, 60)
NEGATIVE_COLOR = (235, 50, 50)


@dataclass(frozen=True)
class Click:
    """One click on a frame.

    Attributes:
        frame: Conditioning frame index (0 = first frame after trimming).
        x: Horizontal position as a fraction of the frame width (0 = left, 1 = right).
        y: Vertical position as a fraction of the frame height (0 = top, 1 = bottom).
        positive: ``True`` = part of the person, ``False`` = not part of the person.
    """

    frame: int
    x: float
    y: float
    positive: bool = True


def parse_clicks(value: str | list | None) -> list[Click]:
    """Read clicks from JSON text or a list: objects ``{"frame", "x", "y", "positive"}`` or ``[frame, x, y, positive]``.

    Raises:
        WanAnimateError: Malformed JSON, or a position outside 0..1.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    try:
        items = json.loads(value) if isinstance(value, str) else value
        clicks = [_click(item) for item in items]
    except (ValueError, TypeError, KeyError) as error:
        raise WanAnimateError(
            'Points must be a JSON list like [{"frame": 0, "x": 0.5, "y": 0.4, "positive": true}] '
            f"(x and y as fractions of the frame): {error}"
        ) from error
    for click in clicks:
        if not (0 <= click.x <= 1 and 0 <= click.y <= 1) or click.frame < 0:
            raise WanAnimateError(f"Point {click} is outside the frame: x and y are fractions 0..1, frame >= 0.")
    return clicks


def _click(item: Any) -> Click:
    if isinstance(item, dict):
        return Click(int(item["frame"]), float(item["x"]), float(item["y"]), bool(item.get("positive", True)))
    frame, x, y, *rest = item
    return Click(int(frame), float(x), float(y), bool(rest[0]) if rest else True)


def dump_clicks(clicks: Iterable[Click]) -> str:
    """Clicks as JSON text (the format `parse_clicks` reads)."""
    return json.dumps([asdict(click) for click in clicks])


def click_at(frame: int, x_pixel: float, y_pixel: float, width: int, height: int, positive: bool) -> Click:
    """A click at pixel ``(x_pixel, y_pixel)`` of a shown frame of ``width`` x ``height`` pixels.

    Pixel ``(0, 0)`` covers the fractions 0..1/width; its centre is used.
    """
    x = min(max((x_pixel + 0.5) / width, 0.0), 1.0)
    y = min(max((y_pixel + 0.5) / height, 0.0), 1.0)
    return Click(int(frame), x, y, positive)


def to_point_prompts(clicks: Iterable[Click], size: tuple[int, int], num_frames: int | None = None) -> list[PointPrompt]:
    """SAM2 prompts in pixels of an output of ``size`` = ``(height, width)``.

    Args:
        clicks: The clicks.
        size: Output size the conditioning is computed at.
        num_frames: Drop clicks on frames at or past this (a draft covers only the first segment).
    """
    height, width = size
    return [
        PointPrompt(frame=click.frame, x=click.x * width, y=click.y * height, positive=click.positive)
        for click in clicks
        if num_frames is None or click.frame < num_frames
    ]


def person_point(clicks: Iterable[Click], size: tuple[int, int], num_frames: int | None = None) -> tuple[int, float, float] | None:
    """The first positive click as ``(frame, x, y)`` in output pixels: which person to follow, or ``None``."""
    height, width = size
    for click in clicks:
        if click.positive and (num_frames is None or click.frame < num_frames):
            return click.frame, click.x * width, click.y * height
    return None


def conditioning_size(mode: str, photo: str | Path, video: str | Path, resolution: str) -> tuple[int, int]:
    """``(height, width)`` of a job's conditioning, which click fractions are scaled to.

    Contract ("Size, frame rate, segments"): Animation takes the photo's aspect, Replacement the video's;
    `output_size` applies the area and multiple-of-16 rule.
    """
    from .preprocess.sizing import output_size

    if mode == "animate":
        height, width = read_image(photo).shape[:2]
    else:
        info = probe_video(video)
        height, width = info.height, info.width
    return output_size(height, width, resolution)


def read_frame(
    video: str | Path,
    index: int,
    *,
    fps: float | None = 30.0,
    start: float = 0.0,
    end: float | None = None,
    max_side: int = 640,
) -> np.ndarray:
    """Conditioning frame ``index`` of a video (decoded with the same trim and rate), no larger than ``max_side``.

    An index past the end gives the last frame.

    Raises:
        WanAnimateError: Unreadable video or invalid trim.
    """
    if index < 0:
        raise WanAnimateError(f"Frame index must be at least 0, got {index}.")

    def shown_size(height: int, width: int) -> tuple[int, int]:
        scale = min(1.0, max_side / max(height, width))
        return max(2, round(height * scale)), max(2, round(width * scale))

    frame = None
    for position, frame in enumerate(iter_video(video, fps=fps, start=start, end=end, max_seconds=None, size=shown_size)):
        if position == index:
            break
    if frame is None:
        raise WanAnimateError(f"{Path(video).name} has no frames in the chosen range.")
    return frame


def draw_clicks(frame: np.ndarray, clicks: Iterable[Click], index: int) -> np.ndarray:
    """The frame with the clicks made on it: green + for the person, red - for not the person."""
    image = frame.copy()
    height, width = image.shape[:2]
    radius = max(4, round(min(height, width) / 40))
    for click in clicks:
        if click.frame != index:
            continue
        centre = (round(click.x * width - 0.5), round(click.y * height - 0.5))
        color = POSITIVE_COLOR if click.positive else NEGATIVE_COLOR
        cv2.circle(image, centre, radius, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(image, centre, radius - 1, color, -1, cv2.LINE_AA)
        arm = max(2, radius // 2)
        cv2.line(image, (centre[0] - arm, centre[1]), (centre[0] + arm, centre[1]), (255, 255, 255), 2, cv2.LINE_AA)
        if click.positive:
            cv2.line(image, (centre[0], centre[1] - arm), (centre[0], centre[1] + arm), (255, 255, 255), 2, cv2.LINE_AA)
    return image


def describe_clicks(clicks: list[Click]) -> str:
    """A one-line summary for the page, e.g. ``"3 points (2 on the person, 1 off) on frames 0, 12"``."""
    if not clicks:
        return "No points: the person is found automatically."
    positive = sum(click.positive for click in clicks)
    frames = ", ".join(str(frame) for frame in sorted({click.frame for click in clicks}))
    return f"{len(clicks)} point{'s' if len(clicks) != 1 else ''} ({positive} on the person, {len(clicks) - positive} off) on frame{'s' if ',' in frames else ''} {frames}"


__all__ = [
    "Click",
    "click_at",
    "conditioning_size",
    "describe_clicks",
    "draw_clicks",
    "dump_clicks",
    "parse_clicks",
    "person_point",
    "read_frame",
    "to_point_prompts",
]
