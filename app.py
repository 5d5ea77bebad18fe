"""Wan2.2-Animate: the Gradio app (a Hugging Face Space, or ``python app.py`` locally).

UI only: every decision about models and conditioning is made in the `wan_animate` package; each action
below is a call into it with progress and errors shown on the page. Each action is also a named API
endpoint (for `gradio_client`) and an MCP tool; their docstrings are the descriptions clients see.

    python app.py --help
"""

# `spaces` first: on ZeroGPU it must patch CUDA before torch is imported (elsewhere `spaces.GPU` is a no-op).
import spaces  # isort: skip

import argparse
import functools
import inspect
import logging
import os
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import gradio.utils

from wan_animate.errors import GenerationCancelled, WanAnimateError
from wan_animate.generate import GenerationResult, GenerationSettings, generate_video
from wan_animate.jobs import Job, new_job, open_job, prune_jobs
from wan_animate.models import DEFAULT_MODEL_ID, describe_runtime, get_pipeline
from wan_animate.picker import (
    click_at,
    conditioning_size,
    describe_clicks,
    draw_clicks,
    dump_clicks,
    parse_clicks,
    person_point,
    read_frame,
    to_point_prompts,
)
from wan_animate.preprocess import Preprocessed, PreprocessOptions, Preprocessor
from wan_animate.presets import (
    DEFAULT_FAST_LORA,
    DRAFT_RESOLUTION,
    apply_preset,
    available_presets,
    draft_settings,
    draft_span,
    ensure_fast_lora,
    ensure_relighting_lora,
    estimate_frames,
    estimate_generation_seconds,
    estimate_preprocess_seconds,
    format_minutes,
    get_preset,
    gpu_duration,
)
from wan_animate.progress import ProgressCallback
from wan_animate.video import DEFAULT_MAX_SECONDS, probe_video

logger = logging.getLogger("wan_animate.app")

ASSETS = Path(__file__).resolve().parent / "assets"
ON_ZEROGPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
GOOD_INPUTS = (
    "**Good inputs:** one clearly visible person, facing the camera in the first frame, whole body in view; "
    f"a clip of at most {DEFAULT_MAX_SECONDS:g} s (trim longer ones). A sharp, front-facing photo of the character."
)
MODE_TEXT = {
    "animate": "The character in the photo performs the video's motion and facial expressions, in the photo's setting.",
    "replace": "The character takes the place of the person in the video, lit like the scene.",
}


@dataclass(frozen=True)
class AppConfig:
    """How the app was started (command line flags, environment variables on a Space).

    Attributes:
        model: Diffusers checkpoint: hub repo id or local folder.
        detector: Person detector (hub id or folder), ``None`` for the package default.
        pose_model: ViTPose whole-body ONNX (hub id, folder or file), ``None`` for the default.
        sam2: SAM2 video model (hub id or folder), ``None`` for the default.
        memory_mode: ``auto``, ``none``, ``model``, ``group`` or ``sequential``.
        dtype: Compute dtype (``auto`` picks bf16 where supported).
        fp8: Store transformer weights in fp8.
        allow_cpu: Allow running without CUDA (tiny test models).
        fast_lora: Few-step LoRA (``hub/repo::file`` or a file) that enables the fast preset and drafts.
        relight_lora: Relighting LoRA (file, folder or hub id); ``None`` = the official file from the hub.
        gpu_concurrency: GPU jobs run at once.
        preprocess_concurrency: Extractions run at once.
        max_queue: Longest queue before new jobs are turned away.
        work_dir: Folder for job files; by default inside Gradio's cache folder.
        max_job_age: Seconds after which unused job folders are deleted.
        preload: Load the pipeline at start (ZeroGPU wants models loaded before the first GPU call).
    """

    model: str = DEFAULT_MODEL_ID
    detector: str | None = None
    pose_model: str | None = None
    sam2: str | None = None
    memory_mode: str = "auto"
    dtype: str = "auto"
    fp8: bool = False
    allow_cpu: bool = False
    fast_lora: str | None = None
    relight_lora: str | None = None
    gpu_concurrency: int = 1
    preprocess_concurrency: int = 2
    max_queue: int = 20
    work_dir: Path | None = None
    max_job_age: float = 6 * 3600
    preload: bool = False

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Arguments of `wan_animate.models.get_pipeline` (the one cached pipeline)."""
        return dict(
            source=self.model,
            dtype=self.dtype,
            memory_mode=self.memory_mode,
            fp8_storage=self.fp8,
            keep_bf16_copy=False,
            allow_cpu=self.allow_cpu,
        )


def _user_errors(fn: Callable) -> Callable:
    """Show a user-fixable error (`WanAnimateError`) or a stop as a message on the page, not a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WanAnimateError as error:
            raise gr.Error(str(error), print_exception=False) from error
        except GenerationCancelled as error:
            raise gr.Error("Generation was stopped.", title="Stopped", print_exception=False) from error

    return wrapper


def _fps(fps: str) -> float | None:
    """The frame-rate choice: ``"30"`` resamples to 30 fps, ``"source"`` keeps the video's rate."""
    if str(fps).strip().lower() in ("source", "none", ""):
        return None
    try:
        return float(fps)
    except ValueError as error:
        raise WanAnimateError(f"Frame rate must be a number or 'source', got {fps!r}.") from error


def _optional_end(end: float | None) -> float | None:
    """An empty or non-positive end means "to the end of the video"."""
    return None if end is None or end <= 0 else float(end)


def _progress(progress: gr.Progress) -> ProgressCallback:
    """Our ``progress(done, total, description)`` callbacks, shown by Gradio's progress bar."""

    def report(done: int, total: int, description: str) -> None:
        progress((done, total), desc=description)

    return report


