"""ZeroGPU: a generation job as a chain of GPU calls of at most 300 s each.

On ZeroGPU (a Space whose ``SPACES_ZERO_GPU`` is set) every `spaces.GPU` call asks for its duration before it
runs: at most `MAX_CALL_SECONDS` (the platform refuses a longer one before anything runs), counted against the
visitor's daily quota. A job that needs longer runs as several calls, each doing as many whole segments as fit
and leaving the job resumable (the segment engine's checkpoint): `plan_calls` splits a job's segments into
calls, `quota_warning` flags a job that a visitor's quota can hardly cover, and `is_platform_refusal` /
`refusal_message` turn the platform's refusals into what the visitor can do. A call runs in a worker process that
the app's events do not reach: a stop reaches it through a file in the job's state folder (`STOP_FILE`,
`stop_file_event`). Elsewhere a job is one call (`LOCAL_CALL`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import WanAnimateError
from ..models import on_zerogpu
from ..presets import GPU_HEADROOM, gpu_duration
from ..progress import format_minutes

MAX_CALL_SECONDS = 300
"""The longest duration a ZeroGPU call may ask for (larger requests are refused with "ZeroGPU illegal
duration"): `spaces` 0.51's ``client.schedule``; Hugging Face staff: "5 minutes is the maximum time that can be
requested at once"."""

CALL_START_SECONDS = 20.0
"""Seconds of a call outside its segments: the worker's start (a fork of the app's process, the weights moved
onto the GPU slice) and the job's setup on the pipeline. An assumption, not measured on ZeroGPU."""

PRO_DAILY_SECONDS = 40 * 60
"""A PRO account's daily ZeroGPU quota: ``PRO_QUOTA_MINUTES = 40`` in `spaces` 0.51 (``spaces/zero/client.py``)."""

FREE_DAILY_SECONDS = PRO_DAILY_SECONDS // 8
"""A free account's daily quota, assumed: Hugging Face's ZeroGPU page says PRO users get 8x the daily quota of
free ones. Visitors without an account get less; the platform does not tell an app a visitor's quota."""


@dataclass(frozen=True)
class GpuCall:
    """One GPU call of a generation job.

    Attributes:
        segments: Whole segments the call may generate (``generate_video``'s ``max_segments``); ``None``: all
            that are left.
        seconds: The duration the call asks ZeroGPU for; ``None`` off ZeroGPU (no limit).
    """

    segments: int | None = None
    seconds: int | None = None

    @property
    def budget(self) -> float | None:
        """Seconds after the call's start by which its last segment must end (``generate_video``'s deadline,
        counted from when the call's code starts): its duration less the worker's start."""
        return None if self.seconds is None else self.seconds - CALL_START_SECONDS


LOCAL_CALL = GpuCall()
"""A job off ZeroGPU: one call, every segment, no deadline."""


@dataclass(frozen=True)
class CallPlan:
    """How a job's remaining segments are split into ZeroGPU calls.

    Attributes:
        calls: The calls, in order (every one asks for at most `MAX_CALL_SECONDS`).
    """

    calls: tuple[GpuCall, ...]

    @property
    def seconds(self) -> int:
        """GPU seconds the calls ask for in all (what counts against the visitor's quota)."""
        return sum(call.seconds or 0 for call in self.calls)

    def describe(self) -> str:
        """``"about 4 min of GPU time in 2 calls"``, for the page."""
        count = len(self.calls)
        return f"{format_minutes(self.seconds)} of GPU time in {count} call{'s' if count != 1 else ''}"


def call_seconds(segments: int, segment_seconds: float) -> int:
    """The duration a call of ``segments`` segments asks for: the estimate with its start, as every `spaces.GPU`
    duration (`presets.gpu_duration`: times `GPU_HEADROOM`, since a call that runs past its duration is aborted)."""
    return gpu_duration(CALL_START_SECONDS + segments * segment_seconds, minimum=0)


def segments_per_call(segment_seconds: float) -> int:
    """The most whole segments one call of at most `MAX_CALL_SECONDS` holds (0: not even one)."""
    if segment_seconds <= 0:
        raise ValueError(f"A segment's seconds must be positive, got {segment_seconds}.")
    fit = math.floor((MAX_CALL_SECONDS / GPU_HEADROOM - CALL_START_SECONDS) / segment_seconds)
    while fit > 0 and call_seconds(fit, segment_seconds) > MAX_CALL_SECONDS:  # rounding up may tip it over
        fit -= 1
    return fit


def plan_calls(segments_left: int, segment_seconds: float) -> CallPlan:
    """Split ``segments_left`` segments of ``segment_seconds`` GPU seconds each into calls of at most
    `MAX_CALL_SECONDS`, as many whole segments per call as fit, the last call only as long as it needs.

    Raises:
        WanAnimateError: One segment does not fit in a call (the message says what makes segments shorter).
    """
    per_call = segments_per_call(segment_seconds)
    if per_call < 1:
        raise WanAnimateError(
            f"One segment at these settings needs about {segment_seconds:.0f} s of GPU time, more than a ZeroGPU "
            f"call can hold ({MAX_CALL_SECONDS} s, with the call's start and a margin): choose the fast preset, "
            "480p, fewer steps or guidance 1."
        )
    sizes = [per_call] * (segments_left // per_call) + ([segments_left % per_call] if segments_left % per_call else [])
    calls = tuple(GpuCall(segments=size, seconds=call_seconds(size, segment_seconds)) for size in sizes)
    return CallPlan(calls=calls)


def quota_warning(seconds: float) -> str | None:
    """A warning when ``seconds`` of GPU time are more than a visitor's daily quota can plausibly cover."""
    if seconds <= FREE_DAILY_SECONDS:
        return None
    account = "a PRO account's" if seconds > PRO_DAILY_SECONDS else "a free account's"
    daily = PRO_DAILY_SECONDS if seconds > PRO_DAILY_SECONDS else FREE_DAILY_SECONDS
    return (
        f"More than {account} daily ZeroGPU quota ({format_minutes(daily)}, assumed): the job may stop part-way "
        "(its finished segments are kept). The fast preset, 480p or a shorter clip need less."
    )


STOP_FILE = "stop"
"""Written into a generation's state folder by the app's process to stop the call that works on it: on ZeroGPU
the call runs in a worker process that no `threading.Event` of the app reaches."""

STOP_POLL_SECONDS = 0.2


@contextmanager
def stop_file_event(path: Path) -> Iterator[threading.Event]:
    """An event set as soon as ``path`` exists (checked every `STOP_POLL_SECONDS` while the block runs)."""
    stop, done = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(STOP_POLL_SECONDS):
            if path.exists():
                stop.set()
                return

    watcher = threading.Thread(target=watch, name="wan_animate_stop_file", daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        done.set()
        watcher.join()


REFUSAL_ADVICE = "A shorter clip, 480p or the fast preset needs fewer GPU seconds."


def is_platform_refusal(error: BaseException) -> bool:
    """Whether ``error`` is ZeroGPU's: a refused call (quota, duration, no GPU in time) or an aborted one.

    `spaces` raises them as ``gr.Error`` titled "ZeroGPU quota exceeded", "ZeroGPU illegal duration", "ZeroGPU
    queue timeout", "ZeroGPU worker error" ("GPU task aborted": the call ran past its duration), ...
    """
    return str(getattr(error, "title", "") or "").startswith("ZeroGPU")


def refusal_message(error: BaseException) -> str:
    """The platform's sentence (its text form: `spaces` may send HTML) followed by what the visitor can do."""
    message = str(getattr(error, "message", error)).strip()
    return f"{message.rstrip('.')}. {REFUSAL_ADVICE}"


__all__ = [
    "CALL_START_SECONDS",
    "FREE_DAILY_SECONDS",
    "LOCAL_CALL",
    "MAX_CALL_SECONDS",
    "PRO_DAILY_SECONDS",
    "STOP_FILE",
    "CallPlan",
    "GpuCall",
    "call_seconds",
    "is_platform_refusal",
    "on_zerogpu",
    "plan_calls",
    "quota_warning",
    "refusal_message",
    "segments_per_call",
    "stop_file_event",
]
