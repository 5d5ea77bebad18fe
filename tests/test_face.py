"""Contract "Face video": the face box rule, the fallback and smoothing fix, and the 512 x 512 crops."""

import numpy as np
import pytest

from wan_animate.preprocess.face import crop_faces, face_box, face_found, smooth_boxes, track_face_boxes


def _landmarks(x1, y1, x2, y2, score=1.0) -> np.ndarray:
    """68 landmarks spanning exactly (x1, y1)-(x2, y2): the corners plus points inside."""
    points = np.zeros((68, 3))
    points[:, 0] = np.linspace(x1, x2, 68)
    points[:, 1] = np.linspace(y2, y1, 68)
    points[:, 2] = score
    return points


def test_face_box_square():
    # w = h = 100; new side = sqrt(1.3) * 100 = 114.0175; dw = 7.0088; dh = 14.0175 / 4 = 3.5044.
    # x1 = 100 - 7.0088 = 92.99 -> 92; x2 = 207.0088 -> 207; y1 = 200 - 3 * 3.5044 = 189.49 -> 189;
    # y2 = 300 + 3.5044 = 303.50 -> 303.
    box = face_box(_landmarks(100, 200, 200, 300)[:, :2], (1000, 1000))
    assert box.tolist() == [92, 189, 207, 303]
    assert np.issubdtype(box.dtype, np.integer)


def test_face_box_keeps_aspect():
    # w = 80, h = 40: new_w = 91.2140, dw = 5.6070 -> x1 = 44.39 -> 44, x2 = 135.61 -> 135;
    # new_h = 45.6070, dh = 1.4018 -> y1 = 60 - 4.2053 = 55.79 -> 55, y2 = 101.40 -> 101.
    assert face_box(_landmarks(50, 60, 130, 100), (1000, 1000)).tolist() == [44, 55, 135, 101]


def test_face_box_ignores_scores():
    assert face_box(_landmarks(50, 60, 130, 100, score=0.0), (1000, 1000)).tolist() == [44, 55, 135, 101]


def test_face_box_clamped_to_image():
    # Image 95 wide, 90 high: every side of the grown box falls outside and is clamped.
    assert face_box(_landmarks(2, 5, 100, 100)[:, :2], (90, 95)).tolist() == [0, 0, 95, 90]
    # Only the top clamps: y1 = 10 - 3 * 3.5044 < 0.
    assert face_box(_landmarks(100, 10, 200, 110), (1000, 1000)).tolist() == [92, 0, 207, 113]


def test_face_found_counts_confident_landmarks():
    face = np.stack([_landmarks(0, 0, 10, 10, 0.9), _landmarks(0, 0, 10, 10, 0.1)])
    assert face_found(face).tolist() == [True, False]
    half = _landmarks(0, 0, 10, 10, 0.1)
    half[:34, 2] = 0.3
    assert face_found(half[None]).tolist() == [True]
    assert face_found(half[None], min_landmarks=35).tolist() == [False]
    assert face_found(half[None], min_score=0.31).tolist() == [False]


def test_track_reuses_last_good_box():
    a = _landmarks(100, 200, 200, 300)
    b = _landmarks(50, 60, 130, 100)
    missing = _landmarks(0, 0, 900, 900, score=0.05)  # garbage: a crop from it would be useless
    face = np.stack([missing, a, missing, b, missing])
    boxes, found = track_face_boxes(face, (1000, 1000), smoothing=0)
    assert found.tolist() == [False, True, False, True, False]
    box_a, box_b = [92, 189, 207, 303], [44, 55, 135, 101]
    # Before the first good frame: the first good box; after a good frame: the last good box.
    assert boxes.tolist() == [box_a, box_a, box_a, box_b, box_b]


def test_track_without_any_face():
    face = np.stack([_landmarks(0, 0, 900, 900, score=0.0)] * 3)
    boxes, found = track_face_boxes(face, (480, 640))
    assert not found.any()
    assert boxes.tolist() == [[0, 0, 640, 480]] * 3


