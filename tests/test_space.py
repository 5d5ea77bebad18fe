"""The Space's actions (wan_animate.space) without a browser or models: what each endpoint returns and yields,
the previews it hands the page, progress labels, errors as messages, and ZeroGPU durations.

Preprocessing is a stand-in (`RecordingPreprocessor`) that writes files where the real one does; generation is
replaced where a test needs its result. The real models run in tests/test_app_client.py and test_browser.py.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from tests.media import counter_frames, write_test_video
from wan_animate.errors import GenerationCancelled, WanAnimateError
from wan_animate.generate import GenerationSettings
from wan_animate.jobs import open_job
from wan_animate.preprocess import Preprocessed
from wan_animate.preprocess.report import QualityReport
from wan_animate.presets import DRAFT_RESOLUTION, estimate_preprocess_seconds, gpu_duration
from wan_animate.space import PREVIEWS, AppConfig, PageProgress, Studio
from wan_animate.space import gpu_time as gpu_time_module
from wan_animate.space import studio as studio_module
from wan_animate.space.zerogpu import MAX_CALL_SECONDS, GpuCall, on_zerogpu
from wan_animate.space.inputs import frame_rate, generation_settings, optional_end
from wan_animate.space.studio import user_errors

FRAMES = 24


class RecordingPreprocessor:
    """Stands in for `Preprocessor`: "loads" its models, writes the files the real one writes (their bytes
    don't matter here), reports one stage, and records what it was asked."""

    detector = pose_estimator = segmenter = object()

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple] = []

    def prepare(self, mode, image, video, workdir, options, *, progress=None) -> Preprocessed:
        self.calls.append((mode, Path(image), Path(video), Path(workdir), options))
        if self.error is not None:
            raise self.error
        progress(1, 2, "Estimating pose")
        conditioning_dir = Path(workdir) / "conditioning"
        conditioning_dir.mkdir(parents=True)
        files = {name: conditioning_dir / name for name in ("src_pose.mp4", "src_face.mp4", "src_bg.mp4")}
        files["mask"] = Path(workdir) / "mask.mp4"
        for path in files.values():
            path.write_bytes(b"preview")
        replace = mode == "replace"
        return Preprocessed(
            conditioning=types.SimpleNamespace(num_frames=FRAMES),
            report=QualityReport(FRAMES, FRAMES, 1, 0.9, 1.0, mask_coverage=0.4 if replace else None),
            folder=Path(workdir),
            skeleton_video=files["src_pose.mp4"],
            face_video=files["src_face.mp4"],
            mask_video=files["mask"] if replace else None,
            background_video=files["src_bg.mp4"] if replace else None,
        )


def _config(tmp_path: Path, **changes) -> AppConfig:
    missing = tmp_path / "no_models"
    values = dict(
        model=str(missing / "checkpoint"), detector=str(missing / "detector"), pose_model=str(missing / "pose"),
        sam2=str(missing / "sam2"), allow_cpu=True, work_dir=tmp_path / "jobs", fast_lora="fast.safetensors",
    )
    return AppConfig(**{**values, **changes})


@pytest.fixture
def studio(tmp_path):
    studio = Studio(_config(tmp_path))
    studio.preprocessor = RecordingPreprocessor()
    return studio


@pytest.fixture
def inputs(tmp_path) -> tuple[str, str]:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((48, 32, 3), 200, np.uint8)).save(photo)
    video = write_test_video(tmp_path / "clip.mp4", counter_frames(FRAMES, 64, 96), 30.0)
    return str(photo), str(video)


def collect(outputs) -> list:
    """Every value an async generator (a generation endpoint) yields, outside an event loop."""

    async def run() -> list:
        return [value async for value in outputs]

    return asyncio.run(run())


class Recorder:
    """A ``gr.Progress`` stand-in that keeps what the bar was given."""

    def __init__(self) -> None:
        self.shown: list[tuple[float | None, str]] = []

    def __call__(self, value, desc=None, **_) -> None:
        self.shown.append((value, desc))

    @property
    def labels(self) -> list[str]:
        return [desc for _, desc in self.shown]


