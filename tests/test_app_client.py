"""The app end to end through `gradio_client`: extract + generate in both modes, one-call and draft endpoints.

Runs the served app (`tests.e2e_fixtures.served_app`) with the confident tiny models on CPU. The returned
mp4 files are decoded with PyAV: frame counts, sizes and sound are checked.
"""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.e2e_fixtures import DRIVING_FRAMES
from tests.media import audio_duration, video_facts
from wan_animate.space import studio as studio_module

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


def _extract_two_segments(client, e2e_media) -> str:
    """The job id of an Animation extraction of the 80-frame clip (two segments)."""
    *_, job_id = client.predict(
        handle_file(str(e2e_media["photo"])), _video(e2e_media["video"]), 0.0, None, "480p", "30", False, "",
        api_name="/extract_animation",
    )
    return job_id


def test_the_video_grows_segment_by_segment_with_progress_in_the_status(client, e2e_media):
    """A two-segment job: an output holding the first segment comes before the finished result, and the status
    carries the engine's descriptions as a fraction (Gradio shows a percentage), not as a count."""
    job_id = _extract_two_segments(client, e2e_media)
    job = client.submit(job_id, "quality", STEPS, 3, 1.0, 1, False, api_name="/animate")
    seen = set()
    while not job.done():
        for unit in job.status().progress_data or ():
            seen.add((unit.desc, unit.index, unit.progress))
        time.sleep(0.005)  # sampling the status (not a timed assertion); the app serves from this process
    final = job.result()
    *partials, last = job.outputs()
    assert last == final and final[3]["complete"] and video_facts(_path(final[0]))["frames"] == DRIVING_FRAMES
    growing = [outputs for outputs in partials if not outputs[3]["complete"]]
    assert growing, partials  # the result pane had the video before the job ended
    video, side, summary, details = growing[0]
    assert side is None and "Segment 1 of 2 done" in summary and details["segments_done"] == 1
    assert video_facts(_path(video))["frames"] == 77  # the first segment, playable while the second runs
    engine = [(desc, index, fraction) for desc, index, fraction in seen if desc and desc.startswith("Segment")]
    assert engine and all(index is None and 0 <= fraction <= 1 for _, index, fraction in engine), seen  # not "k/1000"
    assert any(desc.endswith(" left") for desc, _, _ in engine), seen  # the time left, once a step was measured


def test_client_cancel_stops_within_a_step_and_the_same_call_goes_on(served_demo, client, e2e_media, monkeypatch):
    """``job.cancel()`` from `gradio_client` reaches the running job's cancel event, and the job stops at its
    next check, after the step it is in; the finished segment is kept, and the same call goes on from it.

    "Within a step" is measured by counting, not timing: the engine is held inside its report of step 7 (step 2
    of the second segment) until the client's cancel has reached the event it checks right after that report (so
    the cancel lands during a step, as it would when it comes at any moment); it then runs no further step: 7 step
    reports in all, and the job says "Stopped after step 7 of 10". The next call runs at once (no step of the
    stopped job is left to wait for) and does only the second segment.
    """
    studio = served_demo.studio
    job_id = _extract_two_segments(client, e2e_media)
    in_step_7, ended, step_reports = threading.Event(), threading.Event(), []
    real_generate_video = studio_module.generate_video

    def held_at_step_7(*args, progress, cancel, **kwargs):
        def report(done, total, description):
            progress(done, total, description)
            if " · step " in description:
                step_reports.append(description)
                if len(step_reports) == 7:
                    in_step_7.set()
                    assert cancel.wait(60), "the client's cancel did not reach the job"

        try:
            return real_generate_video(*args, progress=report, cancel=cancel, **kwargs)
        finally:
            ended.set()

    monkeypatch.setattr(studio_module, "generate_video", held_at_step_7)
    values = (job_id, "quality", 5, 3, 1.0, 1, False)
    job = client.submit(*values, api_name="/animate")
    assert in_step_7.wait(120)
    assert job.cancel()
    assert ended.wait(60)  # the engine stopped (no Stop button involved: only the client's cancel)
    assert len(step_reports) == 7  # no step ran after the cancel
    session = types.SimpleNamespace(session_hash=client.session_hash)
    stopped = list(studio.stop("animate", session))[-1]  # how it ended, as the page's Stop says it
    assert stopped.startswith("Stopped after step 7 of 10. The video holds the finished segment (77 of 80 frames)")

    step_reports.clear()
    on = client.submit(*values, api_name="/animate")
    video, side, summary, details = on.result()
    kept, _, continuing, _ = on.outputs()[0]  # first, the kept segment
    assert "Continuing from segment 2 of 2." in continuing and video_facts(_path(kept))["frames"] == 77
    assert details["complete"] and video_facts(_path(video))["frames"] == DRIVING_FRAMES
    assert len(step_reports) == 5  # the second segment only
