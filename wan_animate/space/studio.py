"""`Studio`: the actions behind the page's buttons, each also a named API endpoint and an MCP tool.

``app.py`` lays the page out and wires its events to these methods; everything an action does happens here,
through the package. The endpoints' signatures and docstrings are what Gradio reads for the API page,
``Client.view_api()`` and the MCP tool descriptions, so they are written for a client.

An action returns (or, for one-call and draft runs, yields) the values of its outputs in the order the endpoint's
docstring gives. One-call and draft runs are generators: they yield the job id as soon as the extraction is
done (the page shows its previews while generation runs), then the result.

On ZeroGPU each GPU action is wrapped in ``spaces.GPU`` with a duration estimated from its arguments
(`wan_animate.space.gpu_time`); there `spaces` must be imported before torch, which ``app.py`` does first.
"""

from __future__ import annotations

import functools
import inspect
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import gradio.utils
import spaces

from ..conditioning import Conditioning
from ..errors import GenerationCancelled, WanAnimateError
from ..generate import GenerationResult, GenerationSettings, generate_video
from ..jobs import Cleaner, Job, JobResult, JobStore
from ..models import describe_runtime, get_pipeline
from ..picker import (
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
from ..preprocess import Preprocessed, PreprocessOptions, Preprocessor
from ..presets import (
    DRAFT_RESOLUTION,
    draft_settings,
    draft_span,
    ensure_fast_lora,
    ensure_relighting_lora,
    estimate_frames,
    estimate_generation_seconds,
    format_minutes,
)
from ..validation import BLOCKIFY, MASK_ITERATIONS, MASK_KERNEL
from ..video import DEFAULT_MAX_SECONDS, probe_video
from .config import AppConfig
from .gpu_time import GpuTime, duration_of
from .inputs import flag, frame_rate, generation_settings, optional_end, output_resolution, start_time

PREVIEWS = {"animate": ("skeleton", "faces"), "replace": ("skeleton", "faces", "mask", "background")}
"""The preview panes of each mode, in the order the extraction endpoints return them."""

NO_RESULT = (None, None, "", None)
"""A generation's outputs (result, side by side, summary, details) before there is a result."""

MODE_TITLES = {"animate": "Animation", "replace": "Replacement"}

logger = logging.getLogger("wan_animate.app")


def user_errors(fn: Callable) -> Callable:
    """Show a user-fixable error (`WanAnimateError`) or a stop as a message on the page, not a stack trace.

    Works on plain functions and on generator functions (which stay generator functions, as Gradio and
    ``spaces.GPU`` tell them apart by that).
    """

    @contextmanager
    def shown_as_messages() -> Iterator[None]:
        try:
            yield
        except WanAnimateError as error:
            raise gr.Error(str(error), print_exception=False) from error
        except GenerationCancelled as error:
            raise gr.Error("Generation was stopped.", title="Stopped", print_exception=False) from error

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            with shown_as_messages():
                yield from fn(*args, **kwargs)

        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        with shown_as_messages():
            return fn(*args, **kwargs)

    return function


class PageProgress:
    """The package's ``progress(done, total, description)`` callbacks, shown by Gradio's progress bar.

    The bar shows ``done / total`` as a fraction and the text the description as it is: the description names
    the stage and, where the stage knows it, how far it is and the time left ("Segment 2/4 · step 3/20 · about
    2 min left"), so the bar never shows a count in the wrong unit. `phase` starts a stage that has no count
    (loading a model) with an empty bar, so no stage runs under the previous one's label and percentage.

    Args:
        progress: A ``gr.Progress`` (or any callable with its signature).
    """

    def __init__(self, progress: Callable[..., Any]) -> None:
        self._progress = progress

    def __call__(self, done: float, total: float, description: str) -> None:
        self._progress(min(1.0, done / total) if total else None, desc=description)

    def phase(self, description: str) -> None:
        """Show ``description`` for a stage whose length is not known (Gradio shows no text without a bar)."""
        self._progress(0.0, desc=description)


class Studio:
    """The app's actions. Public methods with an ``Args:`` docstring are the API endpoints and MCP tools.

    Args:
        config: How the app was started.
    """

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        sources = {"detector": config.detector, "pose": config.pose_model, "sam2": config.sam2}
        self.preprocessor = Preprocessor(**{key: value for key, value in sources.items() if value})
        self.work_root = jobs_folder(config.work_dir)
        # Bounded by age and size: cleaned before each new job, and on a timer for the age limit while idle.
        self.jobs = JobStore(self.work_root, max_age_seconds=config.max_job_age, max_bytes=config.max_job_bytes)
        self.cleaner = Cleaner(self.jobs.clean, config.clean_interval).start()
        logger.info("Jobs folder cleaned every %g min; each job keeps its last %d result(s).", config.clean_interval / 60, config.keep_results)
        self.fast_available = bool(config.fast_lora)
        # Guards against a GPU job starting while a stopped one is still finishing its step (Gradio frees
        # its queue slot at once).
        self._gpu_slots = threading.BoundedSemaphore(config.gpu_concurrency)
        self._lora_lock = threading.Lock()
        self._cancel_lock = threading.Lock()
        self._cancels: dict[str, threading.Event] = {}
        # On ZeroGPU each GPU action asks for as long as its job needs; elsewhere spaces.GPU returns it as is.
        self.gpu_time = GpuTime(self.work_root, self.fast_available)
        for name, estimate in (
            ("extract_animation", self.gpu_time.extract),
            ("extract_replacement", self.gpu_time.extract),
            ("animate", self.gpu_time.generate),
            ("replace", self.gpu_time.generate),
            ("animate_oneshot", self.gpu_time.oneshot),
            ("replace_oneshot", self.gpu_time.oneshot),
            ("animate_draft", self.gpu_time.draft),
            ("replace_draft", self.gpu_time.draft),
        ):
            action = getattr(self, name)
            setattr(self, name, spaces.GPU(duration=duration_of(action, estimate))(action))

    # -- API: Animation -------------------------------------------------------------------------------

    @user_errors
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
        request: gr.Request = None,
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
        job = self._extract("animate", photo, video, start, end, resolution, fps, points, PageProgress(progress), request=request, retarget=retarget)
        return self._extraction_outputs(job)

    @user_errors
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
            result video (with the driving video's sound), side-by-side video (driving video | result), summary (Markdown), details (JSON with the seed).
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, step_cache=step_cache)
        return self._generate_job("animate", job_id, settings, request, progress)

    @user_errors
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
    ) -> Iterator[tuple[str | None, str | None, str, dict | None, str]]:
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
            result video (with sound), side-by-side video (driving video | result), summary (Markdown), details (JSON with the seed and the quality report), job_id.
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, step_cache=step_cache)
        extract = functools.partial(self._extract, "animate", photo, video, start, end, resolution, fps, points, request=request, retarget=retarget)
        yield from self._extract_then_generate("animate", extract, settings, request, progress)

    @user_errors
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
    ) -> Iterator[tuple[str | None, str | None, str, dict | None, str]]:
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
            draft video (with sound), side-by-side video (driving video | draft), summary (Markdown), details (JSON), job_id.
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, step_cache=step_cache)
        extract = functools.partial(self._extract_draft, "animate", photo, video, start, end, fps, points, request=request, retarget=retarget)
        settings = draft_settings(settings, self.fast_available)
        yield from self._extract_then_generate("animate", extract, settings, request, progress)

    # -- API: Replacement -----------------------------------------------------------------------------

    @user_errors
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
        request: gr.Request = None,
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
        job = self._extract(
            "replace", photo, video, start, end, resolution, fps, points, PageProgress(progress), request=request,
            mask_kernel=mask_kernel, mask_iterations=mask_iterations, blockify=blockify,
        )
        return self._extraction_outputs(job)

    @user_errors
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
            result video (with the video's sound), side-by-side video (video | result), summary (Markdown), details (JSON with the seed).
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, relight, relight_weight, step_cache)
        return self._generate_job("replace", job_id, settings, request, progress)

    @user_errors
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
    ) -> Iterator[tuple[str | None, str | None, str, dict | None, str]]:
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
            result video (with sound), side-by-side video (video | result), summary (Markdown), details (JSON with the seed and the quality report), job_id.
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, relight, relight_weight, step_cache)
        extract = functools.partial(
            self._extract, "replace", photo, video, start, end, resolution, fps, points, request=request,
            mask_kernel=mask_kernel, mask_iterations=mask_iterations, blockify=blockify,
        )
        yield from self._extract_then_generate("replace", extract, settings, request, progress)

    @user_errors
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
    ) -> Iterator[tuple[str | None, str | None, str, dict | None, str]]:
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
            draft video (with sound), side-by-side video (video | draft), summary (Markdown), details (JSON), job_id.
        """
        settings = self._settings(preset, steps, seed, guidance, overlap, color_match, relight, relight_weight, step_cache)
        extract = functools.partial(
            self._extract_draft, "replace", photo, video, start, end, fps, points, request=request,
            mask_kernel=mask_kernel, mask_iterations=mask_iterations, blockify=blockify,
        )
        settings = draft_settings(settings, self.fast_available)
        yield from self._extract_then_generate("replace", extract, settings, request, progress)

    # -- page helpers (not API endpoints) -------------------------------------------------------------

    def job_previews(self, mode: str, job_id: str, request: gr.Request = None) -> tuple:
        """The preview panes, the report and its JSON of the job the page shows; all empty without a job."""
        if not job_id:
            return (*(None for _ in PREVIEWS[mode]), "", None)
        try:
            return self._extraction_outputs(self._open_job(job_id, request, mode))[:-1]
        except WanAnimateError as error:
            raise gr.Error(str(error), print_exception=False) from error

    def stop(self, mode: str, request: gr.Request = None) -> str:
        """Stop this browser tab's running generation in ``mode`` after its current step."""
        with self._cancel_lock:
            cancel = self._cancels.get(_cancel_key(request, mode))
        if cancel is None:
            return "Nothing is being generated."
        cancel.set()
        return "Stopping after the current step…"

    def runtime_markdown(self) -> str:
        """Where the model runs (GPU, memory mode, dtype), or what will be used before it is loaded."""
        return describe_runtime(**self.config.pipeline_kwargs())

    def video_info(self, video: str | None, start: float, end: float | None, fps: str = "30") -> tuple[str, dict, float | None]:
        """A line about the uploaded video, the frame slider's range, and the end trim to show."""
        if not video:
            return "", gr.update(maximum=1, value=0), end
        try:
            info = probe_video(video)
            first, last, rate = start_time(start), optional_end(end), frame_rate(fps)
        except WanAnimateError as error:
            return f"⚠️ {error}", gr.update(maximum=1, value=0), end
        sound = "with sound" if info.has_audio else "no sound (the result will be silent)"
        line = f"{info.duration:.1f} s · {info.width}×{info.height} · {info.fps:.3g} fps · {sound}"
        if info.duration > DEFAULT_MAX_SECONDS and last is None:
            end = last = first + DEFAULT_MAX_SECONDS
            line += f"\n\n⚠️ Longer than {DEFAULT_MAX_SECONDS:g} s: the end was set to {end:g} s; change start and end to pick another part."
        frames = estimate_frames(info.duration, info.fps, rate, first, last)
        return line, gr.update(maximum=max(1, frames - 1), value=0), end

    def picker_frame(
        self, video: str | None, job_id: str, index: int, start: float, end: float | None, fps: str, points: str,
        request: gr.Request = None,
    ):
        """Frame ``index`` for the picker: the mask overlay after a Replacement extraction, else the video frame."""
        if not video:
            return None, None
        try:
            mask_video = self._open_job(job_id, request).preview("mask") if job_id else None
            if mask_video is not None:
                frame = read_frame(mask_video, int(index), fps=None)
            else:
                frame = read_frame(video, int(index), fps=frame_rate(fps), start=start_time(start), end=optional_end(end))
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
        progress: PageProgress,
        *,
        request: gr.Request | None = None,
        retarget: bool = False,
        mask_kernel: int = 7,
        mask_iterations: int = 3,
        blockify: int = 1,
    ) -> Job:
        """One `Preprocessor.prepare` call in a new job folder of the request's session; the job records how it was
        made and its previews. The values are checked before the folder is made, and a failed extraction's folder
        is removed."""
        if not photo or not video:
            raise WanAnimateError("Upload a character photo and a driving video first.")
        clicks = parse_clicks(points)
        cells = BLOCKIFY.check(blockify)
        options = PreprocessOptions(
            resolution=output_resolution(resolution),
            fps=frame_rate(fps),
            start=start_time(start),
            end=optional_end(end),
            retarget=flag("Retarget", retarget),
            mask_kernel=MASK_KERNEL.check(mask_kernel),
            mask_iterations=MASK_ITERATIONS.check(mask_iterations),
            blockify=(cells, cells),
        )
        options.check()
        self.jobs.clean()
        job = self.jobs.new(
            mode, photo, video, start=options.start, end=options.end, fps=options.fps, resolution=options.resolution,
            options=dict(retarget=options.retarget, points=dump_clicks(clicks), mask_kernel=options.mask_kernel,
                         mask_iterations=options.mask_iterations, blockify=cells),
            owner=_session(request),
        )
        record = job.record
        with self.jobs.use(job, discard_on_failure=True):
            if clicks:
                size = conditioning_size(mode, record.photo, record.video, options.resolution)
                prompts = to_point_prompts(clicks, size) if mode == "replace" else ()
                options = replace(options, person_point=person_point(clicks, size), points=prompts)
            self._load_preprocessing(mode, progress)
            progress.phase("Reading the video")
            prepared = self.preprocessor.prepare(mode, record.photo, record.video, job.prepared_dir, options, progress=progress)
            record.num_frames = prepared.conditioning.num_frames
            record.report = prepared.report.to_dict()
            record.previews = _preview_files(job, prepared)
            estimate = estimate_generation_seconds(record.num_frames, record.resolution, GenerationSettings(), include_load=False)
            record.report_markdown = (
                prepared.report.to_markdown()
                + f"\n\n**Generation** ({record.resolution}, 20 steps): {format_minutes(estimate)} of GPU time"
                + f" for {record.num_frames} frames.\n\n<small>Job `{job.id}`</small>"
            )
            job.save()
        return job

    def _load_preprocessing(self, mode: str, progress: PageProgress) -> None:
        """Load the preprocessing models this mode needs, each under its own label (reading one of these cached
        properties loads it; at once if it is loaded already)."""
        progress.phase("Loading the person detector")
        self.preprocessor.detector
        progress.phase("Loading the pose model")
        self.preprocessor.pose_estimator
        if mode == "replace":
            progress.phase("Loading SAM2 (the mask model)")
            self.preprocessor.segmenter

    def _extract_draft(self, mode, photo, video, start, end, fps, points, progress, **options) -> Job:
        """Extract again at 480p, only the span of the first segment (skeleton strokes depend on the size)."""
        if not video:
            raise WanAnimateError("Upload a character photo and a driving video first.")
        fps = frame_rate(fps)
        draft_start, draft_end = draft_span(start_time(start), optional_end(end), fps or probe_video(video).fps)
        return self._extract(mode, photo, video, draft_start, draft_end, DRAFT_RESOLUTION, fps, points, progress, **options)

    def _extraction_outputs(self, job: Job) -> tuple:
        """An extraction endpoint's outputs: the mode's previews, the report, its JSON, the job id."""
        previews = (job.preview(name) for name in PREVIEWS[job.record.mode])
        return (*(str(path) if path else None for path in previews), job.record.report_markdown, self._report(job), job.id)

    def _generate_job(
        self, mode: str, job_id: str, settings: GenerationSettings, request: gr.Request | None, progress: Callable[..., Any]
    ) -> tuple:
        """/animate and /replace: generate from an extracted job of this session and mode."""
        job = self._open_job(job_id, request, mode)
        with self._cancellable(request, mode) as cancel:
            return self._generate(job, settings, cancel, PageProgress(progress))

    def _extract_then_generate(
        self,
        mode: str,
        extract: Callable[[PageProgress], Job],
        settings: GenerationSettings,
        request: gr.Request | None,
        progress: Callable[..., Any],
    ) -> Iterator[tuple]:
        """One click and drafts: yield the job id as soon as ``extract`` made it (the page shows its previews while
        generation runs), then the generation's outputs and the job id."""
        progress = PageProgress(progress)
        with self._cancellable(request, mode) as cancel:
            job = extract(progress)
            yield (*NO_RESULT, job.id)
            yield (*self._generate(job, settings, cancel, progress), job.id)

    def _settings(self, *values, **named) -> GenerationSettings:
        return generation_settings(*values, **named, fast_available=self.fast_available)

    def _generate(
        self, job: Job, settings: GenerationSettings, cancel: threading.Event, progress: PageProgress
    ) -> tuple[str, str, str, dict]:
        """Generate from a job's conditioning; ``cancel`` (set by Stop) is checked between steps.

        Returns:
            The generation endpoints' outputs: result video, side-by-side video, summary, details.
        """
        with self._result_files(job) as files:
            conditioning = job.load_conditioning()
            with self._gpu_slots:
                if cancel.is_set():
                    raise GenerationCancelled("Stopped before generation started.")
                progress.phase("Loading the model")  # a first load reports its own stages
                pipeline = get_pipeline(**self.config.pipeline_kwargs(), progress=progress)
                with self._lora_lock:
                    if self.fast_available:
                        progress.phase("Loading the few-step LoRA")
                        ensure_fast_lora(pipeline, self.config.fast_lora)
                    if self.config.relight_lora and job.record.mode == "replace":
                        progress.phase("Loading the relighting LoRA")
                        ensure_relighting_lora(pipeline, self.config.relight_lora)
                progress.phase("Encoding the prompt and the inputs")
                result = generate_video(pipeline, conditioning, files.video, settings, progress=progress, cancel=cancel)
            progress.phase("Writing the side-by-side video")
            side_by_side = job.write_side_by_side(result.video_path, files.side_by_side)
        return (
            str(result.video_path),
            str(side_by_side),
            _result_markdown(conditioning, result, settings),
            self._details(job, conditioning, result, settings),
        )

    @contextmanager
    def _result_files(self, job: Job) -> Iterator[JobResult]:
        """Where a generation writes its files. Meanwhile the job is in use (cleaning leaves it alone); once the
        block succeeds the job keeps its newest `AppConfig.keep_results` results, and a failed or stopped
        generation leaves no files (`Job.new_result`)."""
        with self.jobs.use(job), job.new_result(keep=self.config.keep_results) as files:
            yield files

    def _open_job(self, job_id: str, request: gr.Request | None, mode: str | None = None) -> Job:
        """The job ``job_id`` if the request's session made it (and, given ``mode``, it was extracted for it).

        Raises:
            WanAnimateError: No such job, another session's job, or a job of the other mode.
        """
        job = self.jobs.open(job_id)
        if job.record.owner != _session(request):
            logger.warning("Refused job %s to a session that did not make it.", job.id)
            raise WanAnimateError(
                "That extraction belongs to another session (another browser tab or API client); only the session "
                "that made it can use it. Press Extract to make your own."
            )
        if mode is not None and job.record.mode != mode:
            made, wanted = MODE_TITLES[job.record.mode], MODE_TITLES[mode]
            raise WanAnimateError(
                f"That extraction was made for {made}, not {wanted}: extract in the {wanted} tab "
                f"(API: /extract_{wanted.lower()}) and generate from that job."
            )
        return job

    @contextmanager
    def _cancellable(self, request: gr.Request | None, mode: str) -> Iterator[threading.Event]:
        """The event Stop sets for this browser tab's job in ``mode``, registered while the job runs.

        On ZeroGPU the job runs in a forked worker that this event does not reach; there Stop only drops the
        queued or running event from Gradio's queue.
        """
        key = _cancel_key(request, mode)
        cancel = threading.Event()
        with self._cancel_lock:
            self._cancels[key] = cancel
        try:
            yield cancel
        finally:
            with self._cancel_lock:
                if self._cancels.get(key) is cancel:
                    del self._cancels[key]

    def _report(self, job: Job) -> dict:
        return {"job_id": job.id, "mode": job.record.mode, "resolution": job.record.resolution, **(job.record.report or {})}

    def _details(self, job: Job, conditioning: Conditioning, result: GenerationResult, settings: GenerationSettings) -> dict:
        return {
            "job_id": job.id,
            "seed": result.seed,
            "frames": conditioning.num_frames,
            "fps": result.fps,
            "width": conditioning.width,
            "height": conditioning.height,
            "seconds": round(result.seconds, 2),
            "steps": settings.num_inference_steps,
            "guidance": settings.guidance_scale,
            "overlap": settings.overlap_frames,
            "lora_weights": dict(settings.lora_weights),
            "step_cache": settings.step_cache,
            "report": job.record.report,
        }


