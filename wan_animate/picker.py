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
from .validation import POINT_FRAME, POINT_X, POINT_Y
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


MAX_POINTS = 100
"""Most clicks one job takes: SAM2 is prompted with every one of them, and a person needs a handful."""
MAX_POINTS_TEXT = 20_000
"""Longest points JSON accepted, in characters (100 clicks as `dump_clicks` writes them take about 8,500)."""

_POINTS_FORMAT = 'Points must be a JSON list like [{"frame": 0, "x": 0.5, "y": 0.4, "positive": true}] (x and y as fractions of the frame)'


def parse_clicks(value: str | list | None) -> list[Click]:
    """Read clicks from JSON text or a list: objects ``{"frame", "x", "y", "positive"}`` or ``[frame, x, y, positive]``.

    Raises:
        WanAnimateError: Malformed or oversized JSON, more than `MAX_POINTS` clicks, or a frame, x or y outside its
            range (`wan_animate.validation`).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str) and len(value) > MAX_POINTS_TEXT:
        raise WanAnimateError(f"Points are {len(value)} characters of JSON; at most {MAX_POINTS_TEXT} are accepted.")
    try:
        items = json.loads(value) if isinstance(value, str) else value
    except ValueError as error:
        raise WanAnimateError(f"{_POINTS_FORMAT}: {error}.") from None
    except RecursionError:  # nesting deeper than the parser's stack
        raise WanAnimateError(f"{_POINTS_FORMAT}: the JSON is nested too deeply.") from None
    if not isinstance(items, (list, tuple)):
        raise WanAnimateError(f"{_POINTS_FORMAT}: got {type(items).__name__}.")
    if len(items) > MAX_POINTS:
        raise WanAnimateError(f"{len(items)} points were given; at most {MAX_POINTS} are accepted.")
    return [_click(item) for item in items]


def _click(item: Any) -> Click:
    if isinstance(item, dict):
        if not {"frame", "x", "y"} <= item.keys():
            raise WanAnimateError(f"{_POINTS_FORMAT}: a point lacks frame, x or y.")
        frame, x, y, positive = item["frame"], item["x"], item["y"], item.get("positive", True)
    elif isinstance(item, (list, tuple)) and len(item) in (3, 4):
        frame, x, y, positive = (*item, True)[:4]
    else:
        raise WanAnimateError(f"{_POINTS_FORMAT}: got the point {str(item)[:40]!r}.")
    if not isinstance(positive, (bool, int)) or isinstance(positive, int) and positive not in (0, 1):
        raise WanAnimateError(f"A point's positive must be true or false; got {str(positive)[:40]!r}.")
    return Click(POINT_FRAME.check(frame), POINT_X.check(x), POINT_Y.check(y), bool(positive))


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
    index = POINT_FRAME.check(index)

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