# -- extraction ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_extraction_returns_and_records_the_modes_previews(studio, inputs, mode):
    extract = studio.extract_replacement if mode == "replace" else studio.extract_animation
    outputs = extract(*inputs, progress=Recorder())
    *previews, report_markdown, report, job_id = outputs
    assert len(previews) == len(PREVIEWS[mode])  # one value per preview pane of the tab
    job = open_job(studio.work_root, job_id)
    expected = {"skeleton": "src_pose.mp4", "faces": "src_face.mp4", "mask": "mask.mp4", "background": "src_bg.mp4"}
    assert [Path(path).name for path in previews] == [expected[name] for name in PREVIEWS[mode]]
    assert all(Path(path).is_file() and Path(path).is_relative_to(job.folder) for path in previews)
    assert report == {"job_id": job_id, "mode": mode, "resolution": "720p", **job.record.report}
    assert f"Job `{job_id}`" in report_markdown and "Person found" in report_markdown
    # The page refills its panes from the job (after Draft and One click too) with the same values.
    assert studio.job_previews(mode, job_id) == tuple(outputs[:-1])


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_no_job_empties_every_pane(studio, mode):
    assert studio.job_previews(mode, "") == (*[None] * len(PREVIEWS[mode]), "", None)


def test_extraction_labels_each_phase_before_preprocessing_reports(studio, inputs):
    progress = Recorder()
    studio.extract_replacement(*inputs, progress=progress)
    assert progress.labels == [
        "Loading the person detector", "Loading the pose model", "Loading SAM2 (the mask model)",
        "Reading the video", "Estimating pose",
    ]
    assert [value for value, _ in progress.shown] == [0.0, 0.0, 0.0, 0.0, 0.5]  # a phase starts with an empty bar


def test_extraction_reads_the_page_values(studio, inputs):
    studio.extract_replacement(
        *inputs, start=0.2, end=0, resolution="480p", fps="source",
        points='[{"frame": 0, "x": 0.5, "y": 0.5, "positive": false}]', mask_kernel=9, mask_iterations=2, blockify=8,
        progress=Recorder(),
    )
    mode, _, _, _, options = studio.preprocessor.calls[0]
    assert (mode, options.start, options.end, options.fps, options.resolution) == ("replace", 0.2, None, None, "480p")
    assert (options.mask_kernel, options.mask_iterations, options.blockify) == (9, 2, (8, 8))
    assert len(options.points) == 1 and not options.points[0].positive and options.person_point is None


def test_a_failed_extraction_is_shown_as_its_message(studio, inputs):
    studio.preprocessor = RecordingPreprocessor(WanAnimateError("No person was found in the driving video."))
    with pytest.raises(gr.Error, match="No person was found"):
        studio.extract_animation(*inputs, progress=Recorder())
    with pytest.raises(gr.Error, match="Upload a character photo"):
        studio.extract_animation(inputs[0], None, progress=Recorder())


# -- one click and drafts --------------------------------------------------------------------------------


@pytest.fixture
def generations(studio, monkeypatch) -> list:
    """Replace generation by a recorder that yields made-up outputs: one partial, then the result."""
    calls = []

    def generate(job, settings, running, progress):
        calls.append((job, settings))
        yield "partial.mp4", None, "segment 1 of 2", {"complete": False}
        yield "result.mp4", "side_by_side.mp4", "summary", {"seed": 1}

    monkeypatch.setattr(studio, "_generate", generate)
    return calls


@pytest.mark.parametrize("action", ["animate_oneshot", "animate_draft", "replace_oneshot", "replace_draft"])
def test_one_call_runs_yield_the_job_first_then_the_growing_result(studio, inputs, generations, action):
    run = getattr(studio, action)
    assert inspect.isasyncgenfunction(run)  # Gradio streams what it yields and cancels it at any await
    steps = collect(run(*inputs, progress=Recorder()))
    job_id = steps[0][-1]
    assert steps == [
        (None, None, "", None, job_id),
        ("partial.mp4", None, "segment 1 of 2", {"complete": False}, job_id),
        ("result.mp4", "side_by_side.mp4", "summary", {"seed": 1}, job_id),
    ]
    job, settings = generations[0]
    assert job.id == job_id and job.record.mode == ("replace" if action.startswith("replace") else "animate")
    if action.endswith("draft"):
        assert job.record.resolution == DRAFT_RESOLUTION and settings.num_inference_steps == 4  # the fast preset
    assert studio.job_previews(job.record.mode, job_id)[0].endswith("src_pose.mp4")


