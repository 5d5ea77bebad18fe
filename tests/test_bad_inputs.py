"""The bad-input matrix (tests.bad_inputs.CASES) through the package API, the CLI and the served app's client API.

Each case must end in a result or in `WanAnimateError` (the CLI: exit code 2 and one ``error:`` line; the app: a
`gr.Error` that `gradio_client` raises as `AppError`) whose sentence names the user's file or the field, and shows
no server path or errno; a refused extraction leaves no folder behind, and after each case the app still serves a
good request. Input files are real ones at the real minimum sizes (`wan_animate.validation`); only the
smallest person is lowered, because the tiny random detector finds people a few pixels tall (the person limit
is checked with hand-made boxes in tests/test_validation.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bad_inputs import CASES, Case, Outcome, check_outcome, make_media
from tests.e2e_fixtures import serve, tiny_models  # noqa: F401  (session fixture)
from wan_animate import validation
from wan_animate.cli import main
from wan_animate.conditioning import Conditioning
from wan_animate.demo import DEMO_AREAS, demo_sizes
from wan_animate.errors import WanAnimateError
from wan_animate.generate import GenerationSettings, generate
from wan_animate.picker import conditioning_size, parse_clicks, person_point, to_point_prompts
from wan_animate.preprocess import PreprocessOptions, Preprocessor, sizing
from wan_animate.space import AppConfig

CLI_FLAGS = {
    "start": "--start",
    "end": "--end",
    "max_seconds": "--max-seconds",
    "resolution": "--resolution",
    "mask_kernel": "--mask-kernel",
    "mask_iterations": "--mask-iterations",
    "blockify": "--blockify",
    "detect_every": "--detect-every",
    "steps": "--steps",
    "seed": "--seed",
    "guidance": "--guidance",
    "shift": "--shift",
    "relight_weight": "--relight-weight",
}
"""The CLI's option for each setting name; cases with other settings (fps, points) do not run through the CLI."""

CLI_CASES = [case for case in CASES if set(case.settings) <= set(CLI_FLAGS)]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    return make_media(tmp_path_factory.mktemp("uploads"))


@pytest.fixture(autouse=True)
def tiny_outputs(monkeypatch):
    """Small output sizes on 2 CPU cores, and a person limit the tiny detector's few-pixel people pass."""
    monkeypatch.setitem(sizing.RESOLUTION_AREAS, "480p", DEMO_AREAS["480p"])
    monkeypatch.setattr(validation, "MIN_PERSON_HEIGHT", 2)
    monkeypatch.setattr(validation, "WARN_PERSON_HEIGHT", 2)


def tiny_conditioning() -> Conditioning:
    rng = np.random.default_rng(0)
    return Conditioning(
        mode="animate",
        reference_image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
        pose_frames=rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8),
        face_frames=rng.integers(0, 255, (2, 512, 512, 3), dtype=np.uint8),
        fps=30.0,
    )


class UntouchedPipeline:
    """Stands in for the pipeline where the settings must be refused before it is used."""

    def __getattr__(self, name):
        raise AssertionError(f"the pipeline was used ({name}) although the settings should have been refused")


def run_package(case: Case, media: dict[str, Path], preprocessor: Preprocessor, pipeline, workdir: Path) -> Outcome:
    """The case through the package's public API, as a program using it would call it."""
    settings = case.settings
    try:
        if case.stage == "generate":
            job = GenerationSettings(
                num_inference_steps=settings.get("steps", 1),
                seed=settings.get("seed", 0),
                guidance_scale=settings.get("guidance", 1.0),
                flow_shift=settings.get("shift", 5.0),
                relight_weight=settings.get("relight_weight", 1.0),
                segment_frames=5,
            )
            result = generate(pipeline(), tiny_conditioning(), job)
            assert result.seed == job.seed
            return Outcome(True)
        photo, video = media[case.photo], media[case.video]
        resolution = settings.get("resolution", "480p")
        clicks = parse_clicks(settings.get("points"))
        size = conditioning_size(case.mode, photo, video, resolution) if clicks else None
        blockify = settings.get("blockify", 1)
        options = PreprocessOptions(
            resolution=resolution,
            fps=settings.get("fps", 30.0),
            start=settings.get("start", 0.0),
            end=settings.get("end"),
            max_seconds=settings.get("max_seconds", 30.0),
            person_point=person_point(clicks, size) if clicks else None,
            points=to_point_prompts(clicks, size) if clicks and case.mode == "replace" else (),
            mask_kernel=settings.get("mask_kernel", 7),
            mask_iterations=settings.get("mask_iterations", 3),
            blockify=(blockify, blockify),
            detect_every=settings.get("detect_every"),
        )
        prepared = preprocessor.prepare(case.mode, photo, video, workdir, options)
        assert prepared.skeleton_video.is_file()
        return Outcome(True)
    except WanAnimateError as error:
        assert not workdir.exists(), "a refused extraction must leave nothing behind"
        return Outcome(False, str(error))


