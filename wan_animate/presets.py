"""Setting presets, the draft job, and GPU-time estimates (used by the app and for ZeroGPU durations).

The time figures are per denoising step and per segment, measured for Wan2.2-Animate-14B in bf16 on one
H100 with everything on the GPU; `benchmarks/` refines them. They are estimates for scheduling (a ZeroGPU
job must say up front how long it will hold the GPU), not promises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from .errors import WanAnimateError
from .generate import GenerationSettings, estimate_steps

if TYPE_CHECKING:
    from diffusers import WanAnimatePipeline

Resolution = Literal["720p", "480p"]

FAST_ADAPTER = "fast"
"""Adapter name under which a few-step LoRA (the fast preset) is loaded on the pipeline."""


@dataclass(frozen=True)
class Preset:
    """A named choice of steps, optionally with the few-step LoRA switched on.

    Attributes:
        name: Key used by the app and its API (``"quality"`` or ``"fast"``).
        label: What the app shows.
        steps: Denoising steps per segment.
        uses_fast_lora: Whether the few-step LoRA must be loaded and is switched on.
    """

    name: str
    label: str
    steps: int
    uses_fast_lora: bool


PRESETS: dict[str, Preset] = {
    # The model's own schedule (contract: 20 steps, flow shift 5, no CFG).
    "quality": Preset("quality", "Quality (20 steps)", 20, False),
    # Few-step distillation LoRAs for Wan2.x (e.g. lightx2v) are trained for 4 steps without CFG.
    "fast": Preset("fast", "Fast (4 steps, few-step LoRA)", 4, True),
}


def available_presets(fast_lora: bool) -> list[Preset]:
    """The presets that can run: ``fast`` only when a few-step LoRA is configured."""
    return [preset for preset in PRESETS.values() if fast_lora or not preset.uses_fast_lora]


def get_preset(name: str, fast_lora: bool) -> Preset:
    """Look a preset up by name.

    Raises:
        WanAnimateError: Unknown name, or ``fast`` without a configured few-step LoRA.
    """
    if name not in PRESETS:
        raise WanAnimateError(f"Unknown preset {name!r}: use one of {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    if preset.uses_fast_lora and not fast_lora:
        raise WanAnimateError(
            "The fast preset needs a few-step LoRA; start the app with --fast-lora (hub id::file or a file path)."
        )
    return preset


def preset_lora_weights(preset: Preset, fast_lora_loaded: bool) -> dict[str, float]:
    """LoRA weights for a job: the few-step adapter on for the fast preset, off (0) otherwise."""
    if not fast_lora_loaded:
        return {}
    return {FAST_ADAPTER: 1.0 if preset.uses_fast_lora else 0.0}


def parse_lora_source(spec: str) -> tuple[str, str | None]:
    """Split ``"hub/repo::file.safetensors"`` into ``(source, file name)``; a plain path has no file name."""
    source, _, file_name = spec.partition("::")
    if not source:
        raise WanAnimateError(f"LoRA {spec!r}: give a hub id with ::file name, or a file path.")
    return source, file_name or None


def ensure_fast_lora(pipeline: "WanAnimatePipeline", spec: str) -> None:
    """Load the few-step LoRA ``spec`` (``hub/repo::file`` or a file) as adapter `FAST_ADAPTER`, once.

    It is loaded switched off (weight 0); each job's `preset_lora_weights` turns it on or off. Callers that
    share one pipeline between threads hold a lock around this call.
    """
    from .lora import load_lora

    loaded = {name for names in pipeline.get_list_adapters().values() for name in names}
    if FAST_ADAPTER not in loaded:
        source, file_name = parse_lora_source(spec)
        load_lora(pipeline, source, weight_name=file_name, adapter_name=FAST_ADAPTER, weight=0.0)


def ensure_relighting_lora(pipeline: "WanAnimatePipeline", source: str) -> None:
    """Load the relighting LoRA from ``source`` (a file, a folder, or a hub id), once, switched off.

    Without this, generation loads the hub's ``relighting_lora.ckpt`` the first time Replacement needs it;
    an app pointed at a local copy (or a test's tiny one) loads that instead.
    """
    from .generate import RELIGHT_ADAPTER
    from .lora import load_relighting_lora

    loaded = {name for names in pipeline.get_list_adapters().values() for name in names}
    if RELIGHT_ADAPTER not in loaded:
        load_relighting_lora(pipeline, source, weight=0.0)


# -- draft --------------------------------------------------------------------------------------------

DRAFT_RESOLUTION: Resolution = "480p"
"""Drafts are made at 480p: about 3.6x fewer seconds per step than 720p."""


def draft_span(start: float, end: float | None, fps: float, segment_frames: int = 77) -> tuple[float, float]:
    """The trim ``(start, end)`` in seconds of a draft: the first generated segment, at most ``segment_frames``.

    Preprocessing is run again on just this span at the draft resolution (stroke widths in the skeleton
    depend on the output size, so 720p conditioning must not be resized down).
    """
    if fps <= 0:
        raise WanAnimateError(f"Frame rate must be positive, got {fps}.")
    # The end is exclusive: frames at start + k / fps for k < segment_frames are kept.
    span_end = start + segment_frames / fps
    return start, span_end if end is None else min(end, span_end)


def draft_settings(settings: GenerationSettings, fast_lora: bool) -> GenerationSettings:
    """Settings of a draft: the fast preset's steps when the few-step LoRA is there, else the job's own steps."""
    if fast_lora:
        fast = PRESETS["fast"]
        return replace(
            settings,
            num_inference_steps=fast.steps,
            guidance_scale=1.0,
            lora_weights={**settings.lora_weights, FAST_ADAPTER: 1.0},
        )
    return replace(settings)


# -- time estimates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTimes:
    """Seconds of GPU time of one generation job's parts, at one resolution.

    Attributes:
        per_step: One denoising step of one segment (one transformer pass without CFG).
        per_segment: Each segment's work outside the steps (VAE encode/decode, text and image encoders).
    """

    per_step: float
    per_segment: float


# Measured on one H100, mode "none", plain (uncompiled) steps: benchmarks/RESULTS.md, "Seconds for the Space's
# spaces.GPU duration estimate". "Per segment" includes the VAE encodes and decode and the video writing.
STEP_TIMES: dict[str, StepTimes] = {
    "720p": StepTimes(per_step=12.9, per_segment=19.9 + 77 * 0.052),
    "480p": StepTimes(per_step=3.6, per_segment=10.8 + 77 * 0.033),
}

MODEL_LOAD_SECONDS = 90.0
"""Margin for loading the pipeline (and LoRAs) onto the GPU when the job finds it not yet loaded."""

PREPROCESS_SECONDS_PER_FRAME = {"animate": 0.06, "replace": 0.2}
"""Detection + pose (+ SAM2 and the background in Replacement) per conditioning frame."""

PREPROCESS_LOAD_SECONDS = 30.0
"""Margin for loading the detector, the pose model and SAM2."""


def estimate_generation_seconds(
    num_frames: int,
    resolution: str,
    settings: GenerationSettings,
    *,
    include_load: bool = True,
) -> float:
    """GPU seconds a generation job will take.

    Args:
        num_frames: Frames of the conditioning.
        resolution: ``"720p"`` or ``"480p"``.
        settings: The job's settings (steps, overlap and guidance count).
        include_load: Add `MODEL_LOAD_SECONDS` for a pipeline that is not loaded yet.

    Raises:
        WanAnimateError: Unknown resolution.
    """
    if resolution not in STEP_TIMES:
        raise WanAnimateError(f"Unknown resolution {resolution!r}: use 720p or 480p.")
    times = STEP_TIMES[resolution]
    steps = estimate_steps(num_frames, settings)
    segments = steps // settings.num_inference_steps
    # Above 1, classifier-free guidance runs the transformer twice per step.
    step_seconds = times.per_step * (2.0 if settings.guidance_scale > 1 else 1.0)
    return steps * step_seconds + segments * times.per_segment + (MODEL_LOAD_SECONDS if include_load else 0.0)


def estimate_preprocess_seconds(num_frames: int, mode: str) -> float:
    """GPU seconds preprocessing will take for ``num_frames`` conditioning frames in ``mode``."""
    return num_frames * PREPROCESS_SECONDS_PER_FRAME.get(mode, PREPROCESS_SECONDS_PER_FRAME["replace"]) + PREPROCESS_LOAD_SECONDS


def estimate_frames(duration: float, source_fps: float, fps: float | None, start: float = 0.0, end: float | None = None) -> int:
    """Conditioning frames a trimmed clip will give (``fps=None`` keeps the source rate), before decoding."""
    clip_end = duration if end is None else min(end, duration)
    seconds = max(0.0, clip_end - max(0.0, start))
    return max(1, math.floor(seconds * (fps or source_fps) + 1e-9))


def gpu_duration(seconds: float, *, minimum: int = 60) -> int:
    """A ZeroGPU ``duration`` (whole seconds) for an estimate: 20 % headroom, at least ``minimum``."""
    return max(minimum, math.ceil(seconds * 1.2))


def format_minutes(seconds: float) -> str:
    """``"about 3 min"``, ``"about 40 s"``: an estimate in words for the page."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    return f"about {round(seconds / 60):.0f} min"


__all__ = [
    "DRAFT_RESOLUTION",
    "FAST_ADAPTER",
    "PRESETS",
    "STEP_TIMES",
    "Preset",
    "StepTimes",
    "available_presets",
    "draft_settings",
    "draft_span",
    "ensure_fast_lora",
    "ensure_relighting_lora",
    "estimate_frames",
    "estimate_generation_seconds",
    "estimate_preprocess_seconds",
    "format_minutes",
    "get_preset",
    "gpu_duration",
    "parse_lora_source",
    "preset_lora_weights",
]