def test_generation_errors_and_stops_are_shown_as_messages(studio, inputs, monkeypatch):
    def stopped(job, settings, running, progress):
        raise GenerationCancelled("Stopped after step 3 of 40.")
        yield

    monkeypatch.setattr(studio, "_generate", stopped)
    with pytest.raises(gr.Error, match="Stopped after step 3 of 40."):
        collect(studio.animate_oneshot(*inputs, progress=Recorder()))
    with pytest.raises(gr.Error, match="press Extract first"):
        collect(studio.animate("", progress=Recorder()))


def test_stop_reaches_only_the_running_job_of_its_tab_and_mode(studio, inputs, monkeypatch):
    tab, other_tab = types.SimpleNamespace(session_hash="tab"), types.SimpleNamespace(session_hash="other")
    answers = []

    def generate(job, settings, running, progress):
        answers.extend([list(studio.stop("replace", tab)), list(studio.stop("animate", other_tab)), running.cancel.is_set()])
        stop = studio.stop("animate", tab)
        answers.extend([next(stop), running.cancel.is_set()])
        running.outcome = "Stopped after step 1 of 2."
        yield "partial.mp4", None, "stopped", {}

    monkeypatch.setattr(studio, "_generate", generate)
    nothing = ["Nothing is being generated."]
    assert list(studio.stop("animate", tab)) == nothing
    collect(studio.animate_oneshot(*inputs, request=tab, progress=Recorder()))
    assert answers == [nothing, nothing, False, "Stopping after the current step…", True]
    # Stop said it stops; once the job ended, Stop says how far it got, once.
    assert list(studio.stop("animate", tab)) == ["Stopped after step 1 of 2."]
    assert list(studio.stop("animate", tab)) == nothing


# -- shared pieces ---------------------------------------------------------------------------------------


def test_user_errors_keep_generator_functions_generators():
    @user_errors
    def plain():
        raise WanAnimateError("Trim the clip.")

    @user_errors
    def generator():
        yield 1
        raise GenerationCancelled("Stopped after step 2 of 8.")

    @user_errors
    async def async_generator():
        yield 1
        raise WanAnimateError("Use 480p.")

    assert not inspect.isgeneratorfunction(plain) and inspect.isgeneratorfunction(generator)
    assert inspect.isasyncgenfunction(async_generator)
    with pytest.raises(gr.Error, match="Trim the clip."):
        plain()
    run = generator()
    assert next(run) == 1
    with pytest.raises(gr.Error, match="Stopped after step 2 of 8."):
        next(run)
    values = []

    async def consume():
        async for value in async_generator():
            values.append(value)

    with pytest.raises(gr.Error, match="Use 480p."):
        asyncio.run(consume())
    assert values == [1]


def test_page_progress_shows_fractions_and_keeps_the_bar_through_phases():
    recorder = Recorder()
    progress = PageProgress(recorder)
    progress.phase("Loading the model")
    progress(3, 4, "Segment 1/2 · step 3/4")
    progress.phase("GPU call 2: segments 2–2 of 2")  # a phase keeps the bar where the job is
    progress(7, 4, "Writing previews")  # never past a full bar
    assert recorder.shown == [
        (0.0, "Loading the model"), (0.75, "Segment 1/2 · step 3/4"), (0.75, "GPU call 2: segments 2–2 of 2"),
        (1.0, "Writing previews"),
    ]


def test_inputs_read_the_page_values():
    assert frame_rate("30") == 30.0 and frame_rate("source") is None and frame_rate(None) is None
    with pytest.raises(WanAnimateError, match="Frame rate"):
        frame_rate("fast")
    assert optional_end(0) is None and optional_end(None) is None and optional_end(2) == 2.0
    quality = generation_settings("quality", 12, -1, 1.0, 5, True, fast_available=False)
    assert (quality.num_inference_steps, quality.seed, quality.overlap_frames, quality.color_match) == (12, None, 5, True)
    assert generation_settings("fast", 30, 7, 1.0, 1, False, fast_available=True).num_inference_steps == 4
    with pytest.raises(WanAnimateError, match="few-step LoRA"):
        generation_settings("fast", 4, 7, 1.0, 1, False, fast_available=False)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (("quality", float("nan"), -1, 1.0, 1, False), "Steps"),
        (("quality", 20, float("nan"), 1.0, 1, False), "Seed"),
        (("quality", 20, -5, 1.0, 1, False), "-1 for a random seed"),
        (("quality", 20, -1, 1.0, 3, False), "Overlap frames"),
        (("quality", 20, -1, 1.0, 1, "no"), "Colour consistency"),
        (("quality", 20, -1, 1.0, 1, False, True, float("inf")), "Relighting weight"),
        ((["quality"], 20, -1, 1.0, 1, False), "Preset"),
        (("quality", 20, -1, 1.0, 1, False, None, 1.0, "turbo"), "Step cache"),
    ],
)
def test_bad_generation_values_are_refused_naming_the_setting(values, named):
    with pytest.raises(WanAnimateError, match=named):
        generation_settings(*values, fast_available=True)


