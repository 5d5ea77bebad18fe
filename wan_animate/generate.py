"""Generation: `Conditioning` -> frames -> video file, one segment at a time.

Wan2.2-Animate generates a clip in segments of 77 frames; each later segment is conditioned on the last 1 (or
5) generated frames of the one before (contract: "Size, frame rate, segments"). The segment loop here runs
the pipeline's components on one segment at a time (`wan_animate.segments`), with the results of
`WanAnimatePipeline.__call__` for the same seed, and adds what a product needs around it:

* memory that does not grow with the clip: only the current segment's conditioning frames are tensors (the
  next segment's are read and preprocessed on a worker thread while the GPU works), and every finished segment
  leaves for the video file at once;
* the video streamed out: each segment is encoded on a worker thread while the GPU goes on, and the output mp4
  (with the driving video's sound) is re-assembled after every segment, so it always holds every finished one;
* a checkpoint after every segment (`wan_animate.checkpoint`): a job stopped by a crash, a cancel, a lost GPU
  or a time budget (``max_segments``, ``deadline``) goes on from its last finished segment, with the video an
  uninterrupted run gives;
* progress over the whole job (every phase of every segment, with the time left), cancellation within one
  step that frees GPU memory, seeds, LoRA switches, the job's scheduler and step cache, colour matching at
  the segment boundaries.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence

import numpy as np
import torch

from .checkpoint import Checkpoint, SegmentTimes, job_fingerprint, segment_file
from .conditioning import Conditioning
from .errors import GenerationCancelled, WanAnimateError
from .lora import RELIGHT_ADAPTER, load_relighting_lora, loaded_adapters, set_lora_weights
from .models import apply_vae_tiling, resolution_of
from .out_of_memory import OutOfMemoryGuard, release_memory
from .progress import ProgressCallback, format_minutes
from .segments import SegmentModel, SegmentPlan, match_colors
from .video import concat_videos, write_video

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
        color_match: Match each segment's colours to the frames it continues from, before its last frames
            condition the next segment (reduces drift at segment boundaries in long clips; `segments.match_colors`).
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

    def plan(self, num_frames: int) -> SegmentPlan:
        """How a clip of ``num_frames`` frames is cut into segments with these settings."""
        return SegmentPlan(num_frames, self.segment_frames, self.overlap_frames)

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


def _relight_on(conditioning: Conditioning, settings: GenerationSettings) -> bool:
    """Whether the job uses the relighting LoRA: as set, else in Replacement only."""
    return settings.relight if settings.relight is not None else conditioning.mode == "replace"


def _apply_loras(pipeline: "WanAnimatePipeline", conditioning: Conditioning, settings: GenerationSettings) -> None:
    """Switch the LoRA adapters for this job: relighting by mode unless set, plus the named others."""
    relight = _relight_on(conditioning, settings)
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


def estimate_steps(num_frames: int, settings: GenerationSettings) -> int:
    """Total denoising steps a job will run (segments x steps), for time estimates."""
    return settings.plan(num_frames).num_segments * settings.num_inference_steps


# -- What a job reports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationResult:
    """Output of `generate` and `generate_video`.

    Attributes:
        fps: Frame rate (the conditioning's).
        seed: Seed used.
        seconds: Wall-clock time of this call.
        num_frames: Frames generated so far (cut to the clip); ``total_frames`` when complete.
        total_frames: Frames of the whole clip.
        width: Frame width.
        height: Frame height.
        segments_done: Segments finished so far (in this call and the calls before it).
        segments_total: Segments of the whole job.
        video_path: The mp4 (H.264 + the driving audio) holding every finished segment (`generate_video`),
            ``None`` from `generate` or when no segment is finished yet.
        frames: ``(num_frames, H, W, 3)`` uint8 RGB frames; only `generate` keeps them in memory.
    """

    fps: float
    seed: int
    seconds: float
    num_frames: int
    total_frames: int
    width: int
    height: int
    segments_done: int
    segments_total: int
    video_path: Path | None = None
    frames: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        """Whether every segment is done (``False`` after ``max_segments`` or ``deadline`` stopped the call)."""
        return self.segments_done == self.segments_total


@dataclass(frozen=True)
class SegmentUpdate:
    """Handed to ``on_segment`` after every finished segment, once the output mp4 holds it.

    Attributes:
        index: The segment (from 0).
        segments_total: Segments of the whole job.
        frames_done: Output frames finished, this segment's included.
        total_frames: Frames of the whole clip.
        video_path: The growing mp4, re-assembled (not re-encoded) with every finished segment.
        seconds: This segment's wall time (GPU side: preparing, encoding, steps, decoding).
    """

    index: int
    segments_total: int
    frames_done: int
    total_frames: int
    video_path: Path
    seconds: float


def estimate_segment_seconds(times: Sequence[SegmentTimes], num_inference_steps: int) -> float | None:
    """Seconds one more segment will take, with writing it, from measured segments; ``None`` without any.

    Medians, so a first segment that compiled the transformer or warmed up the GPU does not count double.
    """
    if not times:
        return None
    step = statistics.median(seconds for segment in times for seconds in segment.steps)
    rest = statistics.median(segment.total - sum(segment.steps) for segment in times)
    return step * num_inference_steps + rest + statistics.median(segment.write for segment in times)


# -- Progress over the whole job -------------------------------------------------------------------------


class _Stopped(Exception):
    """Internal: the cancel event was seen (turned into `GenerationCancelled` once the tensors are dropped)."""


class _JobProgress:
    """Progress over the whole job: every phase of every segment, weighted by its estimated seconds.

    ``done / total`` (per mille) is the share of the job's estimated time that is behind it; it never goes
    back when the estimates change. Until a step was measured, a step, an encode and a decode count alike.
    After every report the cancel event is checked, so a job stops within one step.
    """

    TOTAL = 1000

    def __init__(
        self,
        callback: ProgressCallback | None,
        cancel: threading.Event | None,
        plan: SegmentPlan,
        num_inference_steps: int,
        first_segment: int,
        history: list[SegmentTimes],
    ) -> None:
        self.callback = callback
        self.cancel = cancel
        self.num_segments = plan.num_segments
        self.num_steps = num_inference_steps
        self.history = history
        self.steps_done = first_segment * num_inference_steps
        self.reported = 0

    @property
    def total_steps(self) -> int:
        return self.num_segments * self.num_steps

    def _seconds(self) -> tuple[float, float, float, float]:
        """Estimated seconds of a step, a segment's encode, its decode and the final write."""
        steps = [seconds for segment in self.history for seconds in segment.steps]
        if not steps:
            return 1.0, 1.0, 1.0, 1.0
        step = statistics.median(steps)
        encode = statistics.median(segment.inputs + segment.encode for segment in self.history)
        decode = statistics.median(segment.decode for segment in self.history)
        return step, encode, decode, statistics.median(segment.write for segment in self.history)

    def _report(self, segment: int, behind: float, text: str, *, may_stop: bool = True) -> None:
        """Report ``text`` of segment ``segment`` (from 0) with ``behind`` estimated seconds of it done."""
        step, encode, decode, write = self._seconds()
        per_segment = encode + self.num_steps * step + decode
        total = self.num_segments * per_segment + write
        done = segment * per_segment + behind
        self.reported = max(self.reported, min(self.TOTAL, round(self.TOTAL * done / total)))
        description = f"Segment {segment + 1}/{self.num_segments} · {text}"
        if self.history:
            description += f" · {format_minutes(max(0.0, total - done))} left"
        if self.callback is not None:
            self.callback(self.reported, self.TOTAL, description)
        if may_stop and self.cancel is not None and self.cancel.is_set():
            raise _Stopped()

    def encoding(self, segment: int) -> None:
        self._report(segment, 0.0, "encoding")

    def step(self, segment: int, step: int) -> None:
        self.steps_done += 1
        seconds, encode, _, _ = self._seconds()
        self._report(segment, encode + (step + 1) * seconds, f"step {step + 1}/{self.num_steps}")

    def decoding(self, segment: int) -> None:
        seconds, encode, _, _ = self._seconds()
        self._report(segment, encode + self.num_steps * seconds, "decoding")

    def writing(self, segments_done: int) -> None:
        """The last phase, after the last segment of the call: nothing is left to stop."""
        step, encode, decode, _ = self._seconds()
        self._report(segments_done - 1, encode + self.num_steps * step + decode, "writing the video", may_stop=False)

    def finished(self, segments_done: int) -> None:
        """The video is written; when that was the job's last segment, the bar is full."""
        if segments_done == self.num_segments and self.callback is not None:
            self.reported = self.TOTAL
            self.callback(self.TOTAL, self.TOTAL, f"Segment {self.num_segments}/{self.num_segments} · done")


# -- Where finished segments go ----------------------------------------------------------------------------


@dataclass
class _Segment:
    """A finished segment, as the loop hands it to the job's output."""

    index: int
    frames: np.ndarray
    overlap: torch.Tensor
    generator_state: torch.Tensor
    times: SegmentTimes


class _Output:
    """Where the loop hands its finished segments; this base drops them (the followers of a context-parallel
    run: the leader writes the frames)."""

    def add(self, segment: _Segment) -> None:
        """Take a finished segment (main thread; the work may go on on a worker thread)."""

    def poll(self) -> None:
        """Report what a worker finished (main thread, called at every step)."""

    def finish(self) -> None:
        """Wait for everything handed over; raise what a worker raised."""


class _FramesInMemory(_Output):
    """`generate`'s output: the frames of every segment, kept."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def add(self, segment: _Segment) -> None:
        self.frames.append(segment.frames)


class _VideoOutput(_Output):
    """`generate_video`'s output: each segment encoded on a worker thread, the mp4 re-assembled, a checkpoint.

    For every segment, in order, the worker writes ``segment_NNNN.mp4`` into the state folder, joins every
    finished segment's mp4 with the driving audio into the output (`concat_videos`: packets copied, the file
    replaced whole), then replaces the checkpoint, so the checkpoint never names a segment whose file is not
    written. ``on_segment`` is called on the main thread once the output holds the segment.
    """

    def __init__(
        self,
        path: Path,
        state_dir: Path,
        conditioning: Conditioning,
        plan: SegmentPlan,
        *,
        fingerprint: str,
        seed: int,
        history: list[SegmentTimes],
        on_segment: Callable[[SegmentUpdate], None] | None,
    ) -> None:
        self.path = path
        self.state_dir = state_dir
        self.conditioning = conditioning
        self.plan = plan
        self.fingerprint = fingerprint
        self.seed = seed
        self.history = history
        self.on_segment = on_segment
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wan_animate_writer")
        self.pending: list[Future] = []

    def assemble(self, segments_done: int) -> Path:
        """Join the first ``segments_done`` segments' mp4s with the driving audio into the output."""
        return concat_videos(
            self.path,
            [segment_file(self.state_dir, index) for index in range(segments_done)],
            audio_source=self.conditioning.audio_source,
            audio_start=self.conditioning.audio_start,
        )

    MAX_PENDING = 2
    """Segments waiting for the writer at most; more waits for it, so a slow writer cannot fill host memory."""

    def add(self, segment: _Segment) -> None:
        if len(self.pending) >= self.MAX_PENDING:
            self.pending[0].exception()  # wait for the oldest
            self.poll()
        self.pending.append(self.worker.submit(self._write, segment))

    def _write(self, segment: _Segment) -> SegmentUpdate:
        started = time.perf_counter()
        write_video(segment_file(self.state_dir, segment.index), segment.frames, self.conditioning.fps)
        self.assemble(segment.index + 1)
        segment.times.write = time.perf_counter() - started
        Checkpoint(
            fingerprint=self.fingerprint,
            seed=self.seed,
            segments_done=segment.index + 1,
            segments_total=self.plan.num_segments,
            overlap=segment.overlap,
            generator_state=segment.generator_state,
            times=self.history[: segment.index + 1],
        ).save(self.state_dir)
        return SegmentUpdate(
            index=segment.index,
            segments_total=self.plan.num_segments,
            frames_done=self.plan.frames_done(segment.index + 1),
            total_frames=self.plan.num_frames,
            video_path=self.path,
            seconds=segment.times.total,
        )

    def poll(self) -> None:
        while self.pending and self.pending[0].done():
            update = self.pending.pop(0).result()
            if self.on_segment is not None:
                self.on_segment(update)

    def finish(self) -> None:
        for future in list(self.pending):
            future.exception()  # wait
        self.poll()

    def close(self) -> None:
        """After an error or a cancel: let the worker finish what it has (finished segments are kept)."""
        self.worker.shutdown(wait=True)
        for future in self.pending:
            if future.exception() is not None:
                logger.error("Writing segment failed too: %s", future.exception())


