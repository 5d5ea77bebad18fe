"""Contract "Keypoints": person boxes (Apache-2.0 RT-DETRv2, person class only) and following one person."""

from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch

from wan_animate.demo.preprocess_models import build_tiny_detector
from wan_animate.errors import WanAnimateError
from wan_animate.preprocess.detect import (
    DETECTOR_FILES,
    PersonDetector,
    box_iou,
    detection_frames,
    detection_stride,
    follow_person,
    interpolate_boxes,
    link_tracks,
    track_person,
)

SURE, NEVER = 5.0, -20.0
"""Fixed class logits of the tiny detectors: sigmoid(5) = 0.993, sigmoid(-20) ~ 2e-9."""


@pytest.fixture(scope="module")
def person_detector_folder(tmp_path_factory) -> Path:
    """Sees a person in every query, and nothing else."""
    folder = tmp_path_factory.mktemp("person_detector")
    return build_tiny_detector(folder, class_logits={"person": SURE, "bicycle": NEVER, "car": NEVER})


@pytest.fixture(scope="module")
def vehicle_detector_folder(tmp_path_factory) -> Path:
    """Sees bicycles and cars everywhere, never a person."""
    folder = tmp_path_factory.mktemp("vehicle_detector")
    return build_tiny_detector(folder, class_logits={"person": NEVER, "bicycle": SURE, "car": SURE})


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size, dtype=np.uint8) for size in [(48, 80, 3), (90, 60, 3), (48, 80, 3)]]


# -- detector -----------------------------------------------------------------------------------------


def test_detect_returns_person_boxes_in_frame_pixels(person_detector_folder):
    detector = PersonDetector.from_pretrained(person_detector_folder, device="cpu")
    assert detector.device == "cpu" and detector.person_id == 0
    frames = _frames()
    detections = detector.detect(frames, score_threshold=0.5, batch_size=2)
    assert len(detections) == 3
    for boxes, frame in zip(detections, frames):
        height, width = frame.shape[:2]
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 5
        assert 1 <= len(boxes) <= 10  # at most one per query
        np.testing.assert_allclose(boxes[:, 4], 1 / (1 + np.exp(-SURE)), rtol=1e-4)
        assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= width).all()
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= height).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        overlap = box_iou(boxes, boxes) - np.eye(len(boxes))
        assert (overlap <= 0.7 + 1e-6).all()  # no person twice
    assert all(len(boxes) == 0 for boxes in detector.detect(frames, score_threshold=0.999))


def test_detect_scales_boxes_to_each_frame(person_detector_folder):
    """Plain grey frames of two sizes look the same at the model's 64 x 64: the same boxes, each frame's scale."""
    detector = PersonDetector.from_pretrained(person_detector_folder, device="cpu")
    frames = [np.full(size, 128, np.uint8) for size in [(48, 80, 3), (90, 60, 3), (48, 80, 3)]]
    detections = detector.detect(frames, batch_size=2)
    normalised = []
    for boxes, frame in zip(detections, frames):
        height, width = frame.shape[:2]
        relative = boxes[:, :4] / np.array([width, height, width, height], np.float32)
        normalised.append(relative[np.lexsort(relative.T[::-1])])
    np.testing.assert_allclose(normalised[1], normalised[0], atol=1e-4)
    np.testing.assert_allclose(normalised[2], normalised[0], atol=1e-4)


def test_detect_takes_a_tensor_batch_and_bf16_autocast_keeps_the_boxes(person_detector_folder, monkeypatch):
    detector = PersonDetector.from_pretrained(person_detector_folder, device="cpu")
    assert detector.autocast_dtype is None  # float32 on the CPU; bfloat16 autocast on a GPU
    frames = [frame[:48, :60] for frame in _frames()]
    reference = detector.detect(frames)
    from_tensor = detector.detect(torch.from_numpy(np.stack(frames)))  # as decoded batches come, on their device
    assert all(np.array_equal(a, b) for a, b in zip(reference, from_tensor))
    # The GPU's autocast, run here on the CPU: boxes come back as float32 and where float32 puts them.
    monkeypatch.setattr(detector, "autocast_dtype", torch.bfloat16)
    for fast, exact in zip(detector.detect(frames), reference):
        assert fast.dtype == np.float32 and len(fast) == len(exact)
        assert (box_iou(fast, exact).max(axis=1) > 0.9).all()


