"""`Studio`: the actions behind the page's buttons, each also a named API endpoint and an MCP tool.

``app.py`` lays the page out and wires its events to these methods; everything an action does happens here,
through the package. The endpoints' signatures and docstrings are what Gradio reads for the API page,
``Client.view_api()`` and the MCP tool descriptions, so they are written for a client.

An extraction returns its outputs in the order its docstring gives. A generation is an async generator: it yields
the result pane's outputs after every finished segment (the video grows as the job goes on; the details say
``"complete": false`` until the last value, the finished result), and one-call and draft runs yield the job id
first, as soon as the extraction is done. The blocking job runs on a worker thread (`streaming`), so cancelling
the event (Stop on the page, ``job.cancel()`` from `gradio_client`) reaches it at once: the job stops after its
current step and keeps its finished segments; Generate with the same settings goes on from there.

The GPU work runs in `spaces.GPU` calls: an extraction in one, a generation in one off ZeroGPU and on ZeroGPU in
as many calls of at most 300 s as it needs (`zerogpu`), each asking for the duration estimated from its
arguments (`gpu_time`). There `spaces` must be imported before torch, which ``app.py`` does first, and a call runs
in a worker process whose memory is lost: who owns a job is in its ``job.json`` (the session crosses into the
extraction's call as a plain argument), and the jobs folder is cleaned in the app's process, which marks a job in
use (`JobStore.use`) through all the calls of its generation. A job being extracted in a worker is not marked in
use there; as the newest job it is the last one the size limit would remove.

With several processes (`ranks`: torchrun, one per GPU) the Studio runs on rank 0, and each generation call
sends its job to the other ranks (`wan_animate.parallel.share_job`, then `enable_context_parallel`) and generates
with them, one job at a time (the one GPU slot); a stop reaches them at the next step's report.

Jobs belong to the session (browser tab or API client) that extracted them (`JobRecord.owner`): every action that
takes a job id opens it through `Studio._open_job`, which refuses another session's job. The jobs folder is
never served: the page gets Gradio's copies of the previews, the results and the growing video.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import gradio.utils
import spaces

from ..conditioning import Conditioning
from ..errors import GenerationCancelled, WanAnimateError
from ..generate import GenerationResult, GenerationSettings, SegmentUpdate, generate_video, load_checkpoint
from ..jobs import Cleaner, Job, JobStore
from ..lora import RELIGHT_REPO
from ..models import describe_runtime, get_pipeline
from ..parallel import ParallelContext, enable_context_parallel, share_job
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
from ..progress import ProgressCallback, no_progress
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
from . import gpu_time
from .inputs import flag, frame_rate, generation_settings, optional_end, output_resolution, start_time
from .streaming import stream_async, stream_thread
from .zerogpu import (
    LOCAL_CALL,
    MAX_CALL_SECONDS,
    STOP_FILE,
    GpuCall,
    is_platform_refusal,
    plan_calls,
    refusal_message,
    stop_file_event,
)

if TYPE_CHECKING:
    from diffusers import WanAnimatePipeline

logger = logging.getLogger("wan_animate.app")

PREVIEWS = {"animate": ("skeleton", "faces"), "replace": ("skeleton", "faces", "mask", "background")}
"""The preview panes of each mode, in the order the extraction endpoints return them."""

NO_RESULT = (None, None, "", None)
"""A generation's outputs (result, side by side, summary, details) before there is a result."""

MODE_TITLES = {"animate": "Animation", "replace": "Replacement"}