def _bound_arguments(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


class Studio:
    """The app's actions. Public methods are the API endpoints and MCP tools; their docstrings describe them.

    Args:
        config: How the app was started.
    """

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        sources = {"detector": config.detector, "pose": config.pose_model, "sam2": config.sam2}
        self.preprocessor = Preprocessor(**{key: value for key, value in sources.items() if value})
        self.work_root = Path(config.work_dir or Path(gradio.utils.get_upload_folder()) / "wan_animate_jobs")
        self.work_root.mkdir(parents=True, exist_ok=True)
        self.fast_available = bool(config.fast_lora)
        # Guards against a GPU job starting while a stopped one is still finishing its step (Gradio frees
        # its queue slot at once).
        self._gpu_slots = threading.BoundedSemaphore(config.gpu_concurrency)
        self._lora_lock = threading.Lock()
        self._cancel_lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}
        # On ZeroGPU each GPU action asks for as long as its job needs; elsewhere spaces.GPU returns it as is.
        for name, estimate in (
            ("extract_animation", self._extract_seconds),
            ("extract_replacement", self._extract_seconds),
            ("animate", self._generate_seconds),
            ("replace", self._generate_seconds),
            ("animate_oneshot", self._oneshot_seconds),
            ("replace_oneshot", self._oneshot_seconds),
            ("animate_draft", self._draft_seconds),
            ("replace_draft", self._draft_seconds),
        ):
            action = getattr(self, name)
            setattr(self, name, spaces.GPU(duration=self._duration(action, estimate))(action))

    # -- API: Animation -------------------------------------------------------------------------------

    @_user_errors
    def extract_animation(
        self,
        photo: str,
        video: str,
        start: float = 0.0,
        end: float | None = None,
        resolution: str = "720p",
        fps: str = "30",
        retarget: bool = False,
        points: str = "",
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, str, str, dict, str]:
        """Animation, step 1: extract the skeleton and face crops the model will follow, with a quality report.

        Args:
            photo: The character photo (one person, front-facing, whole body if possible).
            video: The driving video (one clearly visible person, at most 30 s after trimming).
            start: First second of the video to use.
            end: Last second of the video to use; empty or 0 for the end.
            resolution: Output size: "720p" (1280x720 area) or "480p" (832x480 area); the photo's aspect is kept.
            fps: "30" resamples the video to 30 fps (the model's rate); "source" keeps the video's own rate.
            retarget: Scale the dancer's bones to the character's proportions (both should face the camera).
            points: Optional JSON list choosing the person to follow: [{"frame": 0, "x": 0.5, "y": 0.4, "positive": true}], x and y as fractions of the frame.

        Returns:
            skeleton video, face-crop video, quality report (Markdown), report (JSON with job_id), job_id for /animate.
        """
        prepared, job = self._extract("animate", photo, video, start, end, resolution, fps, points, progress, retarget=retarget)
        return str(prepared.skeleton_video), str(prepared.face_video), job.record.report_markdown, self._report(job), job.id

    @_user_errors
    def animate(
        self,
        job_id: str,
        preset: str = "quality",
        steps: int = 20,
        seed: int = -1,
        guidance: float = 1.0,
        overlap: int = 1,
        color_match: bool = False,
        step_cache: str = "none",
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, str, str, dict]:
        """Animation, step 2: generate the video from an extraction (the job_id returned by /extract_animation).

        Args:
            job_id: The job_id returned by /extract_animation.
            preset: "quality" (20 steps) or "fast" (4 steps with a few-step LoRA, only if the app has one).
            steps: Denoising steps per 77-frame segment (20 is the model's default; 4 with the fast preset).
            seed: Random seed; -1 picks one (the seed used is in the result).
            guidance: Classifier-free guidance; 1.0 is off (the default), above 1 doubles the time.
            overlap: Frames of the previous segment that condition the next: 1 or 5.
            color_match: Match each segment's colours to the previous one (long clips).
            step_cache: Opt-in step cache, "none" (default), "first_block" or "taylorseer": skips parts of some steps (FirstBlockCache measured 1.6x at 480p); its quality cost is unknown.

        Returns:
            result video (with the driving video's sound), side-by-side video (driving | result), summary (Markdown), details (JSON with the seed).
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, step_cache=step_cache)
        job = open_job(self.work_root, job_id)
        with self._cancellable(request, job.record.mode) as cancel:
            return self._generate(job, settings, cancel, progress)

    @_user_errors
    def animate_oneshot(
        self,
        photo: str,
        video: str,
        start: float = 0.0,
        end: float | None = None,
        resolution: str = "720p",
        fps: str = "30",
        retarget: bool = False,
        points: str = "",
        preset: str = "quality",
        steps: int = 20,
        seed: int = -1,
        guidance: float = 1.0,
        overlap: int = 1,
        color_match: bool = False,
        step_cache: str = "none",
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, str, str, dict, str]:
        """Animation in one call: extract, then generate. The character in the photo performs the video's motion.

        Args:
            photo: The character photo (one person, front-facing, whole body if possible).
            video: The driving video (one clearly visible person, at most 30 s after trimming).
            start: First second of the video to use.
            end: Last second of the video to use; empty or 0 for the end.
            resolution: Output size: "720p" or "480p"; the photo's aspect is kept.
            fps: "30" resamples the video to 30 fps (the model's rate); "source" keeps the video's own rate.
            retarget: Scale the dancer's bones to the character's proportions.
            points: Optional JSON list choosing the person to follow: [{"frame": 0, "x": 0.5, "y": 0.4, "positive": true}].
            preset: "quality" (20 steps) or "fast" (4 steps with a few-step LoRA, only if the app has one).
            steps: Denoising steps per 77-frame segment.
            seed: Random seed; -1 picks one (the seed used is in the result).
            guidance: Classifier-free guidance; 1.0 is off (the default).
            overlap: Frames of the previous segment that condition the next: 1 or 5.
            color_match: Match each segment's colours to the previous one (long clips).
            step_cache: Opt-in step cache, "none" (default), "first_block" or "taylorseer": skips parts of some steps (FirstBlockCache measured 1.6x at 480p); its quality cost is unknown.

        Returns:
            result video (with sound), side-by-side video, summary (Markdown), details (JSON with the seed and the quality report), job_id.
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, step_cache=step_cache)
        with self._cancellable(request, "animate") as cancel:
            _, job = self._extract("animate", photo, video, start, end, resolution, fps, points, progress, retarget=retarget)
            return (*self._generate(job, settings, cancel, progress), job.id)

    @_user_errors
    def animate_draft(
        self,
        photo: str,
        video: str,
        start: float = 0.0,
        end: float | None = None,
        fps: str = "30",
        retarget: bool = False,
        points: str = "",
        preset: str = "quality",
        steps: int = 20,
        seed: int = -1,
        guidance: float = 1.0,
        overlap: int = 1,
        color_match: bool = False,
        step_cache: str = "none",
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, str, str, dict, str]:
        """Animation draft: only the first segment (up to 77 frames) at 480p, with the fast preset when available.

        Args:
            photo: The character photo.
            video: The driving video.
            start: First second of the video to use.
            end: Last second of the video to use; empty or 0 for the end (the draft stops after 77 frames).
            fps: "30" or "source".
            retarget: Scale the dancer's bones to the character's proportions.
            points: Optional JSON list choosing the person to follow: [{"frame": 0, "x": 0.5, "y": 0.4, "positive": true}].
            preset: Ignored when a few-step LoRA is available (drafts use it); else "quality".
            steps: Denoising steps when no few-step LoRA is available.
            seed: Random seed; -1 picks one.
            guidance: Classifier-free guidance; 1.0 is off.
            overlap: 1 or 5 (a draft has one segment, so it has no effect).
            color_match: Has no effect on one segment.
            step_cache: Opt-in step cache, "none" (default), "first_block" or "taylorseer": skips parts of some steps (FirstBlockCache measured 1.6x at 480p); its quality cost is unknown.

        Returns:
            draft video (with sound), side-by-side video, summary (Markdown), details (JSON), job_id.
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, step_cache=step_cache)
        with self._cancellable(request, "animate") as cancel:
            _, job = self._extract_draft("animate", photo, video, start, end, fps, points, progress, retarget=retarget)
            return (*self._generate(job, draft_settings(settings, self.fast_available), cancel, progress), job.id)

    # -- API: Replacement -----------------------------------------------------------------------------

    @_user_errors
    def extract_replacement(
        self,
        photo: str,
        video: str,
        start: float = 0.0,
        end: float | None = None,
        resolution: str = "720p",
        fps: str = "30",
        points: str = "",
        mask_kernel: int = 7,
        mask_iterations: int = 3,
        blockify: int = 1,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, str, str, str, str, dict, str]:
        """Replacement, step 1: extract the skeleton, face crops, person mask and background, with a quality report.

        Args:
            photo: The character photo (one person, front-facing).
            video: The video whose person is replaced (one clearly visible person, at most 30 s after trimming).
            start: First second of the video to use.
            end: Last second of the video to use; empty or 0 for the end.
            resolution: Output size: "720p" (1280x720 area) or "480p" (832x480 area); the video's aspect is kept.
            fps: "30" resamples the video to 30 fps (the model's rate); "source" keeps the video's own rate.
            points: Optional JSON list of clicks that choose the person and fix the mask: [{"frame": 0, "x": 0.5, "y": 0.4, "positive": true}], x and y as fractions of the frame, positive false = not the person.
            mask_kernel: Mask dilation kernel size in pixels (how far the regenerated area reaches past the person).
            mask_iterations: Mask dilation iterations.
            blockify: Mask grid cells per side: 1 regenerates the person's whole box; 8 to 32 gives a blocky silhouette that keeps more background.

        Returns:
            skeleton video, face-crop video, mask overlay video, background video, quality report (Markdown), report (JSON with job_id), job_id for /replace.
        """
        prepared, job = self._extract(
            "replace", photo, video, start, end, resolution, fps, points, progress,
            mask_kernel=mask_kernel, mask_iterations=mask_iterations, blockify=blockify,
        )
        return (
            str(prepared.skeleton_video), str(prepared.face_video), str(prepared.mask_video),
            str(prepared.background_video), job.record.report_markdown, self._report(job), job.id,
        )

    @_user_errors
    def replace(
        self,
        job_id: str,
        preset: str = "quality",
        steps: int = 20,
        seed: int = -1,
        guidance: float = 1.0,
        overlap: int = 1,
        color_match: bool = False,
        relight: bool = True,
        relight_weight: float = 1.0,
        step_cache: str = "none",
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, str, str, dict]:
        """Replacement, step 2: generate the video from an extraction (the job_id returned by /extract_replacement).

        Args:
            job_id: The job_id returned by /extract_replacement.
            preset: "quality" (20 steps) or "fast" (4 steps with a few-step LoRA, only if the app has one).
            steps: Denoising steps per 77-frame segment.
            seed: Random seed; -1 picks one (the seed used is in the result).
            guidance: Classifier-free guidance; 1.0 is off (the default), above 1 doubles the time.
            overlap: Frames of the previous segment that condition the next: 1 or 5.
            color_match: Match each segment's colours to the previous one (long clips).
            relight: Apply the relighting LoRA so the character takes the scene's light.
            relight_weight: Strength of the relighting LoRA (1.0 = as trained).
            step_cache: Opt-in step cache, "none" (default), "first_block" or "taylorseer": skips parts of some steps (FirstBlockCache measured 1.6x at 480p); its quality cost is unknown.

        Returns:
            result video (with the video's sound), side-by-side video (original | result), summary (Markdown), details (JSON with the seed).
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, relight, relight_weight, step_cache)
        job = open_job(self.work_root, job_id)
        with self._cancellable(request, job.record.mode) as cancel:
            return self._generate(job, settings, cancel, progress)

    @_user_errors
    def replace_oneshot(
        self,
        photo: str,
        video: str,
        start: float = 0.0,
        end: float | None = None,
        resolution: str = "720p",
        fps: str = "30",
        points: str = "",
        mask_kernel: int = 7,
        mask_iterations: int = 3,
        blockify: int = 1,
        preset: str = "quality",
        steps: int = 20,
        seed: int = -1,
        guidance: float = 1.0,
        overlap: int = 1,
        color_match: bool = False,
        relight: bool = True,
        relight_weight: float = 1.0,
        step_cache: str = "none",
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, str, str, dict, str]:
        """Replacement in one call: extract, then generate. The character replaces the person in the video.

        Args:
            photo: The character photo (one person, front-facing).
            video: The video whose person is replaced (at most 30 s after trimming).
            start: First second of the video to use.
            end: Last second of the video to use; empty or 0 for the end.
            resolution: Output size: "720p" or "480p"; the video's aspect is kept.
            fps: "30" resamples the video to 30 fps (the model's rate); "source" keeps the video's own rate.
            points: Optional JSON list of clicks that choose the person and fix the mask: [{"frame": 0, "x": 0.5, "y": 0.4, "positive": true}].
            mask_kernel: Mask dilation kernel size in pixels.
            mask_iterations: Mask dilation iterations.
            blockify: Mask grid cells per side: 1 = the person's whole box; 8 to 32 = blocky silhouette.
            preset: "quality" (20 steps) or "fast" (4 steps with a few-step LoRA, only if the app has one).
            steps: Denoising steps per 77-frame segment.
            seed: Random seed; -1 picks one (the seed used is in the result).
            guidance: Classifier-free guidance; 1.0 is off (the default).
            overlap: Frames of the previous segment that condition the next: 1 or 5.
            color_match: Match each segment's colours to the previous one (long clips).
            relight: Apply the relighting LoRA so the character takes the scene's light.
            relight_weight: Strength of the relighting LoRA.
            step_cache: Opt-in step cache, "none" (default), "first_block" or "taylorseer": skips parts of some steps (FirstBlockCache measured 1.6x at 480p); its quality cost is unknown.

        Returns:
            result video (with sound), side-by-side video, summary (Markdown), details (JSON with the seed and the quality report), job_id.
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, relight, relight_weight, step_cache)
        with self._cancellable(request, "replace") as cancel:
            _, job = self._extract(
                "replace", photo, video, start, end, resolution, fps, points, progress,
                mask_kernel=mask_kernel, mask_iterations=mask_iterations, blockify=blockify,
            )
            return (*self._generate(job, settings, cancel, progress), job.id)

    @_user_errors
    def replace_draft(
        self,
        photo: str,
        video: str,
        start: float = 0.0,
        end: float | None = None,
        fps: str = "30",
        points: str = "",
        mask_kernel: int = 7,
        mask_iterations: int = 3,
        blockify: int = 1,
        preset: str = "quality",
        steps: int = 20,
        seed: int = -1,
        guidance: float = 1.0,
        overlap: int = 1,
        color_match: bool = False,
        relight: bool = True,
        relight_weight: float = 1.0,
        step_cache: str = "none",
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[str, str, str, dict, str]:
        """Replacement draft: only the first segment (up to 77 frames) at 480p, with the fast preset when available.

        Args:
            photo: The character photo.
            video: The video whose person is replaced.
            start: First second of the video to use.
            end: Last second of the video to use; empty or 0 for the end (the draft stops after 77 frames).
            fps: "30" or "source".
            points: Optional JSON list of clicks that choose the person and fix the mask: [{"frame": 0, "x": 0.5, "y": 0.4, "positive": true}].
            mask_kernel: Mask dilation kernel size in pixels.
            mask_iterations: Mask dilation iterations.
            blockify: Mask grid cells per side.
            preset: Ignored when a few-step LoRA is available (drafts use it); else "quality".
            steps: Denoising steps when no few-step LoRA is available.
            seed: Random seed; -1 picks one.
            guidance: Classifier-free guidance; 1.0 is off.
            overlap: 1 or 5 (a draft has one segment, so it has no effect).
            color_match: Has no effect on one segment.
            relight: Apply the relighting LoRA.
            relight_weight: Strength of the relighting LoRA.
            step_cache: Opt-in step cache, "none" (default), "first_block" or "taylorseer": skips parts of some steps (FirstBlockCache measured 1.6x at 480p); its quality cost is unknown.

        Returns:
            draft video (with sound), side-by-side video, summary (Markdown), details (JSON), job_id.
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, relight, relight_weight, step_cache)
        with self._cancellable(request, "replace") as cancel:
            _, job = self._extract_draft(
                "replace", photo, video, start, end, fps, points, progress,
                mask_kernel=mask_kernel, mask_iterations=mask_iterations, blockify=blockify,
            )
            return (*self._generate(job, draft_settings(settings, self.fast_available), cancel, progress), job.id)

    # -- the work behind the endpoints ----------------------------------------------------------------

    def _extract(
        self,
        mode: str,
        photo: str,
        video: str,
        start: float,
        end: float | None,
        resolution: str,
        fps: str | float | None,
        points: str,
        progress: gr.Progress,
        *,
        retarget: bool = False,
        mask_kernel: int = 7,
        mask_iterations: int = 3,
        blockify: int = 1,
    ) -> tuple[Preprocessed, Job]:
        """One `Preprocessor.prepare` call in a new job folder; the job records how it was made."""
        if not photo or not video:
            raise WanAnimateError("Upload a character photo and a driving video first.")
        prune_jobs(self.work_root, self.config.max_job_age)
        frame_rate = _fps(fps) if isinstance(fps, str) else fps
        clicks = parse_clicks(points)
        job = new_job(
            self.work_root, mode, photo, video, start=float(start or 0.0), end=_optional_end(end), fps=frame_rate,
            resolution=resolution,
            options=dict(retarget=retarget, points=dump_clicks(clicks), mask_kernel=int(mask_kernel),
                         mask_iterations=int(mask_iterations), blockify=int(blockify)),
        )
        record = job.record
        size = conditioning_size(mode, record.photo, record.video, resolution)
        options = PreprocessOptions(
            resolution=resolution,
            fps=frame_rate,
            start=record.start,
            end=record.end,
            retarget=bool(retarget),
            person_point=person_point(clicks, size),
            points=to_point_prompts(clicks, size) if mode == "replace" else (),
            mask_kernel=int(mask_kernel),
            mask_iterations=int(mask_iterations),
            blockify=(int(blockify), int(blockify)),
        )
        prepared = self.preprocessor.prepare(mode, record.photo, record.video, job.prepared_dir, options, progress=_progress(progress))
        record.num_frames = prepared.conditioning.num_frames
        record.report = prepared.report.to_dict()
        estimate = estimate_generation_seconds(record.num_frames, resolution, GenerationSettings(), include_load=False)
        record.report_markdown = (
            prepared.report.to_markdown()
            + f"\n\n**Generation** ({resolution}, 20 steps): {format_minutes(estimate)} of GPU time"
            + f" for {record.num_frames} frames.\n\n<small>Job `{job.id}`</small>"
        )
        job.save()
        return prepared, job

    def _extract_draft(self, mode, photo, video, start, end, fps, points, progress, **options) -> tuple[Preprocessed, Job]:
        """Extract again at 480p, only the span of the first segment (skeleton strokes depend on the size)."""
        if not video:
            raise WanAnimateError("Upload a character photo and a driving video first.")
        frame_rate = _fps(fps)
        draft_start, draft_end = draft_span(float(start or 0.0), _optional_end(end), frame_rate or probe_video(video).fps)
        return self._extract(mode, photo, video, draft_start, draft_end, DRAFT_RESOLUTION, frame_rate, points, progress, **options)

    def _settings(
        self, preset: str, steps: int, seed: int, guidance: float, overlap: int, color_match: bool,
        relight: bool | None = None, relight_weight: float = 1.0, step_cache: str = "none",
    ) -> GenerationSettings:
        chosen = get_preset(preset, self.fast_available)
        settings = GenerationSettings(
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            seed=None if seed is None or int(seed) < 0 else int(seed),
            overlap_frames=int(overlap),
            relight=relight,
            relight_weight=float(relight_weight),
            color_match=bool(color_match),
            step_cache=str(step_cache or "none"),
        )
        settings = apply_preset(settings, chosen, self.fast_available)
        settings.check()
        return settings

    def _generate(self, job: Job, settings: GenerationSettings, cancel: threading.Event, progress: gr.Progress) -> tuple[str, str, str, dict]:
        """Generate from a job's conditioning; ``cancel`` (set by Stop) is checked between steps."""
        conditioning = job.load_conditioning()
        report = _progress(progress)
        with self._gpu_slots:
            if cancel.is_set():
                raise GenerationCancelled("Stopped before generation started.")
            pipeline = get_pipeline(**self.config.pipeline_kwargs(), progress=report)
            with self._lora_lock:
                if self.fast_available:
                    ensure_fast_lora(pipeline, self.config.fast_lora)
                if self.config.relight_lora and job.record.mode == "replace":
                    ensure_relighting_lora(pipeline, self.config.relight_lora)
            name = uuid.uuid4().hex[:8]
            result = generate_video(pipeline, conditioning, job.output(f"result_{name}.mp4"), settings, progress=report, cancel=cancel)
        report(0, 1, "Writing the side-by-side video")
        side_by_side = job.write_side_by_side(result.video_path, job.output(f"side_by_side_{name}.mp4"))
        return str(result.video_path), str(side_by_side), _result_markdown(job, result, settings), self._details(job, result, settings)

    @contextmanager
    def _cancellable(self, request: gr.Request | None, mode: str) -> Iterator[threading.Event]:
        """The event Stop sets for this browser tab's job in ``mode``, registered while the job runs.

        On ZeroGPU the job runs in a forked worker that this event does not reach; there Stop only drops the
        queued or running event from Gradio's queue.
        """
        key = self._cancel_key(request, mode)
        cancel = threading.Event()
        with self._cancel_lock:
            self._cancels[key] = cancel
        try:
            yield cancel
        finally:
            with self._cancel_lock:
                if self._cancels.get(key) is cancel:
                    del self._cancels[key]

    def stop(self, mode: str, request: gr.Request = None) -> str:
        """Stop this browser tab's running generation in ``mode`` after its current step."""
        with self._cancel_lock:
            cancel = self._cancels.get(self._cancel_key(request, mode))
        if cancel is None:
            return "Nothing is being generated."
        cancel.set()
        return "Stopping after the current step…"

    @staticmethod
    def _cancel_key(request: gr.Request | None, mode: str) -> str:
        session = getattr(request, "session_hash", None) or "no-session"
        return f"{session}:{mode}"

    def _report(self, job: Job) -> dict:
        return {"job_id": job.id, "mode": job.record.mode, "resolution": job.record.resolution, **(job.record.report or {})}

    def _details(self, job: Job, result: GenerationResult, settings: GenerationSettings) -> dict:
        return {
            "job_id": job.id,
            "seed": result.seed,
            "frames": result.num_frames,
            "fps": result.fps,
            "width": result.width,
            "height": result.height,
            "seconds": round(result.seconds, 2),
            "steps": settings.num_inference_steps,
            "guidance": settings.guidance_scale,
            "overlap": settings.overlap_frames,
            "lora_weights": dict(settings.lora_weights),
            "step_cache": settings.step_cache,
            "report": job.record.report,
        }

    # -- ZeroGPU durations (seconds a GPU action asks for, from the job) ------------------------------

    @staticmethod
    def _duration(action: Callable, estimate: Callable[[dict], float]) -> Callable[..., int]:
        def duration(*args, **kwargs) -> int:
            try:
                return gpu_duration(estimate(_bound_arguments(action, args, kwargs)))
            except Exception:  # a bad input fails inside the action with its own message
                logger.exception("Could not estimate the GPU time; asking for the default")
                return 60

        return duration

    def _frames_of(self, arguments: dict, draft: bool = False) -> int:
        info = probe_video(arguments["video"])
        fps = _fps(arguments.get("fps", "30"))
        start = float(arguments.get("start") or 0.0)
        end = _optional_end(arguments.get("end"))
        if draft:
            start, end = draft_span(start, end, fps or info.fps)
        return estimate_frames(info.duration, info.fps, fps, start, end)

    def _estimated_settings(self, arguments: dict) -> GenerationSettings:
        """The settings a generation call will run with (the preset sets the steps), for its GPU time."""
        return self._settings(
            arguments["preset"], arguments["steps"], arguments["seed"], arguments["guidance"], arguments["overlap"],
            arguments["color_match"],
        )

    def _extract_seconds(self, arguments: dict) -> float:
        mode = "animate" if "retarget" in arguments else "replace"
        return estimate_preprocess_seconds(self._frames_of(arguments), mode)

    def _generate_seconds(self, arguments: dict) -> float:
        job = open_job(self.work_root, arguments["job_id"])
        settings = self._estimated_settings(arguments)
        return estimate_generation_seconds(job.record.num_frames or 1, job.record.resolution, settings)

    def _oneshot_seconds(self, arguments: dict, draft: bool = False) -> float:
        frames = self._frames_of(arguments, draft)
        mode = "animate" if "retarget" in arguments else "replace"
        settings = self._estimated_settings(arguments)
        resolution = DRAFT_RESOLUTION if draft else arguments["resolution"]
        if draft:
            settings = draft_settings(settings, self.fast_available)
        return estimate_preprocess_seconds(frames, mode) + estimate_generation_seconds(frames, resolution, settings)

    def _draft_seconds(self, arguments: dict) -> float:
        return self._oneshot_seconds(arguments, draft=True)

    # -- page helpers (not API endpoints) -------------------------------------------------------------

    def runtime_markdown(self) -> str:
        """Where the model runs (GPU, memory mode, dtype), or what will be used before it is loaded."""
        return describe_runtime(**self.config.pipeline_kwargs())

    def video_info(self, video: str | None, start: float, end: float | None, fps: str = "30") -> tuple[str, dict, float | None]:
        """A line about the uploaded video, the frame slider's range, and the end trim to show."""
        if not video:
            return "", gr.update(maximum=1, value=0), end
        try:
            info = probe_video(video)
        except WanAnimateError as error:
            return f"⚠️ {error}", gr.update(maximum=1, value=0), end
        line = f"{info.duration:.1f} s · {info.width}×{info.height} · {info.fps:.3g} fps · {'with sound' if info.has_audio else 'no sound (the result will be silent)'}"
        if info.duration > DEFAULT_MAX_SECONDS and _optional_end(end) is None:
            end = float(start or 0.0) + DEFAULT_MAX_SECONDS
            line += f"\n\n⚠️ Longer than {DEFAULT_MAX_SECONDS:g} s: the end was set to {end:g} s; change start and end to pick another part."
        frames = estimate_frames(info.duration, info.fps, _fps(fps), float(start or 0.0), _optional_end(end))
        return line, gr.update(maximum=max(1, frames - 1), value=0), end

    def picker_frame(self, video: str | None, job_id: str, index: int, start: float, end: float | None, fps: str, points: str):
        """Frame ``index`` for the picker: the mask overlay after a Replacement extraction, else the video frame."""
        if not video:
            return None, None
        try:
            job = open_job(self.work_root, job_id) if job_id else None
            mask_video = job.prepared_dir / "mask.mp4" if job else None
            if mask_video is not None and mask_video.is_file():
                frame = read_frame(mask_video, int(index), fps=None)
            else:
                frame = read_frame(video, int(index), fps=_fps(fps), start=float(start or 0.0), end=_optional_end(end))
        except WanAnimateError as error:
            gr.Warning(str(error))
            return None, None
        return draw_clicks(frame, parse_clicks(points), int(index)), frame

    def add_point(self, frame, index: int, points: str, label: str, replace_all: bool, evt: gr.SelectData):
        """A click on the picker: add a point (or, choosing the person in Animation, replace the point)."""
        if frame is None:
            return points, None, describe_clicks(parse_clicks(points))
        x, y = evt.index
        click = click_at(int(index), x, y, frame.shape[1], frame.shape[0], positive=not label.startswith("Not"))
        clicks = [click] if replace_all else parse_clicks(points) + [click]
        return dump_clicks(clicks), draw_clicks(frame, clicks, int(index)), describe_clicks(clicks)

    def job_previews(self, job_id: str) -> tuple:
        """The previews and report of a job made by a one-click or draft run, for the preview panes."""
        job = open_job(self.work_root, job_id)
        files = [job.prepared_dir / name for name in ("skeleton.mp4", "faces.mp4", "mask.mp4", "background.mp4")]
        shown = [str(path) if path.is_file() else None for path in files]
        return (*shown, job.record.report_markdown, self._report(job))


