"""Setting presets, the draft job, and GPU-time estimates (used by the app and for ZeroGPU durations).

The fast preset runs a few-step distillation LoRA with the schedule its authors trained it for. The default
is lightx2v's step- and CFG-distilled Wan2.1 I2V 14B 480p model as a LoRA, in the file that community
Wan-Animate workflows load (Kijai's WanVideoWrapper example for Wan-Animate). For their I2V distillation LoRA
lightx2v document (ModelTC/LightX2V ``configs/distill/wan_i2v_distill_4step_cfg_lora.json`` and
``docs/EN/source/method_tutorials/step_distill.md``): strength 1.0, 4 steps at the timesteps 1000, 750, 500,
250 (0-1000 training scale, before the shift), shift 5, no CFG, and an LCM sampler: predict the clean latent
at each timestep, then re-noise it to the next one.

The time figures are per denoising step and per segment, measured for Wan2.2-Animate-14B in bf16 on one
H100 with everything on the GPU; `benchmarks/` refines them. They are estimates for scheduling (a ZeroGPU
job must say up front how long it will hold the GPU), not promises.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from .errors import WanAnimateError
from .generate import GenerationSettings
from .progress import format_minutes

if TYPE_CHECKING:
    import torch
    from diffusers import WanAnimatePipeline

Resolution = Literal["720p", "480p"]

FAST_ADAPTER = "fast"
"""Adapter name under which a few-step LoRA (the fast preset) is loaded on the pipeline."""

FAST_LORA_REPO = "Kijai/WanVideo_comfy"
FAST_LORA_FILE = "Lightx2v/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"
DEFAULT_FAST_LORA = f"{FAST_LORA_REPO}::{FAST_LORA_FILE}"
"""lightx2v's Wan2.1 I2V 14B 480p step + CFG distillation as a rank-64 bf16 LoRA in ComfyUI key format, from
Kijai's WanVideo_comfy repository: the file Wan-Animate workflows load. (lightx2v's own
``Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors`` also holds modulation diffs, ``diff_m``,
that a LoRA on diffusers' transformer cannot carry.)"""

FAST_LORA_WEIGHT = 1.0
"""Strength of the few-step LoRA: lightx2v's documented strength for its 4-step schedule (Kijai's Wan-Animate
example uses 1.2, but with 6 dpm++_sde steps, not this schedule)."""


@functools.cache
def _fixed_step_scheduler_class() -> type:
    """diffusers' `FlowMatchLCMScheduler` on a fixed timestep list (defined on first use: diffusers loads late).

    `WanAnimatePipeline` calls ``scheduler.set_timesteps(num_inference_steps)`` and ``scheduler.step(...)``
    without timesteps, sigmas or a generator, and no stock scheduler config gives lightx2v's timesteps from a
    step count, so this subclass keeps the list in its config and draws its re-noising from the job's generator.
    """
    from diffusers.configuration_utils import register_to_config
    from diffusers.schedulers.scheduling_flow_match_lcm import FlowMatchLCMScheduler

    class FixedStepFlowMatchLCMScheduler(FlowMatchLCMScheduler):
        """Flow-matching LCM steps at fixed, shifted timesteps (lightx2v's step-distillation sampler)."""

        @register_to_config
        def __init__(self, denoising_timesteps: tuple[float, ...], shift: float, num_train_timesteps: int = 1000):
            super().__init__(num_train_timesteps=num_train_timesteps, shift=shift)
            self.generator: torch.Generator | None = None

        def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
            fixed = self.config.denoising_timesteps
            if num_inference_steps not in (None, len(fixed)):
                raise ValueError(f"This schedule runs exactly the {len(fixed)} timesteps {list(fixed)}.")
            # Unshifted sigmas t / T; the parent shifts them, uses sigma * T as timesteps and appends sigma 0.
            super().set_timesteps(device=device, sigmas=[t / self.config.num_train_timesteps for t in fixed])

        def step(
            self,
            model_output: torch.Tensor,
            timestep: float | torch.Tensor,
            sample: torch.Tensor,
            generator: torch.Generator | None = None,
            return_dict: bool = True,
        ) -> Any:
            # The pipeline passes no generator; the job's keeps a seed's video reproducible.
            generator = generator if generator is not None else self.generator
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)

    return FixedStepFlowMatchLCMScheduler