def test_detect_keeps_only_the_person_class(vehicle_detector_folder):
    detector = PersonDetector.from_pretrained(vehicle_detector_folder, device="cpu")
    frames = _frames()
    # The model does see objects with high scores, of other classes...
    inputs = detector.processor(images=frames[:1], return_tensors="pt")
    raw = detector.processor.post_process_object_detection(
        detector.model(**inputs), threshold=0.5, target_sizes=[frames[0].shape[:2]]
    )[0]
    assert len(raw["labels"]) > 0 and set(raw["labels"].tolist()) <= {1, 2}
    # ...and none of them is returned.
    detections = detector.detect(frames)
    assert [boxes.shape for boxes in detections] == [(0, 5)] * 3


def test_detector_from_hub_id_downloads_only_needed_files(person_detector_folder, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(person_detector_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    detector = PersonDetector.from_pretrained("someone/detector", device="cpu")
    assert calls == [("someone/detector", DETECTOR_FILES)]
    assert DETECTOR_FILES == ["config.json", "preprocessor_config.json", "*.safetensors"]
    assert len(detector.detect(_frames()[:1])[0]) >= 1


def test_detector_errors_the_user_can_fix(person_detector_folder, tmp_path):
    with pytest.raises(WanAnimateError, match="does not hold"):
        PersonDetector.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(WanAnimateError, match="neither a folder"):
        PersonDetector.from_pretrained(tmp_path / "no" / "such" / "folder", device="cpu")
    detector = PersonDetector.from_pretrained(person_detector_folder, device="cpu")
    detector.model.config.id2label = {0: "cat", 1: "dog"}
    with pytest.raises(WanAnimateError, match="no 'person' class"):
        PersonDetector(detector.model, detector.processor, "cpu")


# -- following one person -----------------------------------------------------------------------------


def _box(x: float, y: float, width: float, height: float, score: float = 0.9) -> list[float]:
    return [x, y, x + width, y + height, score]


def _detections(*frames: list[list[float]]) -> list[np.ndarray]:
    return [np.array(frame, dtype=np.float32).reshape(-1, 5) for frame in frames]


def test_box_iou_hand_made():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0, 1]])


def test_follows_the_largest_person_by_default():
    small = [_box(10, 10, 50, 100)]
    large = [_box(200, 10, 100, 200)]
    track = track_person(_detections(small + large, large + small, small + large))
    assert track.chosen_by == "largest" and track.persons_seen == 2
    np.testing.assert_array_equal(track.boxes, np.tile([200, 10, 300, 210], (3, 1)))


def test_a_point_chooses_the_person():
    small = _box(10, 10, 50, 100)
    large = _box(0, 0, 300, 200)  # contains the small box: the point picks the smallest box under it
    detections = _detections([small, large], [large, small], [small, large])
    track = track_person(detections, point=(1, 30.0, 50.0))
    assert track.chosen_by == "point" and track.persons_seen == 2
    np.testing.assert_array_equal(track.boxes, np.tile([10, 10, 60, 110], (3, 1)))
    track = track_person(detections, point=(2, 250.0, 150.0))
    np.testing.assert_array_equal(track.boxes, np.tile([0, 0, 300, 200], (3, 1)))


def test_point_on_no_person_or_outside_the_clip_is_a_user_error():
    detections = _detections([_box(10, 10, 50, 100)], [_box(12, 10, 50, 100)])
    with pytest.raises(WanAnimateError, match="No person was detected under the chosen point"):
        track_person(detections, point=(0, 500.0, 500.0))
    with pytest.raises(WanAnimateError, match="frame 5"):
        track_person(detections, point=(5, 20.0, 20.0))
    with pytest.raises(WanAnimateError, match="No person"):
        track_person(_detections([], []), point=(0, 20.0, 20.0))


def test_does_not_jump_to_a_crossing_person():
    """A (chosen, smaller) walks right, B (larger) walks left through A; the track stays on A."""
    frames, a_boxes = [], []
    for t in range(11):
        a = _box(20 * t, 40, 60, 120)
        b = _box(200 - 20 * t, 0, 100, 200)
        a_boxes.append(a[:4])
        frames.append([b, a] if t % 2 else [a, b])  # detector order must not matter
    track = track_person(_detections(*frames), point=(0, 30.0, 100.0))
    np.testing.assert_array_equal(track.boxes, np.array(a_boxes, dtype=np.float32))