def _result_markdown(job: Job, result: GenerationResult, settings: GenerationSettings) -> str:
    frames = result.num_frames
    return (
        f"**Seed {result.seed}** · {frames} frames at {result.fps:g} fps ({frames / result.fps:.1f} s) · "
        f"{result.width}×{result.height} · {settings.num_inference_steps} steps · "
        f"took {result.seconds:.0f} s"
    )


# -- the page -----------------------------------------------------------------------------------------


@dataclass
class _Tab:
    """The components of one tab that events read and write."""

    mode: str
    photo: gr.Image
    video: gr.Video
    start: gr.Number
    end: gr.Number
    video_line: gr.Markdown
    frame_index: gr.Slider
    picker: gr.Image
    picker_frame: gr.State
    point_label: gr.Radio
    points: gr.Textbox
    points_line: gr.Markdown
    clear_points: gr.Button
    resolution: gr.Radio
    fps: gr.Radio
    preset: gr.Radio
    steps: gr.Slider
    seed: gr.Number
    guidance: gr.Slider
    overlap: gr.Radio
    color_match: gr.Checkbox
    step_cache: gr.Dropdown
    extract: gr.Button
    generate: gr.Button
    draft: gr.Button
    oneshot: gr.Button
    stop: gr.Button
    status: gr.Markdown
    skeleton: gr.Video
    faces: gr.Video
    report: gr.Markdown
    report_json: gr.JSON
    job_id: gr.Textbox
    result: gr.Video
    side_by_side: gr.Video
    summary: gr.Markdown
    details: gr.JSON
    mode_inputs: list = field(default_factory=list)
    mask_inputs: list = field(default_factory=list)
    relight_inputs: list = field(default_factory=list)
    mask_video: gr.Video | None = None
    background: gr.Video | None = None