@dataclass(frozen=True)
class FewStepSchedule:
    """The sampling a few-step distillation LoRA was trained for (a `JobScheduler` for `GenerationSettings`).

    Attributes:
        denoising_timesteps: Timesteps on the 0-1000 training scale before the shift, one per step
            (lightx2v's ``denoising_step_list``).
        shift: Flow shift applied to them: sigma = shift * s / (1 + (shift - 1) * s) with s = t / 1000
            (lightx2v's ``sample_shift``).
        num_train_timesteps: The training scale of the timesteps.
    """

    denoising_timesteps: tuple[float, ...]
    shift: float
    num_train_timesteps: int = 1000

    @property
    def steps(self) -> int:
        """Denoising steps per segment: one per timestep."""
        return len(self.denoising_timesteps)

    def check(self, num_inference_steps: int) -> None:
        """Raise `WanAnimateError` unless ``num_inference_steps`` is this schedule's step count."""
        if num_inference_steps != self.steps:
            raise WanAnimateError(
                f"The few-step LoRA runs exactly {self.steps} steps (timesteps "
                f"{', '.join(f'{t:g}' for t in self.denoising_timesteps)}), not {num_inference_steps}: "
                "use the fast preset as it is, or the quality preset for other step counts."
            )

    def build(self, generator: torch.Generator) -> Any:
        """A new scheduler for one pipeline call, re-noising from ``generator`` (the job's)."""
        scheduler = _fixed_step_scheduler_class()(
            denoising_timesteps=tuple(float(t) for t in self.denoising_timesteps),
            shift=self.shift,
            num_train_timesteps=self.num_train_timesteps,
        )
        scheduler.generator = generator
        return scheduler


LIGHTX2V_SCHEDULE = FewStepSchedule(denoising_timesteps=(1000.0, 750.0, 500.0, 250.0), shift=5.0)
"""lightx2v's documented schedule for its Wan2.1 step-distillation LoRAs (4 LCM steps, shift 5)."""


@dataclass(frozen=True)
class Preset:
    """A named choice of steps, optionally with the few-step LoRA and its schedule switched on.

    Attributes:
        name: Key used by the app and its API (``"quality"`` or ``"fast"``).
        label: What the app shows.
        steps: Denoising steps per segment.
        uses_fast_lora: Whether the few-step LoRA must be loaded and is switched on.
        fast_lora_weight: Weight of the few-step adapter in this preset (0 = off).
        guidance_scale: Guidance the preset requires (1.0 for a CFG-distilled LoRA); ``None`` keeps the job's.
        schedule: The schedule the few-step LoRA was trained for; ``None`` keeps the model's own scheduler.
    """

    name: str
    label: str
    steps: int
    uses_fast_lora: bool
    fast_lora_weight: float = 0.0
    guidance_scale: float | None = None
    schedule: FewStepSchedule | None = None

    def __post_init__(self) -> None:
        if self.schedule is not None:
            self.schedule.check(self.steps)


