"""GPU seconds: what each GPU call asks `spaces.GPU` for, and what the page says a generation will take.

On ZeroGPU a decorated function asks for a time slot before it runs; asking for too little ends the job, too
much spends the visitor's quota and queue position, and more than `zerogpu.MAX_CALL_SECONDS` is refused. An
extraction's estimate reads what the call will do (frames after trimming, the mode) from its arguments, before
any work starts; a generation's calls are planned from the seconds of a segment (`zerogpu.plan_calls`), measured
by the job's earlier calls when it has some, else the figures of `wan_animate.presets`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from ..checkpoint import Checkpoint
from ..generate import GenerationSettings, estimate_segment_seconds
from ..presets import (
    draft_span,
    estimate_frames,
    estimate_generation_seconds,
    estimate_preprocess_seconds,
    estimate_seconds_per_segment,
    format_minutes,
    gpu_duration,
)
from ..video import probe_video
from .inputs import frame_rate, optional_end
from .zerogpu import MAX_CALL_SECONDS, plan_calls, quota_warning

logger = logging.getLogger("wan_animate.app")

DEFAULT_SECONDS = 60
"""Asked for when an estimate fails: the action then fails on the same bad input with its own message."""


def duration_of(action: Callable, estimate: Callable[[dict[str, Any]], float]) -> Callable[..., int]:
    """The ``duration`` callable of ``spaces.GPU`` for ``action``: called with the action's arguments, it returns
    `gpu_duration` of ``estimate`` (given the arguments by name, defaults filled in), at most `MAX_CALL_SECONDS`
    (ZeroGPU refuses longer calls before they start; one that runs past its duration is aborted)."""
    signature = inspect.signature(action)

    def duration(*args, **kwargs) -> int:
        try:
            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            seconds = gpu_duration(estimate(dict(bound.arguments)))
        except Exception:  # a bad input fails inside the action with its own message
            logger.exception("Could not estimate the GPU time; asking for %d s", DEFAULT_SECONDS)
            return DEFAULT_SECONDS
        if seconds > MAX_CALL_SECONDS:
            logger.warning("Estimated %d s for %s; asking ZeroGPU for its longest call, %d s", seconds, action.__name__, MAX_CALL_SECONDS)
        return min(seconds, MAX_CALL_SECONDS)

    return duration


def extract_seconds(arguments: dict[str, Any]) -> float:
    """An extraction (the endpoints' argument names): preprocessing of the trimmed clip's frames (a draft's: of
    its first segment's span)."""
    info = probe_video(arguments["video"])
    fps = frame_rate(arguments.get("fps", "30"))
    start, end = float(arguments.get("start") or 0.0), optional_end(arguments.get("end"))
    if arguments.get("draft"):
        start, end = draft_span(start, end, fps or info.fps)
    frames = estimate_frames(info.duration, info.fps, fps, start, end)
    return estimate_preprocess_seconds(frames, arguments["mode"])


def segment_seconds(resolution: str, settings: GenerationSettings, checkpoint: Checkpoint | None = None) -> float:
    """GPU seconds of one segment of a job: the median of its segments measured so far (``checkpoint``, from its
    earlier calls), else from `presets.STEP_TIMES`."""
    if checkpoint is not None and checkpoint.times:
        measured = estimate_segment_seconds(checkpoint.times, settings.num_inference_steps)
        if measured is not None:
            return measured
    return estimate_seconds_per_segment(resolution, settings)


def describe_generation(frames: int, resolution: str, settings: GenerationSettings, *, zerogpu: bool) -> str:
    """What the page says before a generation starts: its GPU time, on ZeroGPU in how many calls, and whether a
    visitor's daily quota can plausibly cover it.

    Raises:
        WanAnimateError: On ZeroGPU, one segment does not fit in a call.
    """
    segments = settings.plan(frames).num_segments
    job = f"{frames} frames at {resolution}, {segments} segment{'s' if segments != 1 else ''} of {settings.num_inference_steps} steps"
    if not zerogpu:
        seconds = estimate_generation_seconds(frames, resolution, settings, include_load=False)
        return f"**Generation:** {format_minutes(seconds)} of GPU time ({job}; H200 figures)."
    plan = plan_calls(segments, estimate_seconds_per_segment(resolution, settings))
    line = f"**Generation on ZeroGPU:** {plan.describe()} of at most {MAX_CALL_SECONDS} s ({job})."
    warning = quota_warning(plan.seconds)
    return f"{line}\n\n⚠️ {warning}" if warning else line