def test_track_degenerate_box_is_not_a_face():
    point = _landmarks(300, 300, 300, 300)  # all landmarks on one pixel
    face = np.stack([_landmarks(100, 200, 200, 300), point])
    boxes, found = track_face_boxes(face, (1000, 1000), smoothing=0)
    assert found.tolist() == [True, False]
    assert boxes[1].tolist() == [92, 189, 207, 303]


def test_smooth_boxes_centred_moving_average():
    boxes = np.array([[0, 0, 10, 10], [3, 3, 13, 13], [6, 6, 16, 16], [30, 30, 40, 40]], dtype=float)
    smoothed = smooth_boxes(boxes, 1)
    # Window of 3, shrinking at the ends: (0+3)/2, (0+3+6)/3, (3+6+30)/3, (6+30)/2.
    np.testing.assert_allclose(smoothed[:, 0], [1.5, 3.0, 13.0, 18.0])
    np.testing.assert_allclose(smoothed[:, 2], [11.5, 13.0, 23.0, 28.0])
    np.testing.assert_array_equal(smooth_boxes(boxes, 0), boxes)


def test_track_smoothing_reduces_jitter():
    # The face jitters +-6 px left/right every frame.
    face = np.stack([_landmarks(100 + 6 * (-1) ** t, 200, 200 + 6 * (-1) ** t, 300) for t in range(10)])
    raw, _ = track_face_boxes(face, (1000, 1000), smoothing=0)
    smooth, found = track_face_boxes(face, (1000, 1000), smoothing=2)
    assert found.all()
    assert np.ptp(raw[:, 0]) == 12
    assert np.ptp(smooth[2:-2, 0]) <= 3  # 5-frame windows: 3 of one sign and 2 of the other
    # Inside the image and still around the face.
    assert (smooth[:, 0] >= 0).all() and (smooth[:, 2] <= 1000).all()
    assert (smooth[:, 0] < 100).all() and (smooth[:, 2] > 200).all()


def test_track_smoothing_window_at_the_start():
    # Frame 0 (found) averaged with frames 1 and 2 (missing, so they repeat frame 0's box... and frame 3).
    a = _landmarks(100, 200, 200, 300)
    b = _landmarks(130, 200, 230, 300)  # 30 px to the right: box [122, 189, 237, 303]
    face = np.stack([a, a, b, b])
    boxes, _ = track_face_boxes(face, (1000, 1000), smoothing=1)
    # Frame 1: mean of x1 over frames 0..2 = (92.99 * 2 + 122.99) / 3 = 102.99 -> 102.
    assert boxes[1, 0] == 102
    # Frame 0: mean of frames 0..1 = 92.99 -> 92.
    assert boxes[0, 0] == 92


def test_crop_faces_stretches_to_512():
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[50:100, 100:150] = (255, 0, 0)  # left half of the box red
    frame[50:100, 150:200] = (0, 255, 0)  # right half green
    crops = crop_faces(frame[None], np.array([[100, 50, 200, 100]]))
    assert crops.shape == (1, 512, 512, 3) and crops.dtype == np.uint8
    # A 100 x 50 box fills the whole square (aspect not kept).
    assert tuple(crops[0, 10, 100]) == (255, 0, 0)
    assert tuple(crops[0, 500, 100]) == (255, 0, 0)
    assert tuple(crops[0, 256, 400]) == (0, 255, 0)


def test_crop_faces_size_and_degenerate_box():
    frames = np.full((2, 64, 64, 3), 9, np.uint8)
    crops = crop_faces(frames, np.array([[10, 10, 10, 10], [60, 60, 64, 64]]), size=32)
    assert crops.shape == (2, 32, 32, 3)
    assert (crops == 9).all()


def test_crop_faces_needs_one_box_per_frame():
    with pytest.raises(ValueError):
        crop_faces(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((1, 4), int))