PRESETS: dict[str, Preset] = {
    # The model's own schedule (contract: 20 steps, flow shift 5, no CFG).
    "quality": Preset("quality", "Quality (20 steps)", 20, False),
    # The few-step LoRA is step- and CFG-distilled: its 4 trained timesteps, no CFG.
    "fast": Preset(
        "fast", "Fast (4 steps, few-step LoRA)", LIGHTX2V_SCHEDULE.steps, True,
        fast_lora_weight=FAST_LORA_WEIGHT, guidance_scale=1.0, schedule=LIGHTX2V_SCHEDULE,
    ),
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
    """LoRA weights for a job: the few-step adapter at its weight for the fast preset, off (0) otherwise."""
    if not fast_lora_loaded:
        return {}
    return {FAST_ADAPTER: preset.fast_lora_weight if preset.uses_fast_lora else 0.0}


def apply_preset(settings: GenerationSettings, preset: Preset, fast_lora_loaded: bool) -> GenerationSettings:
    """The job's settings under ``preset``: its LoRA weight, schedule and guidance (a copy; steps as below).

    A preset with a schedule also sets the steps (a few-step LoRA runs only its trained timesteps) and the
    guidance it needs, and turns any step cache off; the quality preset keeps the job's steps and guidance and the model's own scheduler,
    and switches the few-step adapter off.

    Raises:
        WanAnimateError: ``preset`` needs the few-step LoRA and it is not loaded.
    """
    if preset.uses_fast_lora and not fast_lora_loaded:
        raise WanAnimateError(f"The {preset.name} preset needs the few-step LoRA; load it first (ensure_fast_lora).")
    changes: dict[str, Any] = {
        "lora_weights": {**settings.lora_weights, **preset_lora_weights(preset, fast_lora_loaded)},
        "scheduler": preset.schedule,
    }
    if preset.schedule is not None:
        # A few-step schedule has no near-repeated steps for a step cache to skip: it would only cost quality.
        changes["num_inference_steps"] = preset.steps
        changes["step_cache"] = "none"
    if preset.guidance_scale is not None:
        changes["guidance_scale"] = preset.guidance_scale
    return replace(settings, **changes)


def parse_lora_source(spec: str) -> tuple[str, str | None]:
    """Split ``"hub/repo::file.safetensors"`` into ``(source, file name)``; a plain path has no file name."""
    source, _, file_name = spec.partition("::")
    if not source:
        raise WanAnimateError(f"LoRA {spec!r}: give a hub id with ::file name, or a file path.")
    return source, file_name or None


def ensure_fast_lora(pipeline: WanAnimatePipeline, spec: str = DEFAULT_FAST_LORA) -> None:
    """Load the few-step LoRA ``spec`` (``hub/repo::file`` or a file) as adapter `FAST_ADAPTER`, once.

    By default it is `DEFAULT_FAST_LORA`, by repo id and file name through the huggingface_hub cache. It is
    loaded switched off (weight 0); each job's `preset_lora_weights` turns it on or off. Callers that share one
    pipeline between threads hold a lock around this call.
    """
    from .lora import load_lora, loaded_adapters

    if FAST_ADAPTER not in loaded_adapters(pipeline):
        source, file_name = parse_lora_source(spec)
        load_lora(pipeline, source, weight_name=file_name, adapter_name=FAST_ADAPTER, weight=0.0)


def ensure_relighting_lora(pipeline: WanAnimatePipeline, source: str) -> None:
    """Load the relighting LoRA from ``source`` (a file, a folder, or a hub id), once, switched off.

    Without this, generation loads the hub's ``relighting_lora.ckpt`` the first time Replacement needs it;
    an app pointed at a local copy (or a test's tiny one) loads that instead.
    """
    from .generate import RELIGHT_ADAPTER
    from .lora import load_relighting_lora, loaded_adapters

    if RELIGHT_ADAPTER not in loaded_adapters(pipeline):
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
    """Settings of a draft: the fast preset when the few-step LoRA is there, else the job's own settings."""
    if fast_lora:
        return apply_preset(settings, PRESETS["fast"], fast_lora_loaded=True)
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


# Measured on one H200 through the segment loop, mode "none", plain (uncompiled) steps, 10-s clips (4 segments):
# benchmarks/RESULTS.md, section 6. "Per segment" is everything outside the steps (VAE encodes and decode, the
# encoders, the CPU work, and the writing the loop could not overlap), divided by the segments.
STEP_TIMES: dict[str, StepTimes] = {
    "720p": StepTimes(per_step=12.8, per_segment=64.5 / 4),
    "480p": StepTimes(per_step=3.6, per_segment=28.75 / 4),
}

MODEL_LOAD_SECONDS = 90.0
"""Margin for loading the pipeline (and LoRAs) onto the GPU when the job finds it not yet loaded."""

PREPROCESS_SECONDS_PER_FRAME = {"animate": 0.04, "replace": 0.15}
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
    segments = settings.plan(num_frames).num_segments
    return segments * estimate_seconds_per_segment(resolution, settings) + (MODEL_LOAD_SECONDS if include_load else 0.0)


def estimate_seconds_per_segment(resolution: str, settings: GenerationSettings) -> float:
    """GPU seconds of one segment (its steps, VAE work and writing) from `STEP_TIMES`.

    Raises:
        WanAnimateError: Unknown resolution.
    """
    if resolution not in STEP_TIMES:
        raise WanAnimateError(f"Unknown resolution {resolution!r}: use 720p or 480p.")
    times = STEP_TIMES[resolution]
    # Above 1, classifier-free guidance runs the transformer twice per step.
    step_seconds = times.per_step * (2.0 if settings.guidance_scale > 1 else 1.0)
    return settings.num_inference_steps * step_seconds + times.per_segment


def estimate_preprocess_seconds(num_frames: int, mode: str) -> float:
    """GPU seconds preprocessing will take for ``num_frames`` conditioning frames in ``mode``."""
    return num_frames * PREPROCESS_SECONDS_PER_FRAME.get(mode, PREPROCESS_SECONDS_PER_FRAME["replace"]) + PREPROCESS_LOAD_SECONDS


def estimate_frames(duration: float, source_fps: float, fps: float | None, start: float = 0.0, end: float | None = None) -> int:
    """Conditioning frames a trimmed clip will give (``fps=None`` keeps the source rate), before decoding."""
    clip_end = duration if end is None else min(end, duration)
    seconds = max(0.0, clip_end - max(0.0, start))
    return max(1, math.floor(seconds * (fps or source_fps) + 1e-9))


GPU_HEADROOM = 1.2
"""A ZeroGPU call asks for its estimate times this: one that runs past its duration is aborted."""


def gpu_duration(seconds: float, *, minimum: int = 60) -> int:
    """A ZeroGPU ``duration`` (whole seconds) for an estimate: `GPU_HEADROOM`, at least ``minimum``."""
    return max(minimum, math.ceil(seconds * GPU_HEADROOM))


__all__ = [
    "DEFAULT_FAST_LORA",
    "DRAFT_RESOLUTION",
    "FAST_ADAPTER",
    "FAST_LORA_FILE",
    "FAST_LORA_REPO",
    "FAST_LORA_WEIGHT",
    "GPU_HEADROOM",
    "LIGHTX2V_SCHEDULE",
    "PRESETS",
    "STEP_TIMES",
    "FewStepSchedule",
    "Preset",
    "StepTimes",
    "apply_preset",
    "available_presets",
    "draft_settings",
    "draft_span",
    "ensure_fast_lora",
    "ensure_relighting_lora",
    "estimate_frames",
    "estimate_generation_seconds",
    "estimate_preprocess_seconds",
    "estimate_seconds_per_segment",
    "format_minutes",
    "get_preset",
    "gpu_duration",
    "parse_lora_source",
    "preset_lora_weights",
]