def test_does_not_jump_to_a_larger_person_who_appears():
    """A is in all 10 frames; a larger B enters for the last 3: the main person is still A."""
    a = _box(100, 50, 80, 160)
    b = _box(300, 0, 120, 240)
    frames = [[a]] * 7 + [[b, a]] * 3
    track = track_person(_detections(*frames))
    assert track.persons_seen == 2
    np.testing.assert_array_equal(track.boxes, np.tile(a[:4], (10, 1)).astype(np.float32))


def test_lost_frames_are_nan_and_the_person_is_picked_up_again():
    a = [_box(100 + 5 * t, 50, 80, 160) for t in range(8)]
    b = _box(400, 0, 60, 120)
    frames = [[a[0], b], [a[1], b], [b], [b], [a[4], b], [a[5], b], [a[6], b], [a[7], b]]
    track = track_person(_detections(*frames))
    assert np.isnan(track.boxes[2:4]).all()
    for t in (0, 1, 4, 5, 6, 7):
        np.testing.assert_array_equal(track.boxes[t], a[t][:4])


def test_single_person_clip_uses_every_box_and_no_person_is_all_nan():
    # One person at a time: even a jump (a cut) keeps the box, as upstream's largest-box-per-frame does.
    frames = _detections([_box(0, 0, 50, 100)], [], [_box(300, 200, 50, 100)])
    track = track_person(frames)
    assert track.persons_seen == 1
    np.testing.assert_array_equal(track.boxes[[0, 2]], [[0, 0, 50, 100], [300, 200, 350, 300]])
    assert np.isnan(track.boxes[1]).all()
    empty = track_person(_detections([], [], []))
    assert empty.persons_seen == 0 and empty.boxes.shape == (3, 4) and np.isnan(empty.boxes).all()


def test_link_tracks_matches_by_overlap_not_order():
    frames = _detections([_box(0, 0, 10, 10), _box(100, 0, 10, 10)], [_box(101, 0, 10, 10), _box(1, 0, 10, 10)])
    assert link_tracks(frames) == [{0: 0, 1: 1}, {0: 1, 1: 0}]


# -- detecting on every N-th frame --------------------------------------------------------------------

NAN_BOX = [np.nan] * 4


def test_interpolated_boxes_are_exact_linear_steps_between_detected_frames():
    boxes = interpolate_boxes([0, 4, 6], np.array([[0, 0, 40, 80], [40, 8, 80, 88], [40, 8, 80, 88]]), 7)
    assert boxes.dtype == np.float32 and boxes.shape == (7, 4)
    expected = [
        [0, 0, 40, 80],
        [10, 2, 50, 82],  # a quarter of the way
        [20, 4, 60, 84],  # the midpoint
        [30, 6, 70, 86],
        [40, 8, 80, 88],
        [40, 8, 80, 88],  # between two equal boxes the box stays put
        [40, 8, 80, 88],
    ]
    np.testing.assert_array_equal(boxes, expected)


def test_interpolated_boxes_are_held_at_the_ends():
    boxes = interpolate_boxes([2, 4], np.array([[10, 10, 20, 20], [30, 10, 40, 20]]), 7)
    np.testing.assert_array_equal(boxes[:3], [[10, 10, 20, 20]] * 3)
    np.testing.assert_array_equal(boxes[3], [20, 10, 30, 20])
    np.testing.assert_array_equal(boxes[4:], [[30, 10, 40, 20]] * 3)
    # A single detected frame is held over the whole clip.
    np.testing.assert_array_equal(interpolate_boxes([3], np.array([[1, 2, 3, 4]]), 5), [[1, 2, 3, 4]] * 5)


