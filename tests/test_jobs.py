"""Job folders (wan_animate.jobs): records, safe ids, pruning, the side-by-side video."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.media import audio_duration, counter_frames, frame_index, video_facts, write_test_video
from wan_animate.conditioning import Conditioning
from wan_animate.errors import WanAnimateError
from wan_animate.jobs import Cleaner, JobStore, clean_jobs, folder_bytes, new_job, open_job, prune_jobs
from wan_animate.video import VideoFrames, probe_video, read_video, write_video


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


def test_job_inputs_keep_the_users_names_so_messages_name_them(tmp_path, inputs):
    photo, _ = inputs
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    server_copy = tmp_path / "tmp3f9a2c.png"
    server_copy.write_bytes(photo.read_bytes())
    job = new_job(tmp_path / "jobs", "animate", server_copy, broken, photo_name="my character.png")
    assert (job.record.photo_name, job.record.video_name) == ("my character.png", "broken.mp4")
    assert job.record.photo.endswith("my character.png")
    with pytest.raises(WanAnimateError) as error:
        probe_video(job.record.video)
    message = str(error.value)
    assert "broken.mp4" in message and job.id not in message and "Errno" not in message and str(tmp_path) not in message
    again = open_job(tmp_path / "jobs", job.id)
    assert again.record.video_name == "broken.mp4"


@pytest.mark.parametrize("start,end", [(float("nan"), None), (0.0, float("inf")), (1.0, 0.5), (-1.0, None)])
def test_refuse_a_job_with_a_trim_that_is_not_finite_or_ends_first(tmp_path, inputs, start, end):
    with pytest.raises(WanAnimateError, match="Start|End"):
        new_job(tmp_path / "jobs", "animate", *inputs, start=start, end=end)
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def _age(job, seconds_ago: float) -> None:
    then = time.time() - seconds_ago
    os.utime(job.folder, (then, then))


def test_cleanup_removes_old_jobs_then_least_recently_used_down_to_the_size(tmp_path, inputs):
    root = tmp_path / "jobs"
    jobs = [new_job(root, "animate", *inputs) for _ in range(5)]
    for age, job in zip((7200, 400, 300, 200, 100), jobs):
        _age(job, age)
    (root / "not-a-job").mkdir()
    sizes = [folder_bytes(job.folder) for job in jobs]
    report = clean_jobs(root, max_age_seconds=3600, max_bytes=sum(sizes[3:]) + min(sizes) // 2)
    # The 2-hour-old job goes by age; then the least recently used until two jobs are left.
    assert report.removed == [jobs[0].id, jobs[1].id, jobs[2].id]
    assert (report.freed_bytes, report.kept_bytes, report.kept_jobs) == (sum(sizes[:3]), sum(sizes[3:]), 2)
    assert sorted(path.name for path in root.iterdir()) == sorted([jobs[3].id, jobs[4].id, "not-a-job"])


def test_cleanup_keeps_jobs_in_use_and_discards_failed_extractions(tmp_path, inputs):
    store = JobStore(tmp_path / "jobs", max_age_seconds=60, max_bytes=0)
    running = store.new("animate", *inputs)
    _age(running, 3600)
    with store.use(running):
        assert store.clean().removed == []  # too old and over the size limit, but in use
        assert running.folder.exists()
    assert store.clean().removed == [running.id]

    failed = store.new("replace", *inputs)
    with pytest.raises(WanAnimateError, match="No person"):
        with store.use(failed, discard_on_failure=True):
            raise WanAnimateError("No person was found in the driving video.")
    assert not failed.folder.exists() and store.in_use() == set()


def test_cleanup_keeps_the_folder_bounded_over_30_jobs_with_failures(tmp_path, inputs):
    one_job = folder_bytes(new_job(tmp_path / "measure", "animate", *inputs).folder) + 4096  # + its result
    limit = 3 * one_job
    store = JobStore(tmp_path / "jobs", max_age_seconds=None, max_bytes=limit)
    sizes = []
    for index in range(30):
        job = store.new("animate", *inputs)
        try:
            with store.use(job, discard_on_failure=True):
                if index % 3 == 0:
                    raise WanAnimateError("No face was found in the driving video.")
                (job.prepared_dir).mkdir()
        except WanAnimateError:
            assert not job.folder.exists()
            continue
        with store.use(job), job.new_result() as result:
            result.video.write_bytes(os.urandom(2048))
            result.side_by_side.write_bytes(os.urandom(2048))
        store.clean()
        sizes.append(folder_bytes(store.root))
    assert len(sizes) == 20 and max(sizes) <= limit
    assert len(list(store.root.iterdir())) == 3


def test_cleanup_a_job_keeps_one_result_and_a_failed_generation_keeps_the_last(tmp_path, inputs):
    job = new_job(tmp_path, "animate", *inputs)
    with job.new_result() as first:
        first.video.write_bytes(b"first")
        first.side_by_side.write_bytes(b"first")
    with pytest.raises(RuntimeError):
        with job.new_result() as failed:
            failed.video.write_bytes(b"partial")
            raise RuntimeError("out of memory")
    assert first.video.exists() and not failed.video.exists()
    with job.new_result() as second:
        second.video.write_bytes(b"second")
        second.side_by_side.write_bytes(b"second")
    assert second.video.exists() and second.side_by_side.exists()
    assert not first.video.exists() and not first.side_by_side.exists()
    with job.new_result(keep=2) as third:
        third.video.write_bytes(b"third")
    assert second.video.exists() and third.video.exists()


def test_cleanup_cleaner_runs_at_start_and_on_a_timer_and_survives_a_failing_pass():
    calls = []
    third_pass = threading.Event()

    def clean():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError("the disk went away for a moment")
        if len(calls) == 3:
            third_pass.set()

    cleaner = Cleaner(clean, interval_seconds=0.01).start()
    try:
        assert third_pass.wait(timeout=30)
    finally:
        cleaner.stop(timeout=30)

    once = Cleaner(lambda: calls.append("start"), interval_seconds=3600).start()
    once.stop(timeout=30)
    assert calls[-1] == "start"  # the first pass runs at once, before the first wait