def _build_tab(studio: Studio, mode: str) -> _Tab:
    replace = mode == "replace"
    gr.Markdown(f"{MODE_TEXT[mode]}\n\n{GOOD_INPUTS}")
    with gr.Row():
        photo = gr.Image(label="Character photo", type="filepath", sources=["upload", "clipboard"], height=360, elem_id=f"{mode}-photo")
        video = gr.Video(label="Driving video" if not replace else "Video (its person is replaced)", sources=["upload"], height=360, elem_id=f"{mode}-video")
    with gr.Row():
        start = gr.Number(label="Start (s)", value=0.0, minimum=0.0, step=0.1)
        end = gr.Number(label="End (s, 0 = to the end)", value=0.0, minimum=0.0, step=0.1)
        video_line = gr.Markdown()
    with gr.Accordion(
        "Points: choose the person, fix the mask" if replace else "Choose the person (only if several are in view)",
        open=replace,
    ):
        gr.Markdown(
            "Click on the person (+) or on what is not the person (−), on any frame, then **Extract** again. "
            "After an extraction the frame shows the mask."
            if replace
            else "Click on the person to follow, then **Extract**."
        )
        with gr.Row():
            with gr.Column(scale=3):
                picker = gr.Image(label="Frame (click to add a point)", interactive=False, type="numpy", height=360, elem_id=f"{mode}-picker")
                frame_index = gr.Slider(label="Frame", minimum=0, maximum=1, step=1, value=0, elem_id=f"{mode}-frame")
            with gr.Column(scale=1):
                point_label = gr.Radio(["Person (+)", "Not the person (−)"], value="Person (+)", label="A click adds", visible=replace, elem_id=f"{mode}-point-label")
                points_line = gr.Markdown(describe_clicks([]), elem_id=f"{mode}-points")
                clear_points = gr.Button("Clear points", size="sm")
                points = gr.Textbox(label="Points (JSON)", value="", visible=False)
        picker_frame = gr.State(None)
    with gr.Accordion("Settings", open=False):
        with gr.Row():
            resolution = gr.Radio(["720p", "480p"], value="720p", label="Resolution")
            fps = gr.Radio([("30 fps", "30"), ("Source rate", "source")], value="30", label="Frame rate")
            presets = available_presets(studio.fast_available)
            preset = gr.Radio([(p.label, p.name) for p in presets], value="quality", label="Preset",
                              info=None if studio.fast_available else "Fast needs a few-step LoRA (--fast-lora).")
        with gr.Row():
            steps = gr.Slider(1, 50, value=20, step=1, label="Steps", elem_id=f"{mode}-steps")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
            guidance = gr.Slider(1.0, 6.0, value=1.0, step=0.5, label="Guidance (1 = off; above 1 doubles the time)")
            overlap = gr.Radio([1, 5], value=1, label="Overlap frames between segments")
            step_cache = gr.Dropdown(
                [("Off", "none"), ("First-block cache", "first_block"), ("TaylorSeer (lite)", "taylorseer")],
                value="none", label="Step cache (experimental)",
                info="Skips parts of some steps: ~1.6x faster at 480p; its quality cost is not known yet. Off in the fast preset.",
            )
        with gr.Row():
            color_match = gr.Checkbox(label="Colour consistency across segments", value=False)
            mode_inputs, relight_inputs, mask_inputs = [], [], []
            if replace:
                relight = gr.Checkbox(label="Relighting (the character takes the scene's light)", value=True)
                relight_weight = gr.Slider(0.0, 1.5, value=1.0, step=0.05, label="Relighting weight")
                relight_inputs = [relight, relight_weight]
            else:
                retarget = gr.Checkbox(label="Retarget to the character's proportions", value=False)
                mode_inputs = [retarget]
        if replace:
            with gr.Row():
                mask_inputs = [
                    gr.Slider(1, 31, value=7, step=2, label="Mask dilation kernel (px)", elem_id=f"{mode}-mask-kernel"),
                    gr.Slider(0, 10, value=3, step=1, label="Mask dilation iterations", elem_id=f"{mode}-mask-iterations"),
                    gr.Slider(1, 32, value=1, step=1, label="Blockify grid (1 = whole box)", elem_id=f"{mode}-blockify"),
                ]
    with gr.Row():
        extract = gr.Button("1. Extract", variant="secondary", elem_id=f"{mode}-extract")
        generate = gr.Button("2. Generate", variant="primary", elem_id=f"{mode}-generate")
        draft = gr.Button("Draft (first segment, 480p)", elem_id=f"{mode}-draft")
        oneshot = gr.Button("One click (extract + generate)", elem_id=f"{mode}-oneshot")
        stop = gr.Button("Stop", variant="stop", elem_id=f"{mode}-stop")
    status = gr.Markdown(elem_id=f"{mode}-status")
    with gr.Row():
        preview = dict(interactive=False, height=320)
        skeleton = gr.Video(label="Skeleton the model follows", elem_id=f"{mode}-skeleton", **preview)
        faces = gr.Video(label="Face crops", elem_id=f"{mode}-faces", **preview)
        mask_video = gr.Video(label="Mask (regenerated area)", elem_id=f"{mode}-mask", **preview) if replace else None
        background = gr.Video(label="Background the model keeps", elem_id=f"{mode}-background", **preview) if replace else None
    report = gr.Markdown(elem_id=f"{mode}-report")
    with gr.Accordion("Report (JSON)", open=False):
        report_json = gr.JSON()
    job_id = gr.Textbox(visible=False, label="job_id")
    with gr.Row():
        result = gr.Video(label="Result", interactive=False, elem_id=f"{mode}-result", buttons=["download"], height=480)
        side_by_side = gr.Video(label="Side by side (driving | result)", interactive=False, elem_id=f"{mode}-side", buttons=["download"], height=480)
    summary = gr.Markdown(elem_id=f"{mode}-summary")
    with gr.Accordion("Details (JSON)", open=False):
        details = gr.JSON()
    return _Tab(
        mode=mode, photo=photo, video=video, start=start, end=end, video_line=video_line, frame_index=frame_index,
        picker=picker, picker_frame=picker_frame, point_label=point_label, points=points, points_line=points_line,
        clear_points=clear_points, resolution=resolution, fps=fps, preset=preset, steps=steps, seed=seed,
        guidance=guidance, overlap=overlap, color_match=color_match, step_cache=step_cache, extract=extract, generate=generate, draft=draft,
        oneshot=oneshot, stop=stop, status=status, skeleton=skeleton, faces=faces, report=report,
        report_json=report_json, job_id=job_id, result=result, side_by_side=side_by_side, summary=summary,
        details=details, mode_inputs=mode_inputs, mask_inputs=mask_inputs, relight_inputs=relight_inputs,
        mask_video=mask_video, background=background,
    )


