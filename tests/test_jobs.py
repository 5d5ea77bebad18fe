"""Job folders (wan_animate.jobs): records, safe ids, pruning, the side-by-side video."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from tests.media import audio_duration, counter_frames, frame_index, video_facts, write_test_video
from wan_animate.conditioning import Conditioning
from wan_animate.errors import WanAnimateError
from wan_animate.jobs import new_job, open_job, prune_jobs
from wan_animate.video import VideoFrames, read_video, write_video


@pytest.fixture
def inputs(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(photo)
    video = write_test_video(tmp_path / "clip.mp4", counter_frames(24, 64, 96), 30.0, audio_seconds=0.8)
    return photo, video


def test_new_job_keeps_inputs_and_record(tmp_path, inputs):
    photo, video = inputs
    job = new_job(tmp_path / "jobs", "replace", photo, video, start=0.2, end=0.6, fps=None, resolution="480p", options={"blockify": 8})
    assert job.id.startswith("replace-")
    assert open(job.record.video, "rb").read() == video.read_bytes()
    assert job.record.photo.endswith(".png")
    again = open_job(tmp_path / "jobs", job.id)
    assert (again.record.start, again.record.end, again.record.fps, again.record.resolution) == (0.2, 0.6, None, "480p")
    assert again.record.options == {"blockify": 8}


def test_open_job_accepts_only_job_ids(tmp_path, inputs):
    root = tmp_path / "jobs"
    new_job(root, "animate", *inputs)
    for bad in ("", "../../etc", "animate-../../x", "replace-" + "0" * 32):
        with pytest.raises(WanAnimateError):
            open_job(root, bad)


def test_new_job_refuses_missing_inputs_and_modes(tmp_path, inputs):
    photo, video = inputs
    with pytest.raises(WanAnimateError, match="photo"):
        new_job(tmp_path, "animate", tmp_path / "missing.png", video)
    with pytest.raises(WanAnimateError, match="mode"):
        new_job(tmp_path, "dance", photo, video)


def test_prune_removes_only_old_jobs(tmp_path, inputs):
    root = tmp_path / "jobs"
    old, young = new_job(root, "animate", *inputs), new_job(root, "animate", *inputs)
    (root / "not-a-job").mkdir()
    hour_ago = time.time() - 3600
    os.utime(old.folder, (hour_ago, hour_ago))
    os.utime(root / "not-a-job", (hour_ago, hour_ago))
    assert prune_jobs(root, max_age_seconds=600) == [old.id]
    assert not old.folder.exists() and young.folder.exists() and (root / "not-a-job").exists()


def test_conditioning_round_trip_and_missing(tmp_path, inputs):
    job = new_job(tmp_path, "animate", *inputs)
    with pytest.raises(WanAnimateError, match="Extract"):
        job.load_conditioning()
    conditioning = Conditioning(
        mode="animate",
        reference_image=np.zeros((32, 32, 3), np.uint8),
        pose_frames=np.zeros((3, 32, 32, 3), np.uint8),
        face_frames=np.zeros((3, 512, 512, 3), np.uint8),
        fps=30.0,
    )
    conditioning.save(job.conditioning_dir)
    loaded = job.load_conditioning()
    assert (loaded.mode, loaded.num_frames, loaded.width) == ("animate", 3, 32)
    assert isinstance(loaded.pose_frames, VideoFrames)  # read per segment when generating


def test_side_by_side_pairs_each_result_frame_with_its_driving_frame(tmp_path, inputs):
    """With a trim starting at frame 6, the left half of output frame t shows driving frame 6 + t."""
    job = new_job(tmp_path, "animate", *inputs, start=0.2, end=0.6, fps=30.0)
    result = write_video(job.output("result.mp4"), np.full((12, 64, 64, 3), 255, np.uint8), 30.0)
    path = job.write_side_by_side(result, job.output("side.mp4"))
    facts = video_facts(path)
    assert (facts["frames"], facts["width"], facts["height"]) == (12, 96 + 64, 64)
    assert audio_duration(path) == pytest.approx(12 / 30, abs=0.05)
    frames = read_video(path, fps=None, max_seconds=None).frames
    assert [frame_index(frame[:, 8:88]) for frame in frames[:4]] == [6, 7, 8, 9]
    assert frames[0][:, 100:].mean() > 240