@pytest.fixture(scope="module")
def preprocessor(tiny_models) -> Preprocessor:  # noqa: F811
    return Preprocessor(tiny_models.detector, tiny_models.pose, tiny_models.sam2, device="cpu")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_through_the_package(case, media, preprocessor, tmp_path, request):
    def pipeline():
        if case.expect == "refused":
            return UntouchedPipeline()
        return request.getfixturevalue("tiny_pipeline")

    outcome = run_package(case, media, preprocessor, pipeline, tmp_path / "job")
    check_outcome(case, outcome, private=(str(media["photo"].parent), str(tmp_path)))


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_models):  # noqa: F811
    from wan_animate.models import load_pipeline

    return load_pipeline(tiny_models.checkpoint, allow_cpu=True, dtype="float32", memory_mode="none")


def cli_arguments(case: Case, media: dict[str, Path], models, folder: Path) -> list[str]:
    """``python -m wan_animate`` arguments for the case: ``preprocess`` for inputs, ``animate`` for generation."""
    options: list[str] = []
    for name, value in case.settings.items():
        options += [CLI_FLAGS[name], *([str(value)] * (2 if name == "blockify" else 1))]
    if "resolution" not in case.settings:
        options += ["--resolution", "480p"]
    if case.stage == "generate":
        conditioning = tiny_conditioning().save(folder / "conditioning")
        return [case.mode, "--conditioning", str(conditioning), "-o", str(folder / "out.mp4"), "--model",
                str(models.checkpoint), "--allow-cpu", "--dtype", "float32", *options]  # fmt: skip
    return ["preprocess", case.mode, "--image", str(media[case.photo]), "--video", str(media[case.video]),
            "-o", str(folder / "prepared"), "--detector", str(models.detector), "--pose-model", str(models.pose),
            "--sam2", str(models.sam2), *options]  # fmt: skip


def cli_outcome(code: int, stderr: str) -> Outcome:
    """Exit code 0 is a result; 2 is a refusal whose sentence is the last ``error:`` line (log lines aside)."""
    assert code in (0, 2), f"exit code {code}: {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-2000:]
    if code == 0:
        return Outcome(True)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ") or ": error: " in line]
    assert errors, f"no error line in: {stderr[-2000:]}"
    return Outcome(False, errors[-1].split("error: ", 1)[1])


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.id)
def test_bad_input_through_the_cli(case, media, tiny_models, tmp_path, capsys):  # noqa: F811
    try:
        code = main(cli_arguments(case, media, tiny_models, tmp_path))
    except SystemExit as exit:  # argparse refuses a value before anything runs
        code = exit.code
    outcome = cli_outcome(code, capsys.readouterr().err)
    check_outcome(case, outcome, private=(str(media["photo"].parent), str(tmp_path)))


