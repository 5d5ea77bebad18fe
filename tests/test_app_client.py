"""The app end to end through `gradio_client`: extract + generate in both modes, one-call and draft endpoints.

Runs the served app (`tests.e2e_fixtures.served_app`) with the confident tiny models on CPU. The returned
mp4 files are decoded with PyAV: frame counts, sizes and sound are checked.
"""

from __future__ import annotations

from pathlib import Path

import types

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.e2e_fixtures import DRIVING_FRAMES
from tests.media import audio_duration, video_facts

pytest_plugins = ["tests.e2e_fixtures"]  # the served app, tiny models and media fixtures

STEPS = 2


@pytest.fixture(scope="module")
def client(served_app, tmp_path_factory):
    return Client(served_app, download_files=str(tmp_path_factory.mktemp("downloads")), verbose=False)


def _path(output) -> Path:
    """A video output: gradio_client gives a path, or a dict with the path under "video"."""
    return Path(output["video"] if isinstance(output, dict) else output)


def _video(path: Path):
    return handle_file(str(path))


def _check_result(result_path, side_path, frames: int) -> tuple[dict, dict]:
    result, side = video_facts(_path(result_path)), video_facts(_path(side_path))
    assert result["frames"] == frames and side["frames"] == frames
    assert result["codec"] == "h264" and result["has_audio"] and side["has_audio"]
    assert audio_duration(_path(result_path)) == pytest.approx(frames / 30, abs=0.06)
    assert side["height"] == result["height"] and side["width"] > result["width"]  # driving | result
    return result, side


def test_animation_extract_then_generate_two_segments(client, e2e_media):
    skeleton, faces, report_md, report, job_id = client.predict(
        handle_file(str(e2e_media["photo"])), _video(e2e_media["video"]), 0.0, None, "720p", "30", False, "",
        api_name="/extract_animation",
    )
    assert video_facts(_path(skeleton))["frames"] == DRIVING_FRAMES
    faces_facts = video_facts(_path(faces))
    assert (faces_facts["frames"], faces_facts["width"], faces_facts["height"]) == (DRIVING_FRAMES, 512, 512)
    assert report["job_id"] == job_id and report["frames"] == DRIVING_FRAMES and report["mask_coverage"] is None
    assert "Person found" in report_md and "GPU time" in report_md

    video, side, summary, details = client.predict(job_id, "quality", STEPS, 7, 1.0, 1, True, api_name="/animate")
    result, _ = _check_result(video, side, DRIVING_FRAMES)
    assert (details["seed"], details["frames"], details["steps"]) == (7, DRIVING_FRAMES, STEPS)
    assert "Seed 7" in summary
    skeleton_facts = video_facts(_path(skeleton))
    assert (result["width"], result["height"]) == (skeleton_facts["width"], skeleton_facts["height"])


def test_replacement_extract_with_points_then_generate(client, e2e_media):
    points = '[{"frame": 0, "x": 0.05, "y": 0.05, "positive": false}]'
    skeleton, faces, mask, background, report_md, report, job_id = client.predict(
        handle_file(str(e2e_media["photo"])), _video(e2e_media["short_video"]), 0.0, None, "480p", "30", points,
        7, 3, 1, api_name="/extract_replacement",
    )
    for preview in (skeleton, mask, background):
        assert video_facts(_path(preview))["frames"] == 20
    assert 0 < report["mask_coverage"] <= 1 and "Mask covers" in report_md

    video, side, summary, details = client.predict(
        job_id, "quality", STEPS, -1, 1.0, 1, False, True, 0.8, api_name="/replace"
    )
    _check_result(video, side, 20)
    assert details["seed"] >= 0 and f"Seed {details['seed']}" in summary


def test_trim_changes_the_frame_count(client, e2e_media):
    *_, report, job_id = client.predict(
        handle_file(str(e2e_media["photo"])), _video(e2e_media["video"]), 1.0, 2.0, "480p", "30", False, "",
        api_name="/extract_animation",
    )
    assert report["frames"] == 30


@pytest.mark.parametrize("api_name", ["/animate_oneshot", "/replace_oneshot"])
def test_one_call_endpoints(client, e2e_media, api_name):
    inputs = [handle_file(str(e2e_media["photo"])), _video(e2e_media["short_video"]), 0.0, None, "480p", "30"]
    if api_name == "/animate_oneshot":
        inputs += [False, "", "quality", STEPS, 11, 1.0, 1, False]
    else:
        inputs += ["", 7, 3, 4, "quality", STEPS, 11, 1.0, 1, False, True, 1.0]
    video, side, summary, details, job_id = client.predict(*inputs, api_name=api_name)
    _check_result(video, side, 20)
    assert details["seed"] == 11 and details["job_id"] == job_id and details["report"]["frames"] == 20


def test_draft_renders_the_first_segment_at_480p_with_the_fast_preset(client, e2e_media):
    video, side, summary, details, job_id = client.predict(
        handle_file(str(e2e_media["photo"])), _video(e2e_media["video"]), 0.0, None, "30", False, "",
        "quality", STEPS, 5, 1.0, 1, False, api_name="/animate_draft",
    )
    result, _ = _check_result(video, side, 77)
    assert result["width"] * result["height"] <= 64 * 64  # the (test-shrunk) 480p area, not 720p's
    assert details["steps"] == 4  # the app has a few-step LoRA, so drafts use the fast preset


def test_fast_preset_switches_the_few_step_lora_on(client, e2e_media):
    *_, job_id = client.predict(
        handle_file(str(e2e_media["photo"])), _video(e2e_media["short_video"]), 0.0, 0.3, "480p", "30", False, "",
        api_name="/extract_animation",
    )
    video, side, summary, details = client.predict(job_id, "fast", 4, 1, 1.0, 1, False, api_name="/animate")
    _check_result(video, side, 9)
    assert details["steps"] == 4 and details["lora_weights"] == {"fast": 1.0}


def test_generate_without_extraction_says_what_to_do(client):
    with pytest.raises(AppError, match="Extract"):
        client.predict("", "quality", STEPS, -1, 1.0, 1, False, api_name="/animate")


def test_stop_cancels_between_steps_and_the_next_job_runs(served_demo, client, e2e_media):
    """Stop (the page's button calls `Studio.stop`) sets the running job's event; generation stops at the next
    step. Here the progress callback presses Stop as soon as the first step is reported."""
    studio = served_demo.studio
    *_, job_id = client.predict(
        handle_file(str(e2e_media["photo"])), _video(e2e_media["short_video"]), 0.0, 0.3, "480p", "30", False, "",
        api_name="/extract_animation",
    )
    request = types.SimpleNamespace(session_hash=client.session_hash)  # the job is the client's session's
    reports = []

    def press_stop_on_first_step(value, desc=None, **_):
        reports.append(desc)
        if desc.startswith("Segment"):
            assert studio.stop("animate", request) == "Stopping after the current step…"

    with pytest.raises(gr.Error, match="stopped"):
        studio.animate(job_id, "quality", 5, 1, 1.0, 1, False, request=request, progress=press_stop_on_first_step)
    assert sum(desc.startswith("Segment") for desc in reports) == 1  # no step after the one that pressed Stop
    assert studio.stop("animate", request) == "Nothing is being generated."
    video, *_ = studio.animate(job_id, "quality", 1, 1, 1.0, 1, False, request=request, progress=lambda *a, **k: None)
    assert video_facts(Path(video))["frames"] == 9
