"""Conditioning and preview videos encoded on worker threads while preprocessing goes on.

A video whose frames are known (the skeleton once the poses are, the face crops) starts encoding at once, on a
thread of its own, while the caller goes on (SAM2 on the GPU, the next crops). x264 and PyAV release the GIL
while they encode, so the threads run beside the models. The encoder settings are those of every other
intermediate video (`video.FAST_PRESET`, crf 18).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..progress import ProgressCallback
from ..video import FAST_PRESET, write_video

WORKERS = 5
"""Videos encoded at once: every video of a Replacement job (skeleton and face crops during SAM2, then
background, mask and mask preview)."""


class _Cancelled(Exception):
    """Raised inside a writer's frame loop to stop it (another part of the job failed)."""


class VideoWriters:
    """Encodes videos on worker threads; `wait` returns them, or raises the first error.

    Use as a context manager: leaving the block (after moving the written videos out of the folder) removes the
    folder; leaving it on an error elsewhere in the job first stops unfinished videos at their next frame.

    Args:
        folder: Where the videos are written (created).
        fps: Frame rate of every video.
    """

    def __init__(self, folder: str | Path, fps: float) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="wan-animate-write")
        self._videos: dict[str, Future] = {}
        self._cancelled = threading.Event()

    def start(self, name: str, frames: Iterable[np.ndarray]) -> None:
        """Start encoding ``frames`` (an array, or an iterable that makes them as they are encoded) to ``name``.

        Args:
            name: File name in the folder (``src_pose.mp4``, ...).
            frames: RGB uint8 frames, all of one size with even sides.
        """
        if name in self._videos:
            raise ValueError(f"{name} is already being written")
        self._videos[name] = self._pool.submit(
            write_video, self.folder / name, self._until_cancelled(frames), self.fps, preset=FAST_PRESET
        )

    def _until_cancelled(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            if self._cancelled.is_set():
                raise _Cancelled
            yield frame

    def wait(self, progress: ProgressCallback | None = None, description: str = "Writing videos") -> dict[str, Path]:
        """Wait for every video; ``progress(done, total, description)`` after each.

        Returns:
            The written files by name.

        Raises:
            Exception: The first error of a writer (the others are stopped).
        """
        written: dict[str, Path] = {}
        for name, future in self._videos.items():
            written[name] = future.result()
            if progress is not None:
                progress(len(written), len(self._videos), description)
        return written

    def __len__(self) -> int:
        return len(self._videos)

    def __enter__(self) -> "VideoWriters":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self._cancelled.set()
        self._pool.shutdown(wait=True)
        shutil.rmtree(self.folder, ignore_errors=True)  # what was not moved out of it is not wanted
