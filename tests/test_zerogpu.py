"""ZeroGPU: a generation job as GPU calls of at most 300 s (`wan_animate.space.zerogpu`), and the threads that
stream a job to the page (`wan_animate.space.streaming`).

The planning is checked for every job the page allows (both resolutions and presets, guidance on, every step
count, up to the 30-s limit); the real tiny generation runs for a few jobs with `spaces.GPU` replaced by a
recorder that asks for durations as ZeroGPU does, refuses calls as it does (`spaces`' own error), and passes each
call's arguments and reports through pickle, as ZeroGPU's worker process does.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import pickle
import threading
import types
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from tests.media import video_facts
from wan_animate.errors import WanAnimateError
from wan_animate.generate import GenerationSettings
from wan_animate.jobs import open_job
from wan_animate.presets import PRESETS, apply_preset, estimate_seconds_per_segment, format_minutes
from wan_animate.segments import SegmentPlan
from wan_animate.validation import GUIDANCE, STEPS
from wan_animate.space import AppConfig, Studio
from wan_animate.space import studio as studio_module
from wan_animate.space import zerogpu
from wan_animate.space.streaming import stream_async, stream_thread
from wan_animate.video import DEFAULT_MAX_SECONDS, iter_video

pytest_plugins = ["tests.e2e_fixtures"]  # tiny models and media


# -- planning ----------------------------------------------------------------------------------------------


def test_a_job_is_split_into_calls_of_whole_segments_each_within_the_limit():
    plan = zerogpu.plan_calls(7, 75.5)  # seconds a segment (720p, fast preset, by H100 figures)
    assert [call.segments for call in plan.calls] == [3, 3, 1]
    assert all(call.seconds <= zerogpu.MAX_CALL_SECONDS for call in plan.calls)
    assert zerogpu.call_seconds(4, 75.5) > zerogpu.MAX_CALL_SECONDS  # three per call is the most that fits
    assert plan.calls[-1].seconds < plan.calls[0].seconds and plan.seconds == sum(call.seconds for call in plan.calls)
    assert plan.describe() == f"{format_minutes(plan.seconds)} of GPU time in 3 calls"
    assert plan.calls[0].budget == plan.calls[0].seconds - zerogpu.CALL_START_SECONDS
    with pytest.raises(WanAnimateError, match="fast preset, 480p, fewer steps"):
        zerogpu.plan_calls(1, estimate_seconds_per_segment("720p", GenerationSettings()))  # 720p at 20 steps: a segment alone is over a call


def _page_jobs():
    """Every setting the page offers that changes a segment's GPU time, and every segment count up to the 30-s
    limit at 30 fps (the fast preset fixes its steps and guidance)."""
    segment_counts = sorted({SegmentPlan(frames, 77, overlap).num_segments for frames in range(1, int(DEFAULT_MAX_SECONDS * 30) + 1) for overlap in (1, 5)})
    for resolution in ("720p", "480p"):
        for guidance in (1.0, GUIDANCE.high):  # off, and the highest (any guidance above 1 takes twice the time)
            for steps in range(STEPS.low, STEPS.high + 1):
                yield resolution, GenerationSettings(num_inference_steps=steps, guidance_scale=guidance), segment_counts
        yield resolution, apply_preset(GenerationSettings(guidance_scale=GUIDANCE.high), PRESETS["fast"], True), segment_counts


def test_every_job_the_page_allows_asks_for_at_most_300_s_per_call():
    """A job is either refused before any GPU call (one segment alone would not fit: the sentence says what to
    change) or split into calls that each ask for at most 300 s and together do all its segments."""
    most_steps: dict[tuple[str, float], int] = {}  # the most steps that fit, by resolution and guidance
    for resolution, settings, segment_counts in _page_jobs():
        segment_seconds = estimate_seconds_per_segment(resolution, settings)
        for segments in segment_counts:
            try:
                plan = zerogpu.plan_calls(segments, segment_seconds)
            except WanAnimateError:
                assert zerogpu.call_seconds(1, segment_seconds) > zerogpu.MAX_CALL_SECONDS
                continue
            assert all(0 < call.seconds <= zerogpu.MAX_CALL_SECONDS for call in plan.calls)
            assert sum(call.segments for call in plan.calls) == segments
            key = (resolution, "fast" if settings.scheduler is not None else settings.guidance_scale)
            most_steps[key] = max(most_steps.get(key, 0), settings.num_inference_steps)
    # The fast preset (the default) always fits; the README says what else is refused (one segment over a call).
    assert most_steps == {
        ("720p", "fast"): 4, ("720p", 1.0): 16, ("720p", GUIDANCE.high): 8,
        ("480p", "fast"): 4, ("480p", 1.0): 61, ("480p", GUIDANCE.high): 30,
    }


def test_the_quota_warning_says_what_is_assumed():
    assert zerogpu.quota_warning(zerogpu.FREE_DAILY_SECONDS) is None
    free = zerogpu.quota_warning(zerogpu.FREE_DAILY_SECONDS + 1)
    assert "a free account's daily ZeroGPU quota (about 5 min, assumed)" in free and "480p" in free
    assert "a PRO account's" in zerogpu.quota_warning(zerogpu.PRO_DAILY_SECONDS + 1)


def test_the_platforms_refusals_are_told_with_what_to_do():
    from spaces.zero.client import html_string
    from spaces.zero.gradio import error

    quota = error("ZeroGPU quota exceeded", "You have exceeded your free ZeroGPU quota (120s requested vs. 40s left). Try again in 0:12:00.")
    assert zerogpu.is_platform_refusal(quota)
    assert zerogpu.refusal_message(quota) == (
        "You have exceeded your free ZeroGPU quota (120s requested vs. 40s left). Try again in 0:12:00. "
        + zerogpu.REFUSAL_ADVICE
    )
    queue = error("ZeroGPU queue timeout", html_string('No GPU was available after 60s. <a href="x">Retry later</a>', "No GPU was available after 60s. Retry later"), html=True)
    assert zerogpu.is_platform_refusal(queue) and zerogpu.refusal_message(queue).startswith("No GPU was available after 60s. Retry later.")
    assert not zerogpu.is_platform_refusal(WanAnimateError("Trim the clip."))
    assert not zerogpu.is_platform_refusal(error("Other", "not the platform's"))


def test_the_stop_file_sets_the_event(tmp_path):
    stop = tmp_path / zerogpu.STOP_FILE
    with zerogpu.stop_file_event(stop) as event:
        assert not event.is_set()
        stop.touch()
        assert event.wait(30)


# -- streaming ---------------------------------------------------------------------------------------------


def test_stream_thread_yields_reports_then_the_result_and_stops_the_work_when_closed():
    cancel = threading.Event()

    def work(report):
        for value in range(3):
            report(value)
        return "done"

    assert list(stream_thread(work, cancel)) == [0, 1, 2, "done"] and not cancel.is_set()

    def failing(report):
        report(0)
        raise WanAnimateError("Use 480p.")

    with pytest.raises(WanAnimateError, match="480p"):
        list(stream_thread(failing, cancel))

    stopped = []

    def until_cancelled(report):
        report("started")
        assert cancel.wait(30)
        stopped.append(True)
        return "never seen"

    run = stream_thread(until_cancelled, cancel)
    assert next(run) == "started"
    run.close()  # the consumer stopped: the work is told to stop, and has ended when close() returns
    assert cancel.is_set() and stopped == [True]


def test_stream_async_drains_the_job_after_its_consumer_stopped():
    ended, stopped = threading.Event(), threading.Event()

    def job():
        try:
            yield 1
            assert stopped.wait(30)  # the job goes on until told to stop
            yield 2
        finally:
            ended.set()

    async def consume_one() -> list:
        values = []
        async for value in stream_async(job(), on_stop=stopped.set):
            values.append(value)
            break
        return values

    assert asyncio.run(consume_one()) == [1]
    assert stopped.is_set() and ended.wait(30)  # told to stop, and drained to its end on its thread

    async def consume_all() -> list:
        return [value async for value in stream_async(iter([1, 2, 3]), on_stop=stopped.clear)]

    assert asyncio.run(consume_all()) == [1, 2, 3] and stopped.is_set()  # no stop when it ran to the end


# -- chained calls with the tiny models ------------------------------------------------------------------------


class GpuRecorder:
    """Stands in for `spaces.GPU` on ZeroGPU: each call asks for its duration before it runs; calls numbered in
    ``refuse`` are refused with `spaces`' own quota error; a call's arguments, and its yields or result, go through
    pickle."""

    def __init__(self) -> None:
        self.durations: list[tuple[str, int]] = []
        self.refuse: set[int] = set()
        self.error: Exception | None = None  # what a refused call raises; None: `spaces`' quota error

    def __call__(self, task=None, *, duration=None):
        def wrap(fn):
            if not inspect.isgeneratorfunction(fn):  # an extraction
                @functools.wraps(fn)
                def call(*args, **kwargs):
                    self.durations.append((fn.__name__, duration(*args, **kwargs)))
                    args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                    return pickle.loads(pickle.dumps(fn(*args, **kwargs)))

                return call

            @functools.wraps(fn)
            def generator(*args, **kwargs):
                from spaces.zero.gradio import error

                seconds = duration(*args, **kwargs)
                self.durations.append((fn.__name__, seconds))
                if len(self.generation_calls) in self.refuse:
                    raise self.error or error("ZeroGPU quota exceeded", f"You have exceeded your free ZeroGPU quota ({seconds}s requested vs. 12s left). Try again in 0:05:00.")
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                for report in fn(*args, **kwargs):
                    yield pickle.loads(pickle.dumps(report))

            return generator

        return wrap

    @property
    def generation_calls(self) -> list[int]:
        return [seconds for name, seconds in self.durations if name == "_generation_call"]


TAB = types.SimpleNamespace(session_hash="zerogpu-test")
"""The session (a browser tab) that extracts the shared job and generates from it."""

ONE_SEGMENT_PER_CALL = 55
"""A call limit that holds one tiny "480p" segment of 2 steps as `presets.STEP_TIMES` times it (14.4 s, a call of
42 s; with guidance or the fast preset's 4 steps 21.6 s, a call of 50 s) and not two (59 s; 76 s), so the
two-segment test clip runs as two calls."""


@pytest.fixture(scope="module")
def small_sizes():
    from tests.e2e_fixtures import small_media_limits
    from wan_animate.demo import demo_sizes

    with demo_sizes(), small_media_limits():
        yield


@pytest.fixture(scope="module")
def shared(tiny_models, e2e_media, small_sizes, tmp_path_factory) -> tuple[AppConfig, str]:
    """The tiny models' configuration, with a job folder holding one two-segment Animation job (its id) that the
    tests of this module generate from (one extraction for all)."""
    config = AppConfig(work_dir=tmp_path_factory.mktemp("jobs")).with_tiny_models(tiny_models)
    *_, job_id = Studio(config).extract_animation(str(e2e_media["photo"]), str(e2e_media["video"]), resolution="480p", request=TAB, progress=_progress)
    return config, job_id


@pytest.fixture
def studios(shared, monkeypatch):
    """``make(on_zerogpu)``: a `Studio` of the shared configuration (one job folder, the one pipeline) and its
    `GpuRecorder` (off ZeroGPU `spaces.GPU` is the identity, as it is there)."""
    config, _ = shared
    monkeypatch.setattr(zerogpu, "MAX_CALL_SECONDS", ONE_SEGMENT_PER_CALL)

    def make(on_zerogpu: bool) -> tuple[Studio, GpuRecorder]:
        recorder = GpuRecorder()
        off_zerogpu = lambda task=None, *, duration=None: lambda fn: fn  # noqa: E731
        monkeypatch.setattr(studio_module.spaces, "GPU", recorder if on_zerogpu else off_zerogpu)
        return Studio(replace(config, zerogpu=on_zerogpu)), recorder

    return make


def _collect(outputs) -> list:
    async def run() -> list:
        return [value async for value in outputs]

    return asyncio.run(run())


def _progress(*args, **kwargs) -> None:
    """A ``gr.Progress`` stand-in (pickled with a call's arguments: module level)."""


def _frames(path) -> np.ndarray:
    return np.stack(list(iter_video(path, fps=None, max_seconds=None)))


@pytest.mark.parametrize("preset, steps, guidance", [("quality", 2, 2.0), ("fast", 4, 1.0)])  # guidance on; the fast preset
def test_chained_calls_make_the_video_one_call_makes(studios, shared, preset, steps, guidance):
    _, job_id = shared
    values = [job_id, preset, steps, 5, guidance, 1, False]
    local, _ = studios(False)
    one_call = _collect(local.animate(*values, request=TAB, progress=_progress))[-1]
    one_call_frames = _frames(one_call[0])  # a job keeps its last result only

    chained_studio, recorder = studios(True)
    outputs = _collect(chained_studio.animate(*values, request=TAB, progress=_progress))
    chained = outputs[-1]
    assert chained[3]["complete"] and chained[3]["gpu_calls"] == 2 and chained[3]["seed"] == one_call[3]["seed"] == 5
    assert len(recorder.generation_calls) == 2 and all(0 < seconds <= ONE_SEGMENT_PER_CALL for seconds in recorder.generation_calls)
    assert [details["complete"] for *_, details in outputs] == [False, False, True]  # a segment, another, the result
    assert np.array_equal(_frames(chained[0]), one_call_frames)


def test_a_refused_call_keeps_the_finished_segments_and_generate_goes_on(studios, shared):
    _, job_id = shared
    studio, recorder = studios(True)
    values = [job_id, "quality", 2, 7, 1.0, 1, False]
    recorder.refuse = {2}
    with pytest.warns(UserWarning, match="exceeded your free ZeroGPU quota"):  # gr.Warning outside a page
        *_, (video, side, summary, details) = _collect(studio.animate(*values, request=TAB, progress=_progress))
    assert not details["complete"] and details["segments_done"] == 1 and side is None
    assert "You have exceeded your free ZeroGPU quota" in summary and zerogpu.REFUSAL_ADVICE in summary
    assert "holds the finished segment (77 of 80 frames)" in summary and "go on from segment 2 of 2" in summary
    assert video_facts(Path(video))["frames"] == 77

    recorder.refuse = set()
    resumed = _collect(studio.animate(*values, request=TAB, progress=_progress))
    assert "Continuing from segment 2 of 2." in resumed[0][2] and resumed[-1][3]["complete"]
    assert len(recorder.generation_calls) == 3  # the first, the refused one, and one for the segment left
    resumed_frames = _frames(resumed[-1][0])  # a job keeps its last result only
    local, _ = studios(False)
    one_call = _collect(local.animate(*values, request=TAB, progress=_progress))[-1]
    assert np.array_equal(resumed_frames, _frames(one_call[0]))


def test_any_error_after_a_finished_segment_keeps_it(studios, shared):
    """Not the platform's refusal: an error of the app (logged with its traceback) ends the job the same way."""
    _, job_id = shared
    studio, recorder = studios(True)
    recorder.refuse, recorder.error = {2}, RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.warns(UserWarning, match="Generation failed"):
        *_, (video, side, summary, details) = _collect(studio.animate(job_id, "quality", 2, 11, 1.0, 1, False, request=TAB, progress=_progress))
    assert summary.startswith("⚠️ Generation failed (RuntimeError; the app's log has the details). The video holds the finished segment")
    assert details["segments_done"] == 1 and video_facts(Path(video))["frames"] == 77


def test_stop_reaches_a_zerogpu_call_through_the_stop_file(studios, shared, monkeypatch):
    """The call runs where the app's events do not reach (a worker process): Stop writes the stop file, the call's
    watcher sets its cancel event, and the engine stops after the step it is in."""
    _, job_id = shared
    studio, _ = studios(True)
    real_generate_video = studio_module.generate_video
    steps = []

    def pressing_stop_in_step_1(*args, progress, cancel, **kwargs):
        def report(done, total, description):
            progress(done, total, description)
            if " · step " in description:
                steps.append(description)
                assert next(studio.stop("animate", TAB)) == "Stopping after the current step…"
                assert cancel.wait(30), "the stop file did not reach the call"

        return real_generate_video(*args, progress=report, cancel=cancel, **kwargs)

    monkeypatch.setattr(studio_module, "generate_video", pressing_stop_in_step_1)
    *_, (video, side, summary, details) = _collect(studio.animate(job_id, "quality", 2, 9, 1.0, 1, False, request=TAB, progress=_progress))
    assert (video, side, summary, details["complete"]) == (None, None, "Stopped after step 1 of 4.", False)
    assert len(steps) == 1


def test_a_zerogpu_extraction_records_its_session_and_a_failed_one_leaves_no_folder(studios, e2e_media, tmp_path):
    """The extraction runs in ZeroGPU's worker process (its arguments and result pickled, what it keeps in memory
    lost): the session crosses as a plain argument into the job's record, so the app's process knows whose the job
    is; a failed extraction's folder is removed there too."""
    studio, recorder = studios(True)
    *_, job_id = studio.extract_animation(str(e2e_media["photo"]), str(e2e_media["short_video"]), resolution="480p", request=TAB, progress=_progress)
    assert [name for name, _ in recorder.durations] == ["_extraction_call"]
    assert open_job(studio.work_root, job_id).record.owner == TAB.session_hash
    assert studio.job_previews("animate", job_id, TAB)[0]
    with pytest.raises(gr.Error, match="belongs to another session"):
        studio.job_previews("animate", job_id, types.SimpleNamespace(session_hash="another-tab"))

    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(Path(e2e_media["photo"]).read_bytes()[:200])
    before = set(studio.work_root.iterdir())
    with pytest.raises(gr.Error, match="damaged.png"):
        studio.extract_animation(str(damaged), str(e2e_media["short_video"]), resolution="480p", request=TAB, progress=_progress)
    assert len(recorder.durations) == 2 and set(studio.work_root.iterdir()) == before