def test_bad_extraction_values_are_refused_before_a_job_is_made(studio, inputs):
    for values, named in [
        (dict(mask_kernel=float("nan")), "Mask dilation kernel"),
        (dict(blockify=2.5), "Blockify grid"),
        (dict(resolution=["720p"]), "Resolution"),
        (dict(fps=float("inf")), "Frame rate"),
        (dict(start=-1), "Start"),
        (dict(end=-2), "End"),
    ]:
        with pytest.raises(gr.Error, match=named):
            studio.extract_replacement(*inputs, **values, progress=Recorder())
    assert not studio.preprocessor.calls and not list(studio.work_root.iterdir())


def test_tiny_models_config_runs_on_the_cpu_and_says_it_is_a_demo(tmp_path):
    from wan_animate.demo import TinyModels

    models = TinyModels(*(tmp_path / name for name in ("ckpt", "det", "pose.onnx", "sam2", "relight.ckpt", "fast.st")))
    config = AppConfig().with_tiny_models(models)
    assert config.demo and config.allow_cpu and (config.memory_mode, config.dtype) == ("none", "float32")
    assert (config.model, config.pose_model, config.fast_lora) == (str(models.checkpoint), str(models.pose), str(models.fast_lora))


# -- ZeroGPU durations -----------------------------------------------------------------------------------


def test_every_gpu_call_asks_for_a_duration_from_its_arguments(tmp_path, inputs, monkeypatch):
    """On ZeroGPU each GPU call is wrapped by ``spaces.GPU(duration=...)``; here `spaces.GPU` is a recorder. The
    generation endpoints are not GPU calls themselves: they run a job as calls (tests/test_zerogpu.py)."""
    wrapped = {}

    def gpu(duration):
        def wrap(action):
            wrapped[action.__name__] = duration
            return action

        return wrap

    monkeypatch.setattr(studio_module.spaces, "GPU", gpu)
    Studio(_config(tmp_path))
    # Every extraction (the extraction endpoints', one-click and draft runs') is one `_extraction_call`.
    assert set(wrapped) == {"_extraction_call", "_generation_call"}
    photo, video = inputs
    extract = wrapped["_extraction_call"]
    assert extract(False, "animate", photo, video) == gpu_duration(estimate_preprocess_seconds(FRAMES, "animate"))
    replacement = extract(False, "replace", photo, video, 0.0, None, "720p", "30", "", "a-session", None, {})
    assert replacement == gpu_duration(estimate_preprocess_seconds(FRAMES, "replace"))
    # A bad input asks for the default; the action then fails with its own message.
    assert extract(False, "animate", photo, str(tmp_path / "missing.mp4")) == gpu_time_module.DEFAULT_SECONDS
    assert wrapped["_generation_call"](GpuCall(segments=2, seconds=217), None, None) == 217


def test_no_extraction_asks_zerogpu_for_more_than_its_longest_call(tmp_path, monkeypatch):
    """The longest clip the page allows (30 s) at 30 fps: Replacement's estimate fits a call; a longer estimate
    (a source rate of 60 fps) asks for the longest call rather than one ZeroGPU would refuse."""
    monkeypatch.setattr(gpu_time_module, "probe_video", lambda path: types.SimpleNamespace(duration=30.0, fps=60.0))
    duration = gpu_time_module.duration_of(lambda video, fps="30", mode="replace": None, gpu_time_module.extract_seconds)
    assert duration("clip.mp4") == gpu_duration(estimate_preprocess_seconds(900, "replace")) <= MAX_CALL_SECONDS
    assert duration("clip.mp4", fps="source") == MAX_CALL_SECONDS