def _wire_tab(studio: Studio, tab: _Tab, runtime: gr.Markdown) -> None:
    replace = tab.mode == "replace"
    name = "replacement" if replace else "animation"
    verb = "replace" if replace else "animate"
    private = dict(api_visibility="private", queue=False)
    trim = [tab.start, tab.end]
    generation = [tab.preset, tab.steps, tab.seed, tab.guidance, tab.overlap, tab.color_match, *tab.relight_inputs, tab.step_cache]
    previews = [tab.skeleton, tab.faces] + ([tab.mask_video, tab.background] if replace else [])
    results = [tab.result, tab.side_by_side, tab.summary, tab.details]
    picker_inputs = [tab.video, tab.job_id, tab.frame_index, *trim, tab.fps, tab.points]
    gpu = dict(concurrency_id="gpu", concurrency_limit=studio.config.gpu_concurrency)

    # Picker: a new video, trim or frame rate resets the points (their frame indices would point elsewhere).
    def reset_points() -> tuple[str, str, str]:
        return "", describe_clicks([]), ""

    for trigger in (tab.video.change, tab.start.submit, tab.end.submit, tab.fps.change):
        (
            trigger(studio.video_info, [tab.video, *trim, tab.fps], [tab.video_line, tab.frame_index, tab.end], **private)
            .then(reset_points, None, [tab.points, tab.points_line, tab.job_id], **private)
            .then(studio.picker_frame, picker_inputs, [tab.picker, tab.picker_frame], api_visibility="private")
        )
    tab.frame_index.release(studio.picker_frame, picker_inputs, [tab.picker, tab.picker_frame], api_visibility="private")
    tab.picker.select(
        studio.add_point,
        [tab.picker_frame, tab.frame_index, tab.points, tab.point_label, gr.State(not replace)],
        [tab.points, tab.picker, tab.points_line],
        **private,
    )
    tab.clear_points.click(reset_points, None, [tab.points, tab.points_line, tab.status], **private).then(
        studio.picker_frame, picker_inputs, [tab.picker, tab.picker_frame], api_visibility="private"
    )
    tab.preset.change(lambda preset: get_preset(preset, studio.fast_available).steps, tab.preset, tab.steps, **private)

    # Extract, then Generate from the extraction's job.
    extract_inputs = [tab.photo, tab.video, *trim, tab.resolution, tab.fps, *tab.mode_inputs, tab.points, *tab.mask_inputs]
    extract_fn = studio.extract_replacement if replace else studio.extract_animation
    tab.extract.click(
        extract_fn, extract_inputs, [*previews, tab.report, tab.report_json, tab.job_id],
        api_name=f"extract_{name}", concurrency_id="preprocess", concurrency_limit=studio.config.preprocess_concurrency,
    ).then(studio.picker_frame, picker_inputs, [tab.picker, tab.picker_frame], api_visibility="private")
    generate_fn = studio.replace if replace else studio.animate
    generate_event = tab.generate.click(generate_fn, [tab.job_id, *generation], results, api_name=verb, **gpu)

    # One click and draft make their own job; its previews are shown afterwards.
    oneshot_fn = studio.replace_oneshot if replace else studio.animate_oneshot
    oneshot_event = tab.oneshot.click(
        oneshot_fn, [*extract_inputs, *generation], [*results, tab.job_id], api_name=f"{verb}_oneshot", **gpu
    )
    draft_fn = studio.replace_draft if replace else studio.animate_draft
    draft_inputs = [tab.photo, tab.video, *trim, tab.fps, *tab.mode_inputs, tab.points, *tab.mask_inputs]
    draft_event = tab.draft.click(draft_fn, [*draft_inputs, *generation], [*results, tab.job_id], api_name=f"{verb}_draft", **gpu)
    for event in (oneshot_event, draft_event):
        event.success(studio.job_previews, tab.job_id, [*previews, tab.report, tab.report_json], api_visibility="private")
    for event in (generate_event, oneshot_event, draft_event):
        event.then(studio.runtime_markdown, None, runtime, api_visibility="private")
    def stop(request: gr.Request) -> str:
        return studio.stop(tab.mode, request)

    # Stop sets the running job's event (it stops after its current step) and drops queued ones.
    tab.stop.click(stop, None, tab.status, cancels=[generate_event, oneshot_event, draft_event], **private)


