"""Videos encoded on worker threads (`wan_animate.preprocess.writers.VideoWriters`)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.media import counter_frames, frame_index, video_facts
from wan_animate.preprocess.writers import VideoWriters
from wan_animate.video import read_video


def test_videos_are_written_on_worker_threads_and_returned_by_name(tmp_path):
    frames = counter_frames(6, 32, 48)
    threads = []

    def drawn():  # frames made while they are encoded, as the skeleton is drawn
        for frame in frames:
            threads.append(threading.current_thread())
            yield frame

    reports = []
    with VideoWriters(tmp_path / "encoding", fps=30.0) as writers:
        writers.start("a.mp4", drawn())
        writers.start("b.mp4", frames[:3])
        assert len(writers) == 2
        written = writers.wait(lambda *report: reports.append(report))
        kept = {name: path.rename(tmp_path / name) for name, path in written.items()}
    assert threading.current_thread() not in threads
    assert reports == [(1, 2, "Writing videos"), (2, 2, "Writing videos")]
    assert video_facts(kept["a.mp4"])["frames"] == 6 and video_facts(kept["b.mp4"])["frames"] == 3
    decoded = read_video(kept["a.mp4"], fps=None, max_seconds=None).frames
    assert [frame_index(frame) for frame in decoded] == list(range(6))
    assert not (tmp_path / "encoding").exists()  # the scratch folder goes with the block


def test_a_writers_error_is_raised_by_wait(tmp_path):
    with pytest.raises(ValueError, match="even frame sides"):
        with VideoWriters(tmp_path / "encoding", fps=30.0) as writers:
            writers.start("odd.mp4", np.zeros((2, 31, 48, 3), np.uint8))
            writers.wait()
    assert not (tmp_path / "encoding").exists()


def test_an_error_elsewhere_stops_unfinished_videos(tmp_path):
    started = threading.Event()

    def endless():  # only being stopped ends this video
        while True:
            started.set()
            yield np.zeros((16, 16, 3), np.uint8)

    with pytest.raises(RuntimeError, match="SAM2 failed"):
        with VideoWriters(tmp_path / "encoding", fps=30.0) as writers:
            writers.start("endless.mp4", endless())
            started.wait()
            raise RuntimeError("SAM2 failed")
    assert not (tmp_path / "encoding").exists()
    assert not any(thread.name.startswith("wan-animate-write") for thread in threading.enumerate())
