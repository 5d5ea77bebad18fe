"""The driving clip decoded once, on a worker thread, and resized where the models run.

Preprocessing reads the driving video once: a worker thread decodes and resamples it (`iter_video`) while the
models work on the frames already decoded (`decode_batches`), and each mode keeps the frames its later stages
need. Batches of frames are resized on the device they are on (`resize_frames`, `letterbox_frames`): on a GPU
with torch, on the CPU with OpenCV exactly as `sizing.resize_frame` and `sizing.letterbox` do, so CPU results
are those of the single-frame functions.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ..video import iter_video
from .sizing import Interpolation, letterbox, letterbox_fit, resize_frame

T = TypeVar("T")

PREFETCH_FRAMES = 32
"""Decoded frames that may wait for the models: 200 MB of 1080p frames, enough to keep the decoder busy while
a batch is on the GPU."""


def prefetch(items: Iterable[T], depth: int = PREFETCH_FRAMES) -> Iterator[T]:
    """Iterate ``items`` on a worker thread, at most ``depth`` items ahead of the caller.

    An exception of the worker is raised in the caller. When the caller stops early (or fails), the worker
    stops at its next item and ``items`` is closed (a decoder closes its file).
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as error:  # handed to the caller, who raises it
            put(("error", error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="wan-animate-decode", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join()


def decode_batches(
    path: str | Path, *, batch: int, device: str | torch.device, size: tuple[int, int] | None = None, **decode
) -> Iterator[torch.Tensor]:
    """The clip as consecutive ``(B, H, W, 3)`` uint8 batches on ``device``, decoded on a worker thread.

    Args:
        path: The driving video.
        batch: Frames per batch (the last may be shorter).
        device: Where the batches go (one upload per batch).
        size: ``(height, width)`` the decoder resizes frames to (OpenCV, on the worker thread), or ``None`` for
            the source size.
        **decode: `iter_video`'s ``fps``, ``start``, ``end``, ``max_seconds``.

    Raises:
        WanAnimateError: What `iter_video` raises (unreadable file, clip too long, ...).
    """
    frames: list[np.ndarray] = []
    for frame in prefetch(iter_video(path, size=size, **decode)):
        frames.append(frame)
        if len(frames) == batch:
            yield _to_device(frames, device)
            frames = []
    if frames:
        yield _to_device(frames, device)


def _to_device(frames: list[np.ndarray], device: str | torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).to(device)


def resize_frames(
    frames: torch.Tensor, size: tuple[int, int], interpolation: Interpolation = "auto"
) -> torch.Tensor:
    """Resize a ``(B, H, W, 3)`` uint8 batch to ``size`` on its own device (stretching if the aspect differs).

    On the CPU each frame goes through `sizing.resize_frame` (OpenCV). On a GPU: area averaging when shrinking
    (``"area"``, or ``"auto"`` with fewer pixels; OpenCV's INTER_AREA weighs the source pixels cut by a bin edge
    by the part inside, torch's adaptive pooling counts them whole) and bilinear otherwise, rounded back to
    uint8.

    Returns:
        ``(B, height, width, 3)`` uint8 on the same device; ``frames`` itself when it already has that size.
    """
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    if frames.device.type == "cpu":
        return torch.from_numpy(np.stack([resize_frame(frame, size, interpolation) for frame in frames.numpy()]))
    return _torch_resize(frames, size, interpolation)


def letterbox_frames(
    frames: torch.Tensor, size: tuple[int, int], interpolation: Interpolation = "bilinear"
) -> torch.Tensor:
    """`sizing.letterbox` for a ``(B, H, W, 3)`` uint8 batch, on its own device (see `resize_frames`)."""
    if frames.device.type == "cpu":
        return torch.from_numpy(np.stack([letterbox(frame, size, interpolation) for frame in frames.numpy()]))
    return _torch_letterbox(frames, size, interpolation)


def _torch_resize(frames: torch.Tensor, size: tuple[int, int], interpolation: Interpolation) -> torch.Tensor:
    """The GPU path of `resize_frames`, in float32 (plain torch: it runs, and is tested, on the CPU too)."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    shrinking = size[0] * size[1] < frames.shape[1] * frames.shape[2]
    pixels = frames.permute(0, 3, 1, 2).float()
    if interpolation == "area" or (interpolation == "auto" and shrinking):
        resized = F.interpolate(pixels, size=size, mode="area")
    else:  # half-pixel centres, as OpenCV's INTER_LINEAR
        resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _torch_letterbox(frames: torch.Tensor, size: tuple[int, int], interpolation: Interpolation) -> torch.Tensor:
    """The GPU path of `letterbox_frames` (plain torch, see `_torch_resize`)."""
    fitted_h, fitted_w, top, left = letterbox_fit(tuple(frames.shape[1:3]), size)
    boxed = frames.new_zeros((len(frames), *size, 3))
    boxed[:, top : top + fitted_h, left : left + fitted_w] = _torch_resize(frames, (fitted_h, fitted_w), interpolation)
    return boxed


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down (never up) so its longer side is at most ``max_side``, each side rounded."""
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
