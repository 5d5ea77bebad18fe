"""Generation: `Conditioning` -> frames -> video file, through diffusers' `WanAnimatePipeline`.

The pipeline generates the clip in segments of 77 frames; each later segment is conditioned on the last 1
(or 5) generated frames of the one before (contract: "Size, frame rate, segments"). This module adds what a
product needs around that call: defaults from the contract, seeds, progress over all segments, cancellation
that frees GPU memory, LoRA switches, colour consistency across segments, and the video file.
"""

from __future__ import annotations

import gc
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
from color_matcher.mvgd_matcher import TransferMVGD
from PIL import Image

from .conditioning import Conditioning
from .errors import GenerationCancelled, WanAnimateError
from .lora import RELIGHT_ADAPTER, load_relighting_lora, loaded_adapters, set_lora_weights
from .progress import ProgressCallback
from .video import write_video

if TYPE_CHECKING:
    from diffusers import WanAnimatePipeline

logger = logging.getLogger("wan_animate")

# Upstream's default prompt for Animate ("the person in the video is moving"); the model was tuned with it.
DEFAULT_PROMPT = "视频中的人在做动作"
# Upstream's shared negative prompt, used only when guidance_scale > 1 (CFG).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


class JobScheduler(Protocol):
    """A schedule other than the model's own for one job, e.g. the fixed steps a few-step LoRA was trained on."""

    def check(self, num_inference_steps: int) -> None:
        """Raise `WanAnimateError` if the schedule cannot run ``num_inference_steps`` steps."""

    def build(self, generator: torch.Generator) -> Any:
        """A new diffusers scheduler for one pipeline call; any noise it draws comes from ``generator``."""