def jobs_folder(work_dir: str | Path | None) -> Path:
    """The jobs folder: ``work_dir``, by default ``wan_animate_jobs`` in the temporary folder.

    A job folder holds the user's uploads and its record (``job.json``), which must not be served: Gradio serves
    every file under its upload folder to anyone who has (or edits) a file URL, so the jobs folder must be
    outside it. The page's previews and results are served from Gradio's own copies, which it makes only of files
    under the current or the temporary folder, so the jobs folder must be under one of them.

    Raises:
        WanAnimateError: ``work_dir`` breaks one of these rules (said at start, with the folders).
    """
    folder = Path(work_dir or Path(tempfile.gettempdir()) / "wan_animate_jobs").resolve()
    served = Path(gradio.utils.get_upload_folder()).resolve()
    if folder.is_relative_to(served):
        raise WanAnimateError(
            f"The jobs folder {folder} is inside Gradio's upload folder {served}, whose files Gradio serves to anyone "
            "with their address. Choose another --work-dir (WAN_ANIMATE_WORK_DIR)."
        )
    copied_from = [Path.cwd().resolve(), Path(tempfile.gettempdir()).resolve()]
    if not any(folder.is_relative_to(base) for base in copied_from):
        raise WanAnimateError(
            f"The jobs folder {folder} must be under the current folder or {copied_from[1]}: Gradio shows only "
            "files from there. Choose another --work-dir (WAN_ANIMATE_WORK_DIR)."
        )
    return folder


def _preview_files(job: Job, prepared: Preprocessed) -> dict[str, str]:
    """`JobRecord.previews` of a fresh extraction: what preprocessing wrote, by pane name."""
    files = {
        "skeleton": prepared.skeleton_video,
        "faces": prepared.face_video,
        "mask": prepared.mask_video,
        "background": prepared.background_video,
    }
    return {name: str(Path(path).relative_to(job.folder)) for name, path in files.items() if path is not None}


def _result_markdown(conditioning: Conditioning, result: GenerationResult, settings: GenerationSettings) -> str:
    frames = conditioning.num_frames
    return (
        f"**Seed {result.seed}** · {frames} frames at {result.fps:g} fps ({frames / result.fps:.1f} s) · "
        f"{conditioning.width}×{conditioning.height} · {settings.num_inference_steps} steps · "
        f"took {result.seconds:.0f} s"
    )


def _session(request: gr.Request | None) -> str | None:
    """The Gradio session of a request (a browser tab, or a `gradio_client.Client`); ``None`` when called directly."""
    return getattr(request, "session_hash", None)


def _cancel_key(request: gr.Request | None, mode: str) -> str:
    session = getattr(request, "session_hash", None) or "no-session"
    return f"{session}:{mode}"