# -- The segment loop --------------------------------------------------------------------------------------


def _frame_settings(conditioning: Conditioning, settings: GenerationSettings) -> dict[str, Any]:
    """The settings that change a job's frames, as plain values (for its fingerprint); not the seed."""
    relight = _relight_on(conditioning, settings)
    return {
        "steps": settings.num_inference_steps,
        "guidance": settings.guidance_scale,
        "flow_shift": settings.flow_shift if settings.scheduler is None else None,
        "scheduler": None if settings.scheduler is None else repr(settings.scheduler),
        "overlap": settings.overlap_frames,
        "segment_frames": settings.segment_frames,
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt if settings.guidance_scale > 1 else None,
        "relight_weight": settings.relight_weight if relight else 0.0,
        "lora_weights": settings.lora_weights,
        "color_match": settings.color_match,
        "step_cache": settings.step_cache,
        "step_cache_options": settings.step_cache_options,
    }


def _fingerprint(conditioning: Conditioning, settings: GenerationSettings) -> str:
    return job_fingerprint(conditioning, _frame_settings(conditioning, settings))


def load_checkpoint(state_dir: str | Path, conditioning: Conditioning, settings: GenerationSettings) -> Checkpoint | None:
    """This job's checkpoint in ``state_dir``, or ``None`` when the folder holds none (a job to start).

    With ``settings.seed`` set it must be the stored job's; ``None`` takes the stored one.

    Raises:
        WanAnimateError: The folder holds another job's state (other conditioning, settings or seed).
    """
    return Checkpoint.load(state_dir, fingerprint=_fingerprint(conditioning, settings), seed=settings.seed)