@pytest.mark.parametrize("case_id", ["bad_photo_truncated_png", "bad_seed_2_64"])
def test_bad_input_through_the_real_entry_point(case_id, media, tiny_models, tmp_path):  # noqa: F811
    """``python -m wan_animate`` in its own process: the same sentence, exit code 2, no traceback."""
    case = next(case for case in CASES if case.id == case_id)
    run = subprocess.run(
        [sys.executable, "-m", "wan_animate", *cli_arguments(case, media, tiny_models, tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    check_outcome(case, cli_outcome(run.returncode, run.stderr), private=(str(media["photo"].parent),))


# -- the served app, through gradio_client ---------------------------------------------------------------------

APP_SETTINGS = {"start", "end", "fps", "resolution", "points", "mask_kernel", "mask_iterations", "blockify", "steps", "seed", "guidance", "relight_weight"}
"""The settings the app's endpoints have (it has no max_seconds, detect_every nor shift)."""

CLIENT_CANNOT_SEND = {"photo_missing", "video_missing"}
"""gradio_client reads a file before sending it: a missing file never reaches the app (the client raises
FileNotFoundError); the app's sentence for a file that is gone is checked through the package above."""

APP_CASES = [
    case for case in CASES if set(case.settings) <= APP_SETTINGS and not {case.photo, case.video} & CLIENT_CANNOT_SEND
]


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):  # noqa: F811
    """The app as ``python app.py --demo`` serves it (tiny models, small frames), with the real photo and video
    minimums (the cases' files are at those sizes); a client of one session; and a job of each mode to
    generate from, made by that client."""
    from gradio_client import Client, handle_file

    config = AppConfig(work_dir=tmp_path_factory.mktemp("jobs")).with_tiny_models(tiny_models)
    with demo_sizes(), serve(config) as demo:
        client = Client(demo.local_url, download_files=str(tmp_path_factory.mktemp("downloads")), verbose=False)
        media = make_media(tmp_path_factory.mktemp("app_uploads"))
        photo, video = handle_file(str(media["photo"])), handle_file(str(media["video"]))
        jobs = {
            "animate": client.predict(photo, video, resolution="480p", api_name="/extract_animation")[-1],
            "replace": client.predict(photo, video, resolution="480p", api_name="/extract_replacement")[-1],
        }
        yield demo, client, media, jobs


@pytest.fixture
def nan_json(monkeypatch):
    """Let gradio_client send NaN and infinities as Python's json writes them (httpx refuses to; a hostile client's
    HTTP library, or curl, does not)."""
    import json

    import httpx._content

    monkeypatch.setattr(httpx._content, "json_dumps", lambda value, **options: json.dumps(value, **{**options, "allow_nan": True}))


def run_app(case: Case, client, media: dict[str, Path], jobs: dict[str, str]) -> Outcome:
    """The case through the app's client API: an extraction endpoint for inputs, /animate or /replace (from a job of
    this client's) for generation settings."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    settings = dict(case.settings)
    try:
        if case.stage == "generate":
            mode = "replace" if case.mode == "replace" or "relight_weight" in settings else "animate"
            values = dict(job_id=jobs[mode], steps=settings.pop("steps", 1), seed=settings.pop("seed", 1), **settings)
            client.predict(**values, api_name=f"/{mode}")
        else:
            values = dict(photo=handle_file(str(media[case.photo])), video=handle_file(str(media[case.video])),
                          resolution=settings.pop("resolution", "480p"), **settings)  # fmt: skip
            client.predict(**values, api_name=f"/extract_{'replacement' if case.mode == 'replace' else 'animation'}")
        return Outcome(True)
    except AppError as error:
        return Outcome(False, str(error))


@pytest.mark.parametrize("case", APP_CASES, ids=lambda case: case.id)
def test_bad_input_through_the_app_client(case, served, nan_json):
    from gradio.utils import get_upload_folder
    from gradio_client import handle_file

    demo, client, media, jobs = served
    jobs_before = set(demo.studio.work_root.iterdir())
    outcome = run_app(case, client, media, jobs)
    check_outcome(case, outcome, private=(str(demo.studio.work_root), get_upload_folder(), str(media["photo"].parent)))
    if not outcome.ok and case.stage == "preprocess":
        assert set(demo.studio.work_root.iterdir()) == jobs_before, "a refused extraction must leave no job folder"
    # The app still serves a good request.
    *_, report, job_id = client.predict(
        handle_file(str(media["photo"])), handle_file(str(media["video"])), resolution="480p", api_name="/extract_animation"
    )
    assert report["frames"] == 6 and job_id.startswith("animate-")


def test_the_matrix_covers_every_class_of_bad_input():
    ids = [case.id for case in CASES]
    assert len(CASES) >= 40 and len(CLI_CASES) >= 40 and len(APP_CASES) >= 40
    for prefix in ("bad_photo", "refuse_photo", "ok_photo", "bad_video", "refuse_video", "bad_points", "bad_seed", "bad_steps"):
        assert any(case_id.startswith(prefix) for case_id in ids), prefix