def test_the_page_says_the_gpu_time_before_a_job_starts(tmp_path, studio, inputs):
    *_, job_id = studio.extract_animation(*inputs, progress=Recorder())
    job = open_job(studio.work_root, job_id)
    job.record.num_frames = 900  # 30 s at 30 fps
    job.save()
    page = ("", None, 0.0, None, "30", "720p")
    assert studio.gpu_estimate(*page, "quality", 20, 1.0, 1) == ""  # nothing uploaded yet
    local = studio.gpu_estimate(job_id, *page[1:], "quality", 20, 1.0, 1)
    assert local.startswith("**Generation:** about 54 min of GPU time (900 frames at 720p, 12 segments of 20 steps; H200 figures)")

    zerogpu = Studio(_config(tmp_path, zerogpu=True))
    assert zerogpu.default_preset == "fast" and studio.default_preset == "quality"
    fast = zerogpu.gpu_estimate(job_id, *page[1:], "fast", 4, 1.0, 1)
    assert fast.startswith("**Generation on ZeroGPU:** about 18 min of GPU time in 4 calls of at most 300 s")
    assert "More than a free account's daily ZeroGPU quota" in fast
    quality = zerogpu.gpu_estimate(job_id, *page[1:], "quality", 20, 1.0, 1)
    assert quality.startswith("⚠️ One segment at these settings needs about 272 s of GPU time")
    # From the uploaded video, before any extraction: the short clip is one segment, well within a free quota.
    short = zerogpu.gpu_estimate("", inputs[1], 0.0, None, "30", "480p", "fast", 4, 1.0, 1)
    assert short == "**Generation on ZeroGPU:** about 50 s of GPU time in 1 call of at most 300 s (24 frames at 480p, 1 segment of 4 steps)."


def test_a_generation_state_folder_is_named_by_its_settings(studio):
    key = studio_module._settings_key
    assert key(GenerationSettings(seed=None)) == key(GenerationSettings(seed=None))  # a random seed goes on
    assert len({key(GenerationSettings(seed=None)), key(GenerationSettings(seed=3)), key(GenerationSettings(seed=4)),
                key(GenerationSettings(num_inference_steps=4)), key(GenerationSettings(guidance_scale=2.0))}) == 5


def test_a_run_of_the_same_job_and_settings_waits_for_the_one_before(studio, tmp_path):
    """Stop, then Generate at once: the new run waits (under a label) until the stopped one ends its step, instead
    of both writing the same state folder or the new one being refused."""
    state_dir, labels = tmp_path / "state", []
    first_claimed, second_waits, second_claimed, release = (threading.Event() for _ in range(4))

    def progress(value, desc=None, **_) -> None:
        labels.append(desc)
        second_waits.set()

    def first() -> None:
        with studio._claimed(state_dir, PageProgress(Recorder())):
            first_claimed.set()
            assert release.wait(30)

    def second() -> None:
        with studio._claimed(state_dir, PageProgress(progress)):
            second_claimed.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_claimed.wait(30)
    threads[1].start()
    assert second_waits.wait(30)  # the second run says it waits...
    assert labels == ["Waiting for this job's last run to end its step"] and not second_claimed.is_set()
    release.set()  # ...and goes on once the first one ended
    for thread in threads:
        thread.join(30)
    assert second_claimed.is_set()


def test_the_app_passes_aot_compiled_blocks_and_zerogpu_from_its_flags_and_environment(monkeypatch):
    import app

    monkeypatch.delenv("WAN_ANIMATE_AOT_BLOCKS", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    config, _ = app.parse_args([])
    assert config.aot_blocks is None and "compile_blocks" not in config.pipeline_kwargs()  # load_pipeline's own choice
    config, _ = app.parse_args(["--aot-blocks", "owner/repo::blocks.pt2"])
    assert config.pipeline_kwargs()["compile_blocks"] == "aot:owner/repo::blocks.pt2"
    monkeypatch.setenv("WAN_ANIMATE_AOT_BLOCKS", "/data/blocks.pt2")
    assert app.parse_args([])[0].pipeline_kwargs()["compile_blocks"] == "aot:/data/blocks.pt2"
    assert not app.parse_args([])[0].zerogpu
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert on_zerogpu()