def user_errors(fn: Callable) -> Callable:
    """Show a user-fixable error (`WanAnimateError`) or a stop as a message on the page, not a stack trace.

    Works on plain functions and on (async) generator functions, which stay what they are: Gradio and
    ``spaces.GPU`` tell them apart by that.
    """

    @contextmanager
    def shown_as_messages() -> Iterator[None]:
        try:
            yield
        except WanAnimateError as error:
            raise gr.Error(str(error), print_exception=False) from error
        except GenerationCancelled as error:
            raise gr.Error(str(error) or "Generation was stopped.", title="Stopped", print_exception=False) from error

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def async_generator(*args, **kwargs):
            with shown_as_messages():
                async for value in fn(*args, **kwargs):
                    yield value

        return async_generator

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

    The bar shows ``done / total`` as a fraction (a percentage on the page) and the text the description as it
    is: the description names the stage and, where the stage knows it, how far it is and the time left
    ("Segment 2/4 · step 3/20 · about 2 min left"), so the bar never shows a count in the wrong unit. A stage
    with no count (``total`` 0, or `phase`: loading a model, a GPU call starting) shows its label over the bar as
    it was, so no stage runs under the previous one's label and a job's bar does not go back between its stages.

    Args:
        progress: A ``gr.Progress`` (or any callable with its signature).
    """

    def __init__(self, progress: Callable[..., Any]) -> None:
        self._progress = progress
        self._fraction = 0.0

    def __call__(self, done: float, total: float, description: str) -> None:
        if total:
            self._fraction = min(1.0, done / total)
        self._progress(self._fraction, desc=description)

    def phase(self, description: str) -> None:
        """Show ``description`` for a stage whose length is not known (Gradio shows no text without a bar)."""
        self(0, 0, description)


@dataclass(frozen=True)
class ProgressReport:
    """A ``progress(done, total, description)`` call of a GPU call, as it crosses from ZeroGPU's worker process to
    the app's (``total`` 0: a phase without a count)."""

    done: float
    total: float
    description: str


@dataclass(frozen=True)
class CallEnd:
    """The last report of a generation's GPU call: its result, or the sentence of how it ended early (only
    ``gr.Error`` keeps its message across ZeroGPU's process boundary, so the call sends its own)."""

    result: GenerationResult | None = None
    stopped: str | None = None
    error: str | None = None


@dataclass
class Running:
    """A generation a browser tab (or API session) runs in one mode: what its Stop reaches, and how it ended."""

    cancel: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""
    stop_file: Path | None = None
    """On ZeroGPU, the file that stops the GPU call working on the job (`zerogpu.STOP_FILE`)."""

    def stop(self) -> None:
        """Stop after the current step (idempotent)."""
        self.cancel.set()
        if self.stop_file is not None:
            self.stop_file.touch()


STOP_WAIT_SECONDS = 600
"""How long Stop waits to say how far the job got (a step at 720p with guidance takes ~26 s on an H100; loading
the model cannot be interrupted)."""


