"""ZeroGPU durations: the GPU seconds each action asks `spaces.GPU` for, estimated from the call's own arguments.

On ZeroGPU a decorated function asks for a time slot before it runs; asking for too little ends the job, too
much spends the visitor's quota and queue position. Each estimate reads what the call will do (frames after
trimming, resolution, the preset's steps) from its arguments, before any work starts; the per-frame and per-step
figures are the measured ones in `wan_animate.presets`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..generate import GenerationSettings
from ..jobs import open_job
from ..presets import (
    DRAFT_RESOLUTION,
    draft_settings,
    draft_span,
    estimate_frames,
    estimate_generation_seconds,
    estimate_preprocess_seconds,
    gpu_duration,
)
from ..video import probe_video
from .inputs import frame_rate, generation_settings, optional_end

logger = logging.getLogger("wan_animate.app")

DEFAULT_SECONDS = 60
"""Asked for when an estimate fails: the action then fails on the same bad input with its own message."""


def duration_of(action: Callable, estimate: Callable[[dict[str, Any]], float]) -> Callable[..., int]:
    """The ``duration`` callable of ``spaces.GPU`` for ``action``: called with the action's arguments, it returns
    `gpu_duration` of ``estimate`` (given the arguments by name, defaults filled in)."""
    signature = inspect.signature(action)

    def duration(*args, **kwargs) -> int:
        try:
            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            return gpu_duration(estimate(dict(bound.arguments)))
        except Exception:  # a bad input fails inside the action with its own message
            logger.exception("Could not estimate the GPU time; asking for %d s", DEFAULT_SECONDS)
            return DEFAULT_SECONDS

    return duration


class GpuTime:
    """Estimates of the actions' GPU seconds, by kind of action (the argument names are the endpoints').

    Args:
        work_root: The app's job folder root (a generation reads its job's frame count and resolution).
        fast_available: Whether the app has a few-step LoRA (the fast preset and drafts use it).
    """

    def __init__(self, work_root: Path, fast_available: bool) -> None:
        self.work_root = work_root
        self.fast_available = fast_available

    def extract(self, arguments: dict[str, Any]) -> float:
        """An extraction: preprocessing of the trimmed clip's frames."""
        return estimate_preprocess_seconds(self._frames(arguments), _mode(arguments))

    def generate(self, arguments: dict[str, Any]) -> float:
        """A generation from an extracted job."""
        job = open_job(self.work_root, arguments["job_id"])
        return estimate_generation_seconds(job.record.num_frames or 1, job.record.resolution, self._settings(arguments))

    def oneshot(self, arguments: dict[str, Any]) -> float:
        """Extraction then generation, in one call."""
        frames = self._frames(arguments)
        generation = estimate_generation_seconds(frames, arguments["resolution"], self._settings(arguments))
        return estimate_preprocess_seconds(frames, _mode(arguments)) + generation

    def draft(self, arguments: dict[str, Any]) -> float:
        """A draft: the first segment's span extracted and generated at 480p, with the fast preset if there is one."""
        frames = self._frames(arguments, draft=True)
        settings = draft_settings(self._settings(arguments), self.fast_available)
        generation = estimate_generation_seconds(frames, DRAFT_RESOLUTION, settings)
        return estimate_preprocess_seconds(frames, _mode(arguments)) + generation

    def _frames(self, arguments: dict[str, Any], draft: bool = False) -> int:
        info = probe_video(arguments["video"])
        fps = frame_rate(arguments.get("fps", "30"))
        start, end = float(arguments.get("start") or 0.0), optional_end(arguments.get("end"))
        if draft:
            start, end = draft_span(start, end, fps or info.fps)
        return estimate_frames(info.duration, info.fps, fps, start, end)

    def _settings(self, arguments: dict[str, Any]) -> GenerationSettings:
        """The settings the call will run with (the preset sets the steps)."""
        return generation_settings(
            arguments["preset"], arguments["steps"], arguments["seed"], arguments["guidance"], arguments["overlap"],
            arguments["color_match"], fast_available=self.fast_available,
        )


def _mode(arguments: dict[str, Any]) -> str:
    """Only Animation's extraction has ``retarget``; only Replacement's has the mask settings."""
    return "animate" if "retarget" in arguments else "replace"