def build_demo(config: AppConfig) -> gr.Blocks:
    """The page: runtime line, Animation and Replacement tabs, examples at the end of each tab."""
    studio = Studio(config)
    with gr.Blocks(title="Wan2.2-Animate", delete_cache=(3600, int(config.max_job_age))) as demo:
        gr.Markdown(
            "# Wan2.2-Animate\nGive it **one photo of a character** and **a driving video**. Press **Extract** to see "
            "what the model will follow (skeleton, face crops, mask) and a quality report before any GPU minutes "
            "are spent, then **Generate**."
        )
        runtime = gr.Markdown(studio.runtime_markdown(), elem_id="runtime")
        tabs = []
        with gr.Tabs():
            for mode, title in (("animate", "Animation"), ("replace", "Replacement")):
                with gr.Tab(title, id=mode):
                    tab = _build_tab(studio, mode)
                    _wire_tab(studio, tab, runtime)
                    gr.Examples(
                        examples=[[str(ASSETS / "character.jpg"), str(ASSETS / "dance.mp4")]],
                        inputs=[tab.photo, tab.video],
                        label="Example (drawn with OpenCV, see assets/LICENSES.md)",
                    )
                    tabs.append(tab)
        demo.load(studio.runtime_markdown, None, runtime, api_visibility="private")
    demo.queue(max_size=config.max_queue, default_concurrency_limit=config.gpu_concurrency)
    demo.studio = studio  # type: ignore[attr-defined]  (tests and embedding code reach the actions)
    return demo