def test_a_miss_on_a_detected_frame_leaves_the_gaps_on_both_sides_missing():
    found = [0, 0, 30, 60]
    boxes = interpolate_boxes([0, 3, 6, 9], np.array([found, NAN_BOX, found, [30, 0, 60, 60]]), 10)
    missing = np.isnan(boxes).any(axis=1)
    np.testing.assert_array_equal(np.flatnonzero(missing), [1, 2, 3, 4, 5])  # no box invented across the miss
    np.testing.assert_array_equal(boxes[[0, 6]], [found, found])
    np.testing.assert_array_equal(boxes[7:], [[10, 0, 40, 60], [20, 0, 50, 60], [30, 0, 60, 60]])
    # Missing on the first or last detected frame: not held either.
    edges = interpolate_boxes([1, 3], np.array([NAN_BOX, found]), 5)
    np.testing.assert_array_equal(np.isnan(edges).any(axis=1), [True, True, True, False, False])


def test_interpolate_boxes_refuses_inconsistent_frames():
    with pytest.raises(ValueError, match="2 detected frames but 1 boxes"):
        interpolate_boxes([0, 1], np.zeros((1, 4)), 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        interpolate_boxes([2, 1], np.zeros((2, 4)), 3)
    with pytest.raises(ValueError, match="inside the clip"):
        interpolate_boxes([0, 3], np.zeros((2, 4)), 3)


def test_detection_frames_take_the_stride_the_last_frame_and_extra_frames():
    assert detection_frames(10, 3) == [0, 3, 6, 9]
    assert detection_frames(11, 3) == [0, 3, 6, 9, 10]  # the last frame, though off the stride
    assert detection_frames(11, 3, extra={4, 9, 25}) == [0, 3, 4, 6, 9, 10]  # outside the clip: ignored
    assert detection_frames(4, 1) == [0, 1, 2, 3]
    assert detection_frames(1, 5) == [0]
    assert detection_frames(0, 5) == []


def test_detection_stride_every_frame_on_a_gpu_one_sixth_second_on_the_cpu():
    assert detection_stride(None, "cpu", 30.0) == 5
    assert detection_stride(None, "cpu", 60.0) == 10
    assert detection_stride(None, "cpu", 16.0) == 3
    assert detection_stride(None, "cpu", 2.0) == 1  # never 0
    assert detection_stride(None, "cuda", 30.0) == 1
    assert detection_stride(None, "cuda:1", 30.0) == 1
    assert detection_stride(3, "cuda", 30.0) == 3  # the caller's choice wins
    assert detection_stride(1, "cpu", 30.0) == 1
    with pytest.raises(WanAnimateError, match="1 \\(every frame\\) or more, not 0"):
        detection_stride(0, "cpu", 30.0)


def test_follow_person_tracks_over_detected_frames_and_fills_the_rest():
    """A walks right 30 px per detected frame (3 frames apart), B stands still and is larger."""
    frames = [0, 3, 6, 7]
    a_boxes = [_box(30 * step, 40, 60, 120) for step in (0, 1, 2)] + [_box(70, 40, 60, 120)]
    b = _box(300, 0, 100, 200)
    detections = _detections(*[[b, a] for a in a_boxes])
    track = follow_person(detections, frames, 8, point=(3, 50.0, 100.0))
    assert track.chosen_by == "point" and track.persons_seen == 2 and track.boxes.shape == (8, 4)
    x1 = [0, 10, 20, 30, 40, 50, 60, 70]  # detected 0, 30, 60, 70; linear in between
    np.testing.assert_allclose(track.boxes[:, 0], x1, atol=1e-4)
    np.testing.assert_array_equal(track.boxes[:, 1], 40)
    largest = follow_person(detections, frames, 8)
    np.testing.assert_array_equal(largest.boxes, np.tile(b[:4], (8, 1)))


def test_follow_person_errors_name_the_clips_frame():
    detections = _detections([_box(10, 10, 50, 100)], [_box(12, 10, 50, 100)], [_box(14, 10, 50, 100)])
    with pytest.raises(WanAnimateError, match="under the chosen point \\(500, 500\\) on frame 5\\."):
        follow_person(detections, [0, 5, 9], 10, point=(5, 500.0, 500.0))
    with pytest.raises(WanAnimateError, match="on frame 10, but the clip has 10 frames"):
        follow_person(detections, [0, 5, 9], 10, point=(10, 20.0, 20.0))
    with pytest.raises(ValueError, match="was not detected on"):
        follow_person(detections, [0, 5, 9], 10, point=(4, 20.0, 20.0))