@dataclass
class GenerationSettings:
    """Settings of one generation job; defaults follow the contract (20 steps, shift 5, no CFG).

    Attributes:
        num_inference_steps: Denoising steps per segment.
        guidance_scale: Classifier-free guidance; 1.0 disables it (the model's default). Above 1 the
            unconditional pass uses a blank face video and the negative prompt, and costs twice the time.
        flow_shift: Shift of the model's own flow-matching schedule (a ``scheduler`` carries its own).
        seed: Random seed; ``None`` draws one, which is reported in the result.
        overlap_frames: Frames of the previous segment that condition the next one: 1 or 5.
        segment_frames: Frames per segment (4N + 1).
        prompt: Text prompt; the model follows the pose and face videos far more than the text.
        negative_prompt: Used only with guidance_scale > 1.
        relight: Apply the relighting LoRA so the character takes the scene's light; ``None`` = on in
            Replacement, off in Animation.
        relight_weight: Strength of the relighting LoRA.
        lora_weights: Weights of other LoRA adapters already loaded on the pipeline, by adapter name.
        color_match: Match each segment's colours to the end of the segment before (reduces drift at
            segment boundaries in long clips).
        scheduler: A schedule for this job instead of the model's own (the fast preset's); ``None`` keeps the
            model's scheduler with ``flow_shift``.
        step_cache: Opt-in step cache for this job only (`wan_animate.caching.STEP_CACHES`): ``first_block``,
            ``taylorseer``, or ``mag`` with calibrated ``mag_ratios``. Measured at 480p: FirstBlockCache computed
            12 of 20 steps (1.6x); the quality cost is not known. ``none`` (default) leaves the transformer as
            it is, so a cache enabled directly with `enable_step_cache` (e.g. a MagCache calibration) stays.
        step_cache_options: Options of that cache (e.g. ``threshold``), passed to `enable_step_cache`.
    """

    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    flow_shift: float = 5.0
    seed: int | None = None
    overlap_frames: Literal[1, 5] = 1
    segment_frames: int = 77
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    relight: bool | None = None
    relight_weight: float = 1.0
    lora_weights: dict[str, float] = field(default_factory=dict)
    color_match: bool = False
    scheduler: JobScheduler | None = None
    step_cache: str = "none"
    step_cache_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise `WanAnimateError` for settings the pipeline cannot run (ranges: `wan_animate.validation`)."""
        from . import validation
        from .caching import check_step_cache_name

        validation.STEPS.check(self.num_inference_steps)
        validation.GUIDANCE.check(self.guidance_scale)
        validation.FLOW_SHIFT.check(self.flow_shift)
        if self.seed is not None:
            validation.SEED.check(self.seed)
        if self.overlap_frames not in validation.OVERLAP_FRAMES:
            raise WanAnimateError(f"Overlap frames must be 1 or 5, got {self.overlap_frames}.")
        segment_frames = validation.SEGMENT_FRAMES.check(self.segment_frames)
        if segment_frames % 4 != 1 or segment_frames <= self.overlap_frames:
            raise WanAnimateError(
                f"Segment length must be 4N + 1 frames and longer than the overlap, got {self.segment_frames}."
            )
        validation.RELIGHT_WEIGHT.check(self.relight_weight)
        for name, weight in self.lora_weights.items():
            validation.check_float(f"LoRA weight of {name}", weight, validation.LORA_WEIGHT.low, validation.LORA_WEIGHT.high)
        if self.scheduler is not None:
            self.scheduler.check(self.num_inference_steps)
        check_step_cache_name(self.step_cache)


@dataclass(frozen=True)
class GenerationResult:
    """Output of `generate`.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB frames, as many as the conditioning has.
        fps: Frame rate (the conditioning's).
        seed: Seed actually used.
        seconds: Wall-clock time of the job.
        video_path: The mp4 written by `generate_video`, else ``None``.
    """

    frames: np.ndarray
    fps: float
    seed: int
    seconds: float
    video_path: Path | None = None


def plan_segments(num_frames: int, segment_frames: int = 77, overlap_frames: int = 1) -> list[tuple[int, int]]:
    """Output frame range ``[start, end)`` that each generated segment contributes, in order.

    Mirrors `WanAnimatePipeline.__call__`: segment k starts at ``k * (segment_frames - overlap_frames)``;
    every segment after the first drops its first ``overlap_frames`` frames (they re-create the frames it
    was conditioned on). The last segment is padded by the pipeline and cut back to ``num_frames`` here.
    """
    effective = segment_frames - overlap_frames
    padded = max(num_frames, overlap_frames + 1)
    remainder = (padded - overlap_frames) % effective
    num_segments = (padded + (effective - remainder if remainder else 0)) // effective
    ranges = []
    for k in range(num_segments):
        start = 0 if k == 0 else k * effective + overlap_frames
        end = min(k * effective + segment_frames, num_frames)
        if start < end:
            ranges.append((start, end))
    return ranges


def match_segment_colors(frames: np.ndarray, segments: list[tuple[int, int]], reference_frames: int = 1) -> np.ndarray:
    """Match each segment's colour statistics to the frames just before it.

    For every segment after the first, a colour transfer (Monge-Kantorovich linearisation, from
    `color-matcher`) is fitted from the segment's first ``reference_frames`` frames to the (already
    corrected) last ``reference_frames`` frames of the previous segment, and that one affine map is applied
    to the whole segment, so colour changes inside a segment are kept while the jump at its start goes.

    Args:
        frames: ``(T, H, W, 3)`` uint8 frames.
        segments: Output of `plan_segments`.
        reference_frames: How many frames on each side of a boundary define the statistics.

    Returns:
        Corrected uint8 frames (a new array).
    """
    out = frames.astype(np.float64)
    for (prev_start, prev_end), (start, end) in zip(segments, segments[1:]):
        n = min(reference_frames, prev_end - prev_start, end - start)
        reference = out[prev_end - n : prev_end].reshape(-1, frames.shape[2], 3)
        source = out[start : start + n].reshape(-1, frames.shape[2], 3)
        matcher = TransferMVGD(method="mkl")
        matcher.multivar_transfer(src=source, ref=reference)
        pixels = out[start:end].reshape(-1, 3).T
        mapped = matcher.transfer_mat @ (pixels - matcher.mu_r) + matcher.mu_z
        out[start:end] = mapped.T.reshape(out[start:end].shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _pad_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """Repeat the last frame until there are ``count`` frames (the pipeline needs more than the overlap)."""
    if len(frames) >= count:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], count - len(frames), axis=0)])


def _to_pil(frames: np.ndarray, mode: str = "RGB") -> list[Image.Image]:
    return [Image.fromarray(frame, mode=mode) for frame in frames]


def _apply_loras(pipeline: "WanAnimatePipeline", conditioning: Conditioning, settings: GenerationSettings) -> None:
    """Switch the LoRA adapters for this job: relighting by mode unless set, plus the named others."""
    relight = settings.relight if settings.relight is not None else conditioning.mode == "replace"
    loaded = loaded_adapters(pipeline)
    if relight and RELIGHT_ADAPTER not in loaded:
        load_relighting_lora(pipeline)
        loaded.add(RELIGHT_ADAPTER)
    unknown = set(settings.lora_weights) - loaded
    if unknown:
        raise WanAnimateError(f"LoRA adapter(s) not loaded: {', '.join(sorted(unknown))}. Load them first.")
    if loaded:
        weights = dict(settings.lora_weights)
        weights[RELIGHT_ADAPTER] = settings.relight_weight if relight else 0.0
        set_lora_weights(pipeline, {name: weight for name, weight in weights.items() if name in loaded})


def _use_job_scheduler(pipeline: WanAnimatePipeline, settings: GenerationSettings, generator: torch.Generator) -> Any:
    """Give the pipeline this job's scheduler and return the model's own, which the caller puts back.

    The pipeline is shared between jobs: putting its scheduler back after every call (also after a cancel or an
    error) keeps a few-step schedule or another shift from leaking into the next job.
    """
    own = pipeline.scheduler
    if settings.scheduler is not None:
        pipeline.scheduler = settings.scheduler.build(generator)
    elif getattr(own.config, "flow_shift", settings.flow_shift) != settings.flow_shift:
        pipeline.scheduler = type(own).from_config(own.config, flow_shift=settings.flow_shift)
    return own


PROMPT_CACHE_SIZE = 4
"""Prompts whose embeddings a pipeline keeps (the app's default prompt never changes)."""
MAX_PROMPT_TOKENS = 512
"""UMT5 sequence length, `WanAnimatePipeline.__call__`'s default."""


def prompt_embeddings(
    pipeline: WanAnimatePipeline, prompt: str, negative_prompt: str | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The text encoder's embeddings of ``prompt`` (and of ``negative_prompt`` when given), once per pipeline.

    UMT5-XXL is the second-largest component: with group offloading it is copied to the GPU for every encoding
    (measured ~10 s per job), while the prompt rarely changes between jobs. The last `PROMPT_CACHE_SIZE`
    prompts' embeddings (a few MB each) are kept on the pipeline object, beside the weights they come from.
    """
    cache: OrderedDict = pipeline.__dict__.setdefault("wan_prompt_cache", OrderedDict())
    key = (prompt, negative_prompt)
    if key not in cache:
        with torch.inference_mode():
            cache[key] = pipeline.encode_prompt(
                prompt=prompt,
                negative_prompt=negative_prompt,
                do_classifier_free_guidance=negative_prompt is not None,
                max_sequence_length=MAX_PROMPT_TOKENS,
                device=pipeline._execution_device,
            )
        while len(cache) > PROMPT_CACHE_SIZE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def free_memory() -> None:
    """Release cached GPU memory (after a cancelled or failed job)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate(
    pipeline: "WanAnimatePipeline",
    conditioning: Conditioning,
    settings: GenerationSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """Generate the frames of one job.

    Args:
        pipeline: A loaded `WanAnimatePipeline` (see `wan_animate.models.load_pipeline`).
        conditioning: Model-ready inputs; its mode selects Animation or Replacement.
        settings: Job settings; contract defaults when ``None``.
        progress: Called after every denoising step as ``progress(step, total, description)``, counting
            the steps of all segments together.
        cancel: When set, generation stops at the next step, GPU memory is freed and
            `GenerationCancelled` is raised.

    Returns:
        The frames, trimmed to the conditioning's frame count, with the seed used.
    """
    settings = settings or GenerationSettings()
    settings.check()
    conditioning.validate()
    started = time.perf_counter()
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
    segments = plan_segments(conditioning.num_frames, settings.segment_frames, settings.overlap_frames)
    total_steps = len(segments) * settings.num_inference_steps
    steps_done = 0

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        nonlocal steps_done
        steps_done += 1
        if progress is not None:
            segment = (steps_done - 1) // settings.num_inference_steps + 1
            progress(
                steps_done,
                total_steps,
                f"Segment {segment}/{len(segments)}, step {step + 1}/{settings.num_inference_steps}",
            )
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("Generation was cancelled.")
        return {}

    _apply_loras(pipeline, conditioning, settings)
    needed = settings.overlap_frames + 1
    pose = _pad_frames(conditioning.pose_frames, needed)
    extra = {}
    if conditioning.mode == "replace":
        extra = {
            "background_video": _to_pil(_pad_frames(conditioning.background_frames, needed)),
            "mask_video": _to_pil(_pad_frames(conditioning.mask_frames, needed) * 255, mode="L"),
        }
    logger.info(
        "Generating %d frames (%dx%d, %s) in %d segment(s) x %d steps, seed %d",
        conditioning.num_frames, conditioning.width, conditioning.height, conditioning.mode,
        len(segments), settings.num_inference_steps, seed,
    )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    own_scheduler = _use_job_scheduler(pipeline, settings, generator)
    from .caching import disable_step_cache, enable_step_cache

    job_cache = settings.step_cache != "none"
    try:
        if job_cache:
            enable_step_cache(
                pipeline.transformer, settings.step_cache, num_inference_steps=settings.num_inference_steps,
                **settings.step_cache_options,
            )
        embeds, negative_embeds = prompt_embeddings(
            pipeline, settings.prompt, settings.negative_prompt if settings.guidance_scale > 1 else None
        )
        output = pipeline(
            image=Image.fromarray(conditioning.reference_image),
            pose_video=_to_pil(pose),
            face_video=_to_pil(_pad_frames(conditioning.face_frames, needed)),
            prompt_embeds=embeds,
            negative_prompt_embeds=negative_embeds,
            height=conditioning.height,
            width=conditioning.width,
            segment_frame_length=settings.segment_frames,
            num_inference_steps=settings.num_inference_steps,
            mode=conditioning.mode,
            prev_segment_conditioning_frames=settings.overlap_frames,
            guidance_scale=settings.guidance_scale,
            generator=generator,
            output_type="np",
            callback_on_step_end=on_step_end,
            **extra,
        )
    except GenerationCancelled:
        pipeline.maybe_free_model_hooks()
        free_memory()
        logger.info("Generation cancelled after %d of %d steps", steps_done, total_steps)
        raise
    finally:
        pipeline.scheduler = own_scheduler
        if job_cache:
            disable_step_cache(pipeline.transformer)
    frames = np.asarray(output.frames[0])[: conditioning.num_frames]
    frames = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
    if settings.color_match and len(segments) > 1:
        frames = match_segment_colors(frames, segments, reference_frames=max(settings.overlap_frames, 1))
    return GenerationResult(frames=frames, fps=conditioning.fps, seed=seed, seconds=time.perf_counter() - started)


def generate_video(
    pipeline: "WanAnimatePipeline",
    conditioning: Conditioning,
    output_path: str | Path,
    settings: GenerationSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """`generate`, then write an H.264 mp4 at the conditioning's fps with the driving video's sound."""
    result = generate(pipeline, conditioning, settings, progress=progress, cancel=cancel)
    path = write_video(
        output_path,
        result.frames,
        result.fps,
        audio_source=conditioning.audio_source,
        audio_start=conditioning.audio_start,
    )
    return GenerationResult(frames=result.frames, fps=result.fps, seed=result.seed, seconds=result.seconds, video_path=path)


def estimate_steps(num_frames: int, settings: GenerationSettings) -> int:
    """Total denoising steps a job will run (segments x steps), for time estimates."""
    return len(plan_segments(num_frames, settings.segment_frames, settings.overlap_frames)) * settings.num_inference_steps


__all__ = [
    "DEFAULT_PROMPT",
    "GenerationResult",
    "GenerationSettings",
    "JobScheduler",
    "estimate_steps",
    "generate",
    "generate_video",
    "match_segment_colors",
    "plan_segments",
]