def parse_args(argv: list[str] | None = None) -> tuple[AppConfig, argparse.Namespace]:
    """Command line flags (each with an environment variable for Spaces) into an `AppConfig`."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Wan2.2-Animate app: character photo + driving video -> video.")
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"), help="Address to listen on (0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")), help="Port (default 7860).")
    parser.add_argument("--share", action="store_true", help="Also serve on a public gradio.live link.")
    parser.add_argument("--model", default=env("WAN_ANIMATE_MODEL", DEFAULT_MODEL_ID), help="Diffusers checkpoint: hub id or local folder (env WAN_ANIMATE_MODEL).")
    parser.add_argument("--detector", default=env("WAN_ANIMATE_DETECTOR"), help="Person detector: hub id or folder (env WAN_ANIMATE_DETECTOR).")
    parser.add_argument("--pose-model", default=env("WAN_ANIMATE_POSE_MODEL"), help="ViTPose whole-body ONNX: hub id, folder or .onnx file (env WAN_ANIMATE_POSE_MODEL).")
    parser.add_argument("--sam2", default=env("WAN_ANIMATE_SAM2"), help="SAM2 video model: hub id or folder (env WAN_ANIMATE_SAM2).")
    parser.add_argument("--memory-mode", default=env("WAN_ANIMATE_MEMORY_MODE", "auto"), choices=["auto", "none", "model", "group", "sequential"], help="GPU memory mode (env WAN_ANIMATE_MEMORY_MODE).")
    parser.add_argument("--dtype", default=env("WAN_ANIMATE_DTYPE", "auto"), choices=["auto", "bfloat16", "float16", "float32"], help="Compute dtype.")
    parser.add_argument("--fp8", action="store_true", default=env("WAN_ANIMATE_FP8", "") == "1", help="Store transformer weights in fp8 (env WAN_ANIMATE_FP8=1).")
    parser.add_argument("--allow-cpu", action="store_true", default=env("WAN_ANIMATE_ALLOW_CPU", "") == "1", help="Allow running without CUDA (only for tiny test models).")
    parser.add_argument("--fast-lora", default=env("WAN_ANIMATE_FAST_LORA", DEFAULT_FAST_LORA), help=f"Few-step LoRA (hub/repo::file.safetensors or a file) for the fast preset and drafts; 'none' switches the fast preset off (default {DEFAULT_FAST_LORA}; env WAN_ANIMATE_FAST_LORA).")
    parser.add_argument("--relight-lora", default=env("WAN_ANIMATE_RELIGHT_LORA"), help="Local relighting_lora.ckpt (or folder / hub id) instead of the hub file (env WAN_ANIMATE_RELIGHT_LORA).")
    parser.add_argument("--gpu-concurrency", type=int, default=int(env("WAN_ANIMATE_GPU_CONCURRENCY", "1")), help="GPU jobs at once (default 1).")
    parser.add_argument("--preprocess-concurrency", type=int, default=int(env("WAN_ANIMATE_PREPROCESS_CONCURRENCY", "2")), help="Extractions at once (default 2).")
    parser.add_argument("--max-queue", type=int, default=int(env("WAN_ANIMATE_MAX_QUEUE", "20")), help="Longest queue (default 20).")
    parser.add_argument("--work-dir", type=Path, default=env("WAN_ANIMATE_WORK_DIR"), help="Folder for job files (default: inside Gradio's cache).")
    parser.add_argument("--preload", action=argparse.BooleanOptionalAction, default=ON_ZEROGPU, help="Load the pipeline at start (default: on ZeroGPU only).")
    args = parser.parse_args(argv)
    config = AppConfig(
        model=args.model, detector=args.detector, pose_model=args.pose_model, sam2=args.sam2,
        memory_mode=args.memory_mode, dtype=args.dtype, fp8=args.fp8, allow_cpu=args.allow_cpu,
        fast_lora=None if args.fast_lora.lower() in ("", "none") else args.fast_lora, relight_lora=args.relight_lora, gpu_concurrency=max(1, args.gpu_concurrency),
        preprocess_concurrency=max(1, args.preprocess_concurrency), max_queue=max(1, args.max_queue),
        work_dir=args.work_dir, preload=args.preload,
    )
    return config, args


def main(argv: list[str] | None = None) -> None:
    """Start the app (``python app.py --help``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config, args = parse_args(argv)
    demo = build_demo(config)
    if config.preload:
        get_pipeline(**config.pipeline_kwargs())
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, mcp_server=True,
                allowed_paths=[str(demo.studio.work_root)])


if __name__ == "__main__":
    main()