class Studio:
    """The app's actions. Public methods with an ``Args:`` docstring are the API endpoints and MCP tools.

    Args:
        config: How the app was started.
        parallel: Rank 0's place among several processes (`wan_animate.space.ranks`), or ``None`` in one process.
            Every generation is then shared with the other ranks, one at a time.
    """

    def __init__(self, config: AppConfig, parallel: ParallelContext | None = None) -> None:
        self.config = config
        self.parallel = parallel
        sources = {"detector": config.detector, "pose": config.pose_model, "sam2": config.sam2}
        self.preprocessor = Preprocessor(**{key: value for key, value in sources.items() if value})
        self.work_root = jobs_folder(config.work_dir)
        # Bounded by age and size: cleaned before each new job, and on a timer for the age limit while idle.
        self.jobs = JobStore(self.work_root, max_age_seconds=config.max_job_age, max_bytes=config.max_job_bytes)
        self.cleaner = Cleaner(self.jobs.clean, config.clean_interval).start()
        logger.info("Jobs folder cleaned every %g min; each job keeps its last %d result(s).", config.clean_interval / 60, config.keep_results)
        self.fast_available = bool(config.fast_lora)
        # Guards against a GPU job starting while a stopped one is still finishing its step (Gradio frees
        # its queue slot at once). With several processes it is what keeps two jobs' messages to the other ranks
        # from interleaving: one slot (`ranks.join_ranks` refuses more).
        self._gpu_slot_count = 1 if parallel is not None else config.gpu_concurrency
        self._gpu_slots = threading.BoundedSemaphore(self._gpu_slot_count)
        self._lora_lock = threading.Lock()
        self._cancel_lock = threading.Lock()
        self._running: dict[str, Running] = {}
        self._stopped: dict[str, str] = {}  # how the last stopped job of a tab and mode ended, until Stop says it
        self._claims = threading.Condition()
        self._generating: set[Path] = set()  # state folders a generation works on (under _claims)
        # On ZeroGPU each GPU call asks for as long as its work needs; elsewhere spaces.GPU returns it as is. An
        # extraction is one call (`_extraction_call`); a generation runs as calls (`_generation_call`), each asking
        # for its own.
        extraction = self._extraction_call
        self._extraction_call = spaces.GPU(duration=gpu_time.duration_of(extraction, gpu_time.extract_seconds))(extraction)
        self._generation_call = spaces.GPU(duration=_call_duration)(self._generation_call)

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
        job = self._extraction(False, "animate", photo, video, start, end, resolution, fps, points, request, PageProgress(progress), dict(retarget=retarget))
        return self._extraction_outputs(job)

    @user_errors
    async def animate(
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
    ) -> AsyncIterator[tuple[str | None, str | None, str, dict]]:
        """Animation, step 2: generate the video from an extraction (the job_id returned by /extract_animation).

        The outputs come after every finished 77-frame segment, the video growing (details: "complete": false),
        and the finished result last. A job stopped or failed part-way keeps its finished segments (its last
        outputs hold them and say why it ended): the same call with the same settings goes on from there.

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
        async for outputs in self._generate_job("animate", job_id, settings, request, progress):
            yield outputs

    @user_errors
    async def animate_oneshot(
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
    ) -> AsyncIterator[tuple[str | None, str | None, str, dict | None, str]]:
        """Animation in one call: extract, then generate. The character in the photo performs the video's motion.

        The job_id comes first, as soon as the extraction is done, then the outputs after every finished 77-frame
        segment, the video growing (details: "complete": false), and the finished result last. A job stopped or
        failed part-way keeps its finished segments: /animate with that job_id and the same settings goes on from there.

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
        extract = functools.partial(
            self._extraction, False, "animate", photo, video, start, end, resolution, fps, points, request, options=dict(retarget=retarget)
        )
        async for outputs in self._extract_then_generate("animate", extract, settings, request, progress):
            yield outputs

    @user_errors
    async def animate_draft(
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
    ) -> AsyncIterator[tuple[str | None, str | None, str, dict | None, str]]:
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
        extract = functools.partial(
            self._extraction, True, "animate", photo, video, start, end, DRAFT_RESOLUTION, fps, points, request, options=dict(retarget=retarget)
        )
        settings = draft_settings(settings, self.fast_available)
        async for outputs in self._extract_then_generate("animate", extract, settings, request, progress):
            yield outputs

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
        job = self._extraction(
            False, "replace", photo, video, start, end, resolution, fps, points, request, PageProgress(progress),
            dict(mask_kernel=mask_kernel, mask_iterations=mask_iterations, blockify=blockify),
        )
        return self._extraction_outputs(job)

    @user_errors
    async def replace(
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
    ) -> AsyncIterator[tuple[str | None, str | None, str, dict]]:
        """Replacement, step 2: generate the video from an extraction (the job_id returned by /extract_replacement).

        The outputs come after every finished 77-frame segment, the video growing (details: "complete": false),
        and the finished result last. A job stopped or failed part-way keeps its finished segments (its last
        outputs hold them and say why it ended): the same call with the same settings goes on from there.

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
        async for outputs in self._generate_job("replace", job_id, settings, request, progress):
            yield outputs

    @user_errors
    async def replace_oneshot(
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
    ) -> AsyncIterator[tuple[str | None, str | None, str, dict | None, str]]:
        """Replacement in one call: extract, then generate. The character replaces the person in the video.

        The job_id comes first, as soon as the extraction is done, then the outputs after every finished 77-frame
        segment, the video growing (details: "complete": false), and the finished result last. A job stopped or
        failed part-way keeps its finished segments: /replace with that job_id and the same settings goes on from there.

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
            self._extraction, False, "replace", photo, video, start, end, resolution, fps, points, request,
            options=dict(mask_kernel=mask_kernel, mask_iterations=mask_iterations, blockify=blockify),
        )
        async for outputs in self._extract_then_generate("replace", extract, settings, request, progress):
            yield outputs

    @user_errors
    async def replace_draft(
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
    ) -> AsyncIterator[tuple[str | None, str | None, str, dict | None, str]]:
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
            self._extraction, True, "replace", photo, video, start, end, DRAFT_RESOLUTION, fps, points, request,
            options=dict(mask_kernel=mask_kernel, mask_iterations=mask_iterations, blockify=blockify),
        )
        settings = draft_settings(settings, self.fast_available)
        async for outputs in self._extract_then_generate("replace", extract, settings, request, progress):
            yield outputs

    # -- page helpers (not API endpoints) -------------------------------------------------------------

    @user_errors
    def job_previews(self, mode: str, job_id: str, request: gr.Request = None) -> tuple:
        """The preview panes, the report and its JSON of the job the page shows; all empty without a job."""
        if not job_id:
            return (*(None for _ in PREVIEWS[mode]), "", None)
        return self._extraction_outputs(self._open_job(job_id, request, mode))[:-1]

    def stop(self, mode: str, request: gr.Request = None) -> Iterator[str]:
        """Stop this browser tab's running generation in ``mode`` after its current step, then say how far it got.

        The page's Stop also cancels the generation's event; the job's outcome comes from the job itself, which
        goes on (for at most a step) after its event is gone.
        """
        key = _cancel_key(request, mode)
        with self._cancel_lock:
            running = self._running.get(key)
            stopped = self._stopped.pop(key, None)
        if running is None:
            yield stopped or "Nothing is being generated."
            return
        running.stop()
        yield "Stopping after the current step…"
        if running.ended.wait(STOP_WAIT_SECONDS):
            with self._cancel_lock:
                self._stopped.pop(key, None)
            yield running.outcome

    def preload(self) -> None:
        """Load the pipeline and the LoRAs the app uses now, before the first job (``--preload``; on ZeroGPU the
        models must be in the app's process before its first GPU call, and LoRAs loaded in a call's worker process
        would be loaded again in every call; with several processes every rank loads the same at start,
        `ranks.follow_leader`)."""
        with self._lora_lock:
            app_pipeline(self.config, relight=True)

    def stop_generations(self) -> None:
        """Stop every running generation after its current step (the app is exiting). Takes no lock, so a signal
        handler may call it."""
        for running in list(self._running.values()):
            running.stop()

    def close(self, timeout: float = STOP_WAIT_SECONDS) -> bool:
        """At the app's exit: stop the cleaner and the running generations (after their current step), and keep new
        ones from starting. With several processes rank 0 does this before it lets the other ranks go
        (`ranks.lead_followers`): a generation still sharing its steps with them would meet that message.

        Returns:
            Whether the GPU is free: every generation ended within ``timeout`` seconds (none starts after this).
        """
        self.cleaner.stop()
        self.stop_generations()
        deadline = time.monotonic() + timeout
        return all(
            self._gpu_slots.acquire(timeout=max(0.0, deadline - time.monotonic())) for _ in range(self._gpu_slot_count)
        )

    @property
    def default_preset(self) -> str:
        """The page's preset at start: the fast one on ZeroGPU (when the app has it), where GPU seconds are quota."""
        return "fast" if self.config.zerogpu and self.fast_available else "quality"

    def gpu_estimate(
        self,
        job_id: str,
        video: str | None,
        start: float,
        end: float | None,
        fps: str,
        resolution: str,
        preset: str,
        steps: int,
        guidance: float,
        overlap: int,
        request: gr.Request = None,
    ) -> str:
        """The GPU time a generation with these settings will take (on ZeroGPU: in how many calls, and whether a
        visitor's quota can cover it), for the page before the job starts: from the job the page holds, else from
        the uploaded video at the chosen resolution."""
        try:
            settings = self._settings(preset, steps, -1, guidance, overlap, False)
            if job_id:
                record = self._open_job(job_id, request).record
                frames, resolution = record.num_frames or 1, record.resolution
            elif video:
                info = probe_video(video)
                frames = estimate_frames(info.duration, info.fps, frame_rate(fps), start_time(start), optional_end(end))
            else:
                return ""
            return gpu_time.describe_generation(frames, resolution, settings, zerogpu=self.config.zerogpu)
        except WanAnimateError as error:
            return f"⚠️ {error}"

    def runtime_markdown(self) -> str:
        """Where the model runs (GPU, memory mode, dtype), or what will be used before it is loaded."""
        runtime = describe_runtime(**self.config.pipeline_kwargs())
        if self.parallel is None:
            return runtime
        return f"{runtime} · on {self.parallel.world_size} processes, every job split over all of them, one job at a time"

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
        owner: str | None = None,
        retarget: bool = False,
        mask_kernel: int = 7,
        mask_iterations: int = 3,
        blockify: int = 1,
    ) -> Job:
        """One `Preprocessor.prepare` call in a new job folder of session ``owner``; the job records how it was made
        and its previews. The values are checked before the folder is made, and a failed extraction's folder is
        removed."""
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
        job = self.jobs.new(
            mode, photo, video, start=options.start, end=options.end, fps=options.fps, resolution=options.resolution,
            options=dict(retarget=options.retarget, points=dump_clicks(clicks), mask_kernel=options.mask_kernel,
                         mask_iterations=options.mask_iterations, blockify=cells),
            owner=owner,
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

    def _extraction(
        self, draft: bool, mode: str, photo: str, video: str, start: float, end: float | None, resolution: str,
        fps: str, points: str, request: gr.Request | None, progress: PageProgress, options: dict[str, Any],
    ) -> Job:
        """An extraction (a draft's: of the first segment's span at 480p) for the request's session: the jobs
        folder cleaned here, in the app's process (it knows which jobs are in use), then the GPU call."""
        self.jobs.clean()
        return self._extraction_call(draft, mode, photo, video, start, end, resolution, fps, points, _session(request), progress, options)

    def _extraction_call(
        self, draft: bool, mode: str, photo: str, video: str, start: float, end: float | None, resolution: str,
        fps: str, points: str, owner: str | None, progress: PageProgress, options: dict[str, Any],
    ) -> Job:
        """An extraction as its own GPU call (plain arguments: on ZeroGPU they are pickled into the worker process,
        which records the job, its owner included, in its ``job.json`` and removes the folder if it fails)."""
        if draft:
            return self._extract_draft(mode, photo, video, start, end, fps, points, progress, owner=owner, **options)
        return self._extract(mode, photo, video, start, end, resolution, fps, points, progress, owner=owner, **options)

    async def _generate_job(
        self, mode: str, job_id: str, settings: GenerationSettings, request: gr.Request | None, progress: Callable[..., Any]
    ) -> AsyncIterator[tuple]:
        """/animate and /replace: generate from an extracted job of this session and mode."""
        job = self._open_job(job_id, request, mode)  # reads one small file: fine on the event loop
        running = Running()

        def run() -> Iterator[tuple]:
            with self._registered(request, mode, running):
                yield from self._generate(job, settings, running, PageProgress(progress))

        async for outputs in stream_async(run(), on_stop=running.stop):
            yield outputs

    async def _extract_then_generate(
        self,
        mode: str,
        extract: Callable[[PageProgress], Job],
        settings: GenerationSettings,
        request: gr.Request | None,
        progress: Callable[..., Any],
    ) -> AsyncIterator[tuple]:
        """One click and drafts: yield the job id as soon as ``extract`` made it (the page shows its previews while
        generation runs), then the generation's outputs, each with the job id."""
        running = Running()

        def run() -> Iterator[tuple]:
            with self._registered(request, mode, running):
                job = extract(PageProgress(progress))
                yield (*NO_RESULT, job.id)
                for outputs in self._generate(job, settings, running, PageProgress(progress)):
                    yield (*outputs, job.id)

        async for outputs in stream_async(run(), on_stop=running.stop):
            yield outputs

    def _settings(self, *values, **named) -> GenerationSettings:
        return generation_settings(*values, **named, fast_available=self.fast_available)

    def _generate(
        self, job: Job, settings: GenerationSettings, running: Running, progress: PageProgress
    ) -> Iterator[tuple[str | None, str | None, str, dict]]:
        """Generate from a job's conditioning as GPU calls (one off ZeroGPU), on the calling thread; yield the
        outputs after every finished segment, then the finished result.

        The job's state folder is one per settings (`Job.generation_dir`): a job stopped or failed part-way keeps
        its segments there and in its video, and the same settings go on from the last one. Its last outputs then
        hold what was finished and say how it ended; a failure with nothing finished raises.

        Raises:
            WanAnimateError: Failed before a segment was finished (the sentence says what to change).
        """
        started = time.monotonic()
        run = _Run(job, job.load_conditioning(), settings)
        # In use (the cleaner leaves it alone) from the first GPU call to the result, in the app's process.
        with self.jobs.use(job), self._claimed(run.state_dir, progress):
            (run.state_dir / STOP_FILE).unlink(missing_ok=True)  # a stopped run's
            running.stop_file = run.state_dir / STOP_FILE if self.config.zerogpu else None
            checkpoint = load_checkpoint(run.state_dir, run.conditioning, settings)
            run.done = checkpoint.segments_done if checkpoint is not None else 0
            if run.done and run.video.is_file():
                yield run.partial(f"Continuing from segment {run.done + 1} of {run.total}.")
            end = yield from self._calls(run, running, progress)
            if end.result is not None:
                running.outcome = "Finished: the result is complete."
                yield self._finish(run, end.result, time.monotonic() - started, progress)
                return
        reason = end.error or end.stopped
        running.outcome = f"{reason} {run.kept()}" if run.done else reason
        logger.info("Generation of %s ended early: %s", job.id, running.outcome)
        if end.error is None:  # a stop is no error: the last outputs say it
            yield run.partial(running.outcome)
        elif run.done:
            gr.Warning(running.outcome)
            yield run.partial(f"⚠️ {running.outcome}")
        else:
            raise WanAnimateError(reason)

    def _calls(self, run: _Run, running: Running, progress: PageProgress) -> Generator[tuple, None, CallEnd]:
        """The job's GPU calls, until it is complete or ends early; yield the outputs after every segment.

        Returns:
            The end of the last call: its complete result, or the sentence of a stop or a failure (the platform's
            refusal of a call, a call that finished no segment, or any error once segments are finished).
        """
        cancel = None if self.config.zerogpu else running.cancel  # an event cannot cross into ZeroGPU's worker
        while not running.cancel.is_set():
            before = run.done
            try:
                call = self._next_call(run)
                run.calls += 1
                if self.config.zerogpu:
                    last = min(run.total, run.done + (call.segments or run.total))
                    progress.phase(f"GPU call {run.calls}: segments {run.done + 1}–{last} of {run.total}, asking ZeroGPU for {call.seconds} s")
                for report in self._generation_call(call, run.job, run.settings, run.state_dir, cancel):
                    if isinstance(report, ProgressReport):
                        progress(report.done, report.total, report.description)
                    elif isinstance(report, SegmentUpdate):
                        run.done = report.index + 1
                        yield run.partial()
                    else:
                        end = report
            except Exception as error:  # the finished segments are kept whatever ended the call
                if is_platform_refusal(error):
                    return CallEnd(error=refusal_message(error))
                if run.done == 0:
                    raise
                if isinstance(error, WanAnimateError):  # e.g. a segment measured too long for a ZeroGPU call
                    return CallEnd(error=str(error))
                logger.exception("Generation of %s failed after segment %d of %d", run.job.id, run.done, run.total)
                return CallEnd(error=f"Generation failed ({type(error).__name__}; the app's log has the details).")
            if end.result is None or end.result.complete:
                return end
            if run.done == before:
                return CallEnd(error=f"A segment takes longer than a GPU call can hold (about {self._segment_seconds(run):.0f} s "
                                     "measured): choose the fast preset, 480p or fewer steps.")
        stopped = f"after segment {run.done} of {run.total}" if run.done else "before generation started"
        return CallEnd(stopped=f"Stopped {stopped}.")

    def _next_call(self, run: _Run) -> GpuCall:
        """The next GPU call of a job: off ZeroGPU one call for all of it; on ZeroGPU as many whole segments as fit
        in one call, timed from the segments measured so far (else from the table of `presets.STEP_TIMES`).

        Raises:
            WanAnimateError: On ZeroGPU, one segment does not fit in a call.
        """
        if not self.config.zerogpu:
            return LOCAL_CALL
        return plan_calls(run.total - run.done, self._segment_seconds(run)).calls[0]

    def _segment_seconds(self, run: _Run) -> float:
        """Estimated GPU seconds of one of the run's segments: measured (the checkpoint's) or from the table."""
        checkpoint = load_checkpoint(run.state_dir, run.conditioning, run.settings)
        return gpu_time.segment_seconds(run.job.record.resolution, run.settings, checkpoint)

    def _generation_call(
        self, call: GpuCall, job: Job, settings: GenerationSettings, state_dir: Path, cancel: threading.Event | None = None
    ) -> Iterator[ProgressReport | SegmentUpdate | CallEnd]:
        """One GPU call of a generation (a `spaces.GPU` generator): the model and the job's LoRAs ready, then up
        to ``call.segments`` segments of the job (`generate_video`, resumed from ``state_dir``), ending
        (resumably) before ``call.budget`` runs out.

        On ZeroGPU it runs in a worker process: its arguments and reports are pickled, and ``cancel`` (which could
        not cross) is ``None``: a stop reaches it through the state folder's `zerogpu.STOP_FILE`.

        Yields:
            `ProgressReport` at every phase and step, `SegmentUpdate` after each segment, a `CallEnd` last.
        """
        started = time.monotonic()

        def work(report: Callable[[Any], None], cancel: threading.Event) -> CallEnd:
            def progress(done: float, total: float, description: str) -> None:
                report(ProgressReport(done, total, description))

            try:
                if not self._gpu_slots.acquire(blocking=False):
                    progress(0, 0, "Waiting for the GPU (another job is on it)")
                    self._gpu_slots.acquire()
                try:
                    if cancel.is_set():
                        raise GenerationCancelled("Stopped before generation started.")
                    pipeline = self._ready_pipeline(job.record.mode, settings, progress)
                    progress(0, 0, "Encoding the prompt and the inputs")
                    conditioning = job.load_conditioning()
                    # With several processes: the job goes to the other ranks, and the steps' reports carry the
                    # stop to them (a ZeroGPU call's deadline never meets this: ZeroGPU runs one process).
                    shared = share_job(
                        self.parallel, conditioning, settings, progress=progress, cancel=cancel, state_dir=state_dir,
                        max_segments=call.segments,
                    )
                    if self.parallel is not None:
                        enable_context_parallel(pipeline, self.parallel.options)
                    result = generate_video(
                        pipeline, conditioning, state_dir / GENERATION_VIDEO, shared.settings, progress=shared.progress,
                        cancel=shared.cancel, state_dir=state_dir, max_segments=call.segments,
                        deadline=None if call.budget is None else started + call.budget, on_segment=report,
                    )
                finally:
                    self._gpu_slots.release()
            except GenerationCancelled as stopped:
                return CallEnd(stopped=str(stopped))
            except WanAnimateError as error:
                return CallEnd(error=str(error))
            return CallEnd(result=result)

        with contextlib.nullcontext(cancel) if cancel is not None else stop_file_event(state_dir / STOP_FILE) as cancel:
            yield from stream_thread(functools.partial(work, cancel=cancel), cancel)

    def _ready_pipeline(self, mode: str, settings: GenerationSettings, progress: Callable[[float, float, str], None]):
        """The pipeline with the LoRAs this job uses loaded (`app_pipeline`; at once when loaded)."""
        relight = settings.relight if settings.relight is not None else mode == "replace"
        with self._lora_lock:
            return app_pipeline(self.config, relight=relight, progress=progress)

    def _finish(self, run: _Run, result: GenerationResult, seconds: float, progress: PageProgress) -> tuple:
        """The finished job's outputs: the video and its side-by-side become the job's newest result (it keeps
        `AppConfig.keep_results` of them), the state folder goes."""
        progress.phase("Writing the side-by-side video")
        with run.job.new_result(keep=self.config.keep_results) as files:
            run.job.write_side_by_side(result.video_path, files.side_by_side)
            os.replace(result.video_path, files.video)
        shutil.rmtree(run.state_dir, ignore_errors=True)
        details = {**run.details(), "complete": True, "seed": result.seed, "seconds": round(seconds, 2)}
        return str(files.video), str(files.side_by_side), _result_markdown(run, result.seed, seconds), details

    @contextmanager
    def _registered(self, request: gr.Request | None, mode: str, running: Running) -> Iterator[None]:
        """``running`` as the job Stop reaches for this browser tab (or API session) in ``mode`` while the block
        runs; when it ends, its outcome (kept for Stop to say when the job was stopped)."""
        key = _cancel_key(request, mode)
        with self._cancel_lock:
            self._running[key] = running
        try:
            yield
        finally:
            with self._cancel_lock:
                if self._running.get(key) is running:
                    del self._running[key]
                if running.cancel.is_set():
                    self._stopped[key] = running.outcome or "Stopped."
            running.ended.set()

    @contextmanager
    def _claimed(self, state_dir: Path, progress: PageProgress) -> Iterator[None]:
        """One generation at a time per job and settings (they would write the same state folder): a new one waits
        for the one before (stopped, it ends after its current step)."""
        with self._claims:
            if state_dir in self._generating:
                progress.phase("Waiting for this job's last run to end its step")
            self._claims.wait_for(lambda: state_dir not in self._generating)
            self._generating.add(state_dir)
        try:
            yield
        finally:
            with self._claims:
                self._generating.discard(state_dir)
                self._claims.notify_all()

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

    def _report(self, job: Job) -> dict:
        return {"job_id": job.id, "mode": job.record.mode, "resolution": job.record.resolution, **(job.record.report or {})}


def app_pipeline(config: AppConfig, *, relight: bool, progress: ProgressCallback = no_progress) -> WanAnimatePipeline:
    """The app's pipeline (`AppConfig.pipeline_kwargs`, `get_pipeline`'s one) with the LoRAs a job needs loaded:
    the few-step LoRA when the app has one, the relighting LoRA when ``relight``; each load under its own label,
    at once when loaded. Callers that share the pipeline between threads hold a lock around it.
    """
    progress(0, 0, "Loading the model")  # a first load reports its own stages
    pipeline = get_pipeline(**config.pipeline_kwargs(), progress=progress)
    if config.fast_lora:
        progress(0, 0, "Loading the few-step LoRA")
        ensure_fast_lora(pipeline, config.fast_lora)
    if relight:
        progress(0, 0, "Loading the relighting LoRA")
        ensure_relighting_lora(pipeline, config.relight_lora or RELIGHT_REPO)
    return pipeline


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


GENERATION_VIDEO = "video.mp4"
"""The growing video of a generation, in its state folder (`Job.generation_dir`) until the job is finished."""


class _Run:
    """One generation of a job: where its state is, how far it got, and the result pane's outputs on the way."""

    def __init__(self, job: Job, conditioning: Conditioning, settings: GenerationSettings) -> None:
        self.job = job
        self.conditioning = conditioning
        self.settings = settings
        self.plan = settings.plan(conditioning.num_frames)
        self.state_dir = job.generation_dir(_settings_key(settings))
        self.video = self.state_dir / GENERATION_VIDEO
        self.done = 0
        self.calls = 0

    @property
    def total(self) -> int:
        return self.plan.num_segments

    def kept(self) -> str:
        """What a job that ended early keeps, and how to go on."""
        segments = "segment" if self.done == 1 else f"{self.done} segments"
        return (
            f"The video holds the finished {segments} ({self.plan.frames_done(self.done)} of "
            f"{self.conditioning.num_frames} frames): Generate again with the same settings to go on from segment "
            f"{self.done + 1} of {self.total}."
        )

    def partial(self, note: str = "") -> tuple[str | None, None, str, dict]:
        """The outputs while the job is not finished: the video so far (if any), no side-by-side, a summary that
        says so (after ``note``)."""
        frames = self.plan.frames_done(self.done)
        summary = [note] if note else []
        if self.done:
            summary.append(
                f"**Segment {self.done} of {self.total} done** · {frames} of {self.conditioning.num_frames} frames so far"
                " (the video grows as segments finish)"
            )
        details = {**self.details(), "complete": False, "segments_done": self.done, "frames_done": frames}
        return str(self.video) if self.done else None, None, "\n\n".join(summary), details

    def details(self) -> dict:
        conditioning, settings = self.conditioning, self.settings
        return {
            "job_id": self.job.id,
            "seed": settings.seed,
            "frames": conditioning.num_frames,
            "fps": conditioning.fps,
            "width": conditioning.width,
            "height": conditioning.height,
            "segments_total": self.total,
            "gpu_calls": self.calls,
            "steps": settings.num_inference_steps,
            "guidance": settings.guidance_scale,
            "overlap": settings.overlap_frames,
            "lora_weights": dict(settings.lora_weights),
            "step_cache": settings.step_cache,
            "report": self.job.record.report,
        }


def _settings_key(settings: GenerationSettings) -> str:
    """Names a job's generation state folder: every setting, the seed or "random" (a stopped job with a random seed
    goes on with the seed it drew)."""
    described = repr(replace(settings, seed=None)) + f"|seed={'random' if settings.seed is None else settings.seed}"
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def _call_duration(call: GpuCall, *args: Any, **kwargs: Any) -> int:
    """`spaces.GPU`'s duration of a generation call: the seconds its plan asks for."""
    return call.seconds or MAX_CALL_SECONDS


def _result_markdown(run: _Run, seed: int, seconds: float) -> str:
    frames, fps = run.conditioning.num_frames, run.conditioning.fps
    calls = f" in {run.calls} GPU calls" if run.calls > 1 else ""
    return (
        f"**Seed {seed}** · {frames} frames at {fps:g} fps ({frames / fps:.1f} s) · "
        f"{run.conditioning.width}×{run.conditioning.height} · {run.settings.num_inference_steps} steps · "
        f"took {seconds:.0f} s{calls}"
    )


def _session(request: gr.Request | None) -> str | None:
    """The Gradio session of a request (a browser tab, or a `gradio_client.Client`); ``None`` when called directly."""
    return getattr(request, "session_hash", None)


def _cancel_key(request: gr.Request | None, mode: str) -> str:
    return f"{_session(request) or 'no-session'}:{mode}"
