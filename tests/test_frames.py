"""Decoding once on a worker thread, and resizing batches where they are (`wan_animate.preprocess.frames`)."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch

from tests.media import write_test_video
from wan_animate.errors import WanAnimateError
from wan_animate.preprocess.frames import (
    _torch_letterbox,
    _torch_resize,
    decode_batches,
    fit_within,
    letterbox_frames,
    prefetch,
    resize_frames,
)
from wan_animate.preprocess.sizing import letterbox, resize_frame
from wan_animate.video import iter_video


def test_prefetch_yields_everything_in_order_from_another_thread():
    threads = []

    def numbers():
        for number in range(50):
            threads.append(threading.current_thread())
            yield number

    assert list(prefetch(numbers(), depth=4)) == list(range(50))
    assert threading.current_thread() not in threads


def test_prefetch_raises_the_workers_error_in_the_caller():
    def failing():
        yield 1
        raise WanAnimateError("the clip is too long")

    items = prefetch(failing(), depth=2)
    assert next(items) == 1
    with pytest.raises(WanAnimateError, match="too long"):
        next(items)


def test_prefetch_stops_the_worker_and_closes_the_source_when_the_caller_stops():
    closed = threading.Event()

    def endless():
        try:
            number = 0
            while True:
                yield number
                number += 1
        finally:
            closed.set()

    items = prefetch(endless(), depth=3)
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    items.close()  # what a for loop that breaks, or an error in the caller, does
    assert closed.is_set()
    assert not any(thread.name == "wan-animate-decode" for thread in threading.enumerate())


def test_decode_batches_are_the_decoded_frames_in_batches(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (11, 32, 48, 3), dtype=np.uint8)
    video = write_test_video(tmp_path / "clip.mp4", frames, 30.0)
    expected = np.stack(list(iter_video(video, fps=15.0, size=(16, 24))))
    batches = list(decode_batches(video, batch=4, device="cpu", size=(16, 24), fps=15.0))
    assert [len(batch) for batch in batches] == [4, 1]  # 11 frames at 30 fps are 5 at 15 fps
    assert all(batch.dtype == torch.uint8 and batch.device.type == "cpu" for batch in batches)
    assert np.array_equal(torch.cat(batches).numpy(), expected)


def test_on_the_cpu_batches_are_resized_exactly_as_single_frames():
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 30, 50, 3), dtype=np.uint8))
    for size, interpolation in [((12, 20), "auto"), ((45, 75), "auto"), ((12, 20), "bilinear")]:
        resized = resize_frames(frames, size, interpolation)
        expected = np.stack([resize_frame(frame, size, interpolation) for frame in frames.numpy()])
        assert np.array_equal(resized.numpy(), expected)
    boxed = letterbox_frames(frames, (40, 40), "auto")
    assert np.array_equal(boxed.numpy(), np.stack([letterbox(frame, (40, 40), "auto") for frame in frames.numpy()]))
    assert resize_frames(frames, (30, 50)) is frames


def test_the_gpu_resize_matches_opencv():
    # The torch path, run here on the CPU: bilinear as INTER_LINEAR, and area as INTER_AREA for a whole factor.
    frames = np.random.default_rng(2).integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    enlarged = _torch_resize(torch.from_numpy(frames), (36, 60), "bilinear").numpy()
    halved = _torch_resize(torch.from_numpy(frames), (12, 20), "auto").numpy()
    for index, frame in enumerate(frames):
        linear = cv2.resize(frame, (60, 36), interpolation=cv2.INTER_LINEAR)
        area = cv2.resize(frame, (20, 12), interpolation=cv2.INTER_AREA)
        assert np.abs(enlarged[index].astype(int) - linear).max() <= 1
        assert np.abs(halved[index].astype(int) - area).max() <= 1
    assert halved.dtype == np.uint8 and halved.shape == (2, 12, 20, 3)


def test_the_gpu_letterbox_pads_like_the_cpu_one():
    frames = np.full((2, 10, 40, 3), 200, np.uint8)
    boxed = _torch_letterbox(torch.from_numpy(frames), (40, 80), "bilinear").numpy()
    expected = letterbox(frames[0], (40, 80))  # fitted to 20 x 80, 10 rows of black above and below
    assert np.array_equal(boxed[1], expected)
    assert (boxed[:, :10] == 0).all() and (boxed[:, 10:30] == 200).all() and (boxed[:, 30:] == 0).all()


def test_fit_within_scales_the_longer_side_down_only():
    assert fit_within((1080, 1920), 1280) == (720, 1280)
    assert fit_within((2160, 3840), 1920) == (1080, 1920)
    assert fit_within((480, 640), 1280) == (480, 640)