class _Stopwatch:
    """Seconds between laps, the device's queued work included: a lap waits for the GPU (kernels run
    asynchronously, so without the wait a phase's time would land in the next one)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mark = time.perf_counter()

    def lap(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        seconds, self.mark = now - self.mark, now
        return seconds

    def restart(self) -> None:
        """Leave out the time since the last lap (a progress report between two steps)."""
        self.mark = time.perf_counter()


def _run_segments(
    pipeline: WanAnimatePipeline,
    conditioning: Conditioning,
    settings: GenerationSettings,
    output: _Output,
    *,
    seed: int,
    resume: Checkpoint | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    max_segments: int | None,
    deadline: float | None,
    history: list[SegmentTimes],
) -> int:
    """Generate the job's segments from the first one not done; returns the segments done in all.

    Sets the job up on the pipeline (LoRA weights, scheduler, step cache; all put back afterwards), runs
    `_segment_loop`, and turns a cancel into `GenerationCancelled` once the segment's tensors are gone.
    ``history`` holds the measured times of the finished segments (from ``resume``) and gets this call's.
    """
    plan = settings.plan(conditioning.num_frames)
    first = resume.segments_done if resume is not None else 0
    last = plan.num_segments if max_segments is None else min(plan.num_segments, first + max_segments)
    if first >= last:
        return first
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if resume is not None:
        generator.set_state(resume.generator_state)
    tracker = _JobProgress(progress, cancel, plan, settings.num_inference_steps, first, history)
    model = SegmentModel(
        pipeline, conditioning, plan,
        num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale, generator=generator,
    )
    _apply_loras(pipeline, conditioning, settings)
    apply_vae_tiling(pipeline, resolution_of(conditioning.height, conditioning.width))
    own_scheduler = _use_job_scheduler(pipeline, settings, generator)
    from .caching import disable_step_cache, enable_step_cache

    job_cache = settings.step_cache != "none"
    stopped = False
    try:
        if job_cache:
            enable_step_cache(
                pipeline.transformer, settings.step_cache, num_inference_steps=settings.num_inference_steps,
                **settings.step_cache_options,
            )
        # An out-of-memory error ends in a sentence that says what to change, with the memory released first.
        with OutOfMemoryGuard(pipeline, size=(conditioning.height, conditioning.width)):
            done = _segment_loop(model, settings, output, tracker, resume, range(first, last), deadline, history)
    except _Stopped:
        stopped = True
    finally:
        pipeline.scheduler = own_scheduler
        if job_cache:
            disable_step_cache(pipeline.transformer)
        pipeline.maybe_free_model_hooks()
    if stopped:  # here, outside the handler: no traceback keeps the stopped segment's tensors alive
        release_memory()
        output.finish()
        logger.info("Generation cancelled after step %d of %d", tracker.steps_done, tracker.total_steps)
        raise GenerationCancelled(f"Stopped after step {tracker.steps_done} of {tracker.total_steps}.")
    return done


@torch.no_grad()
def _segment_loop(
    model: SegmentModel,
    settings: GenerationSettings,
    output: _Output,
    tracker: _JobProgress,
    resume: Checkpoint | None,
    segments: range,
    deadline: float | None,
    history: list[SegmentTimes],
) -> int:
    """Every segment: wait for its conditioning frames (prepared on a worker thread while the previous segment
    ran) and start on the next one's, encode, denoise, decode, match colours, hand the frames to ``output``.

    Progress is reported at every phase and step (the same calls on every rank of a context-parallel run,
    which agree on stopping through them); the cancel event is checked after each report.
    """
    done = segments.start
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wan_animate_inputs") as inputs_worker:
        next_inputs = inputs_worker.submit(model.load_inputs, segments.start)
        try:
            embeds = prompt_embeddings(
                model.pipeline, settings.prompt, settings.negative_prompt if settings.guidance_scale > 1 else None
            )
            job = model.prepare_job(*embeds)
            previous = None if resume is None or resume.overlap is None else resume.overlap.to(model.device)
            for index in segments:
                estimate = estimate_segment_seconds(history, settings.num_inference_steps)
                if deadline is not None and estimate is not None and time.monotonic() + estimate > deadline:
                    logger.info("Stopping before segment %d: it would end after the deadline (~%.0f s)", index + 1, estimate)
                    break
                times = SegmentTimes()
                started = time.perf_counter()
                watch = _Stopwatch(model.device)
                tracker.encoding(index)
                inputs = next_inputs.result()
                if index + 1 < segments.stop:
                    next_inputs = inputs_worker.submit(model.load_inputs, index + 1)
                times.inputs = watch.lap()
                encoded = model.encode(job, inputs, previous)
                del inputs
                times.encode = watch.lap()

                def on_step(step: int) -> None:
                    times.steps.append(watch.lap())
                    output.poll()
                    tracker.step(index, step)
                    watch.restart()

                latents = model.denoise(job, encoded, on_step)
                del encoded
                tracker.decoding(index)
                watch.restart()
                video = model.decode(latents)
                del latents
                if settings.color_match and previous is not None:
                    video = match_colors(video, previous, settings.overlap_frames)
                previous = video[:, :, -settings.overlap_frames :].clone()
                frames = model.output_frames(index, video)
                del video
                times.decode = watch.lap()
                times.total = time.perf_counter() - started
                history.append(times)
                output.add(
                    _Segment(
                        index=index, frames=frames, overlap=previous.cpu(), generator_state=model.generator.get_state(),
                        times=times,
                    )
                )
                done = index + 1
            tracker.writing(done)
            output.finish()
            tracker.finished(done)
        finally:
            next_inputs.cancel()
    return done


def _check_job(conditioning: Conditioning, settings: GenerationSettings, max_segments: int | None) -> None:
    settings.check()
    conditioning.validate()
    if max_segments is not None and max_segments < 1:
        raise WanAnimateError(f"max_segments must be at least 1, got {max_segments}.")


def generate(
    pipeline: WanAnimatePipeline,
    conditioning: Conditioning,
    settings: GenerationSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> GenerationResult:
    """Generate the frames of one job, kept in memory (short clips, tests); `generate_video` streams them out.

    Args:
        pipeline: A loaded `WanAnimatePipeline` (see `wan_animate.models.load_pipeline`).
        conditioning: Model-ready inputs; its mode selects Animation or Replacement.
        settings: Job settings; contract defaults when ``None``.
        progress: Called as ``progress(done, total, description)`` at every phase and step of every segment
            (``done / total``: the share of the job's estimated time behind it).
        cancel: When set, generation stops after the current step, GPU memory is freed and
            `GenerationCancelled` ("Stopped after step k of N") is raised.

    Returns:
        The frames, as many as the conditioning has, with the seed used.
    """
    settings = settings or GenerationSettings()
    _check_job(conditioning, settings, None)
    started = time.perf_counter()
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
    plan = settings.plan(conditioning.num_frames)
    _log_start(conditioning, settings, plan, seed, 0)
    output = _FramesInMemory()
    _run_segments(
        pipeline, conditioning, settings, output, seed=seed, resume=None, progress=progress, cancel=cancel,
        max_segments=None, deadline=None, history=[],
    )
    return GenerationResult(
        fps=conditioning.fps, seed=seed, seconds=time.perf_counter() - started,
        num_frames=conditioning.num_frames, total_frames=conditioning.num_frames,
        width=conditioning.width, height=conditioning.height,
        segments_done=plan.num_segments, segments_total=plan.num_segments,
        frames=np.concatenate(output.frames),
    )


def generate_video(
    pipeline: WanAnimatePipeline,
    conditioning: Conditioning,
    output_path: str | Path,
    settings: GenerationSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    state_dir: str | Path | None = None,
    max_segments: int | None = None,
    deadline: float | None = None,
    on_segment: Callable[[SegmentUpdate], None] | None = None,
) -> GenerationResult:
    """Generate one job into an H.264 mp4 with the driving video's sound, segment by segment, resumably.

    Each segment is written as soon as it is decoded, on a worker thread while the GPU goes on; after each,
    ``output_path`` is replaced by an mp4 that holds every finished segment. With ``state_dir`` the job can
    stop and go on: a call with the same job and folder continues from the last finished segment and gives the
    same video as one uninterrupted run.

    Args:
        pipeline: A loaded `WanAnimatePipeline`.
        conditioning: Model-ready inputs (`Conditioning.open` keeps host memory flat in the clip's length).
        output_path: The mp4 to write.
        settings: Job settings; contract defaults when ``None``. Resuming with ``seed=None`` takes the
            stored job's seed.
        progress: As for `generate`; the last phase is writing the video.
        cancel: As for `generate`; finished segments stay in the mp4 and in ``state_dir``.
        state_dir: The job's checkpoint folder (segment mp4s and `Checkpoint`): resumed when it holds this
            job's state, started when empty. ``None``: a temporary folder, removed at the end (not resumable).
        max_segments: Stop (resumably) after this many segments in this call.
        deadline: A `time.monotonic` value: a segment that would end after it (estimated from the segments
            measured so far, also in earlier calls) is not started; the first segment of a job with no
            measurements always is. Not with several GPUs (the processes could disagree): use ``max_segments``.
        on_segment: Called on this thread after each finished segment, once the mp4 holds it.

    Returns:
        The result; ``complete`` is ``False`` when ``max_segments`` or ``deadline`` stopped the call (call
        again with the same ``state_dir`` to go on).

    Raises:
        WanAnimateError: Invalid settings or conditioning, or ``state_dir`` holds another job's state.
        GenerationCancelled: ``cancel`` was set.
    """
    settings = settings or GenerationSettings()
    _check_job(conditioning, settings, max_segments)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if deadline is not None and distributed and torch.distributed.get_world_size() > 1:
        raise WanAnimateError("A deadline cannot be used with several GPUs (they could stop at different segments); use max_segments.")
    started = time.perf_counter()
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    plan = settings.plan(conditioning.num_frames)
    temporary = state_dir is None
    folder = Path(tempfile.mkdtemp(prefix=f".{output_path.stem}.segments.", dir=output_path.parent)) if temporary else Path(state_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fingerprint = _fingerprint(conditioning, settings)
        resume = Checkpoint.load(folder, fingerprint=fingerprint, seed=settings.seed)
        seed = resume.seed if resume is not None else settings.seed if settings.seed is not None else secrets.randbelow(2**31)
        history = list(resume.times) if resume is not None else []
        output = _VideoOutput(
            output_path, folder, conditioning, plan,
            fingerprint=fingerprint, seed=seed, history=history, on_segment=on_segment,
        )
        _log_start(conditioning, settings, plan, seed, resume.segments_done if resume is not None else 0)
        try:
            if resume is not None:
                output.assemble(resume.segments_done)  # the output holds the finished segments from the start
            done = _run_segments(
                pipeline, conditioning, settings, output, seed=seed, resume=resume, progress=progress, cancel=cancel,
                max_segments=max_segments, deadline=deadline, history=history,
            )
        finally:
            output.close()
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    return GenerationResult(
        fps=conditioning.fps, seed=seed, seconds=time.perf_counter() - started,
        num_frames=plan.frames_done(done), total_frames=conditioning.num_frames,
        width=conditioning.width, height=conditioning.height,
        segments_done=done, segments_total=plan.num_segments,
        video_path=output_path if done > 0 else None,
    )


def follow_job(
    pipeline: WanAnimatePipeline,
    conditioning: Conditioning,
    settings: GenerationSettings,
    *,
    resume: Checkpoint | None = None,
    max_segments: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Run a job's segments and drop the frames: the other ranks of a context-parallel run, whose leader writes.

    The same loop as `generate_video`'s, from the leader's ``resume`` state and ``max_segments``, with the same
    progress calls (through which the ranks agree on stopping). Returns the segments done in all.
    """
    _check_job(conditioning, settings, max_segments)
    seed = resume.seed if resume is not None else settings.seed
    if seed is None:
        raise WanAnimateError("A followed job needs the leader's seed.")
    history = list(resume.times) if resume is not None else []
    return _run_segments(
        pipeline, conditioning, settings, _Output(), seed=seed, resume=resume, progress=progress, cancel=cancel,
        max_segments=max_segments, deadline=None, history=history,
    )


def _log_start(conditioning: Conditioning, settings: GenerationSettings, plan: SegmentPlan, seed: int, done: int) -> None:
    logger.info(
        "Generating %d frames (%dx%d, %s) in %d segment(s) x %d steps, seed %d%s",
        conditioning.num_frames, conditioning.width, conditioning.height, conditioning.mode,
        plan.num_segments, settings.num_inference_steps, seed, f", from segment {done + 1}" if done else "",
    )


__all__ = [
    "DEFAULT_PROMPT",
    "GenerationResult",
    "GenerationSettings",
    "JobScheduler",
    "SegmentTimes",
    "SegmentUpdate",
    "estimate_segment_seconds",
    "estimate_steps",
    "follow_job",
    "generate",
    "generate_video",
    "load_checkpoint",
]
