"""Contract "Skeleton video": widths, colours, thresholds and drawing rules, on hand-made keypoints."""

import numpy as np
import pytest

from wan_animate.preprocess.keypoints import WholeBodyPose
from wan_animate.preprocess.skeleton import (
    body_stroke_width,
    draw_skeleton,
    hand_stroke_width,
    hand_edge_color,
    render_skeleton_frames,
)

CANVAS_720P = (720, 1280)  # w = max(int(720 / 200) - 1, 1) = 2
CANVAS_480P = (480, 832)  # w = max(int(480 / 200) - 1, 1) = 1

# Hand edge i: HSV (i / 20, 1, 1) x 255 as floats, rounded by OpenCV (x.5 to even: 127.5 -> 128).
HAND_EDGE_RGB = [
    (255, 0, 0), (255, 77, 0), (255, 153, 0), (255, 229, 0), (204, 255, 0),
    (128, 255, 0), (51, 255, 0), (0, 255, 25), (0, 255, 102), (0, 255, 179),
    (0, 255, 255), (0, 178, 255), (0, 102, 255), (0, 25, 255), (51, 0, 255),
    (128, 0, 255), (204, 0, 255), (255, 0, 230), (255, 0, 153), (255, 0, 77),
]  # fmt: skip


def _pose(body=None, left_hand=None, right_hand=None, face=None) -> WholeBodyPose:
    """A one-frame pose: every point missing (score 0) except those given as {index: (x, y[, score])}."""

    def part(count, points):
        array = np.zeros((count, 3))
        for index, point in (points or {}).items():
            array[index] = (*point, 1.0) if len(point) == 2 else point
        return array

    return WholeBodyPose(
        body=part(20, body), left_hand=part(21, left_hand), right_hand=part(21, right_hand), face=part(68, face)
    )


def _colour(canvas, x, y):
    return tuple(int(v) for v in canvas[y, x])


def _colours(canvas):
    rgb = canvas.astype(np.int64)
    packed = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    return {(int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255) for v in packed}


@pytest.mark.parametrize(
    "size, body, hand",
    [(CANVAS_720P, 2, 1), (CANVAS_480P, 1, 1), ((1080, 1920), 4, 2), ((100, 100), 1, 1), ((399, 2000), 1, 1)],
)
def test_stroke_widths(size, body, hand):
    assert body_stroke_width(*size) == body
    assert hand_stroke_width(*size) == hand


@pytest.mark.parametrize("size, width", [(CANVAS_720P, 2), (CANVAS_480P, 1)])
def test_horizontal_limb(size, width):
    # Neck (point 2) -> RShoulder (point 3): limb (2, 3), colour (255, 0, 0) drawn at int(255 * 0.6) = 153.
    canvas = draw_skeleton(_pose(body={1: (100, 200), 2: (200, 200)}), size)
    assert canvas.shape == (*size, 3) and canvas.dtype == np.uint8
    assert _colour(canvas, 150, 200) == (153, 0, 0)
    # Thickness across the middle: the ellipse's minor half-axis is w, so 2w + 1 rows.
    column = canvas[:, 150]
    rows = np.flatnonzero(column.any(axis=1))
    assert rows.tolist() == list(range(200 - width, 200 + width + 1))
    # Points on top in their full colour: Neck (255, 85, 0), RShoulder (255, 170, 0).
    assert _colour(canvas, 100, 200) == (255, 85, 0)
    assert _colour(canvas, 200, 200) == (255, 170, 0)
    # The point circles have radius w.
    assert _colour(canvas, 100, 200 + width) == (255, 85, 0)
    assert _colour(canvas, 100, 200 + width + 1) == (0, 0, 0)
    # Only those three colours (and black) are present.
    assert _colours(canvas) == {(0, 0, 0), (153, 0, 0), (255, 85, 0), (255, 170, 0)}


def test_vertical_limb_width_and_colour():
    # LShoulder (6) -> LElbow (7): limb (6, 7), colour (170, 255, 0) -> (102, 153, 0).
    canvas = draw_skeleton(_pose(body={5: (300, 100), 6: (300, 200)}), CANVAS_720P)
    assert _colour(canvas, 300, 150) == (102, 153, 0)
    columns = np.flatnonzero(canvas[150].any(axis=1))
    assert columns.tolist() == [298, 299, 300, 301, 302]


def test_toe_colours():
    # LAnkle (14) -> LToe (19): limb colour (255, 0, 85) -> (153, 0, 51); LToe point (200, 200, 0).
    # RAnkle (11) -> RToe (20): limb colour (200, 200, 0) -> (120, 120, 0); RToe point (100, 100, 0).
    canvas = draw_skeleton(_pose(body={13: (400, 500), 18: (440, 500), 10: (200, 500), 19: (160, 500)}), CANVAS_720P)
    assert _colour(canvas, 420, 500) == (153, 0, 51)
    assert _colour(canvas, 440, 500) == (200, 200, 0)
    assert _colour(canvas, 180, 500) == (120, 120, 0)
    assert _colour(canvas, 160, 500) == (100, 100, 0)


def test_diagonal_limb_centre_and_coordinates_truncated():
    # Nose (1) -> REye (15), limb (1, 15) colour (85, 0, 255) -> (51, 0, 153); centre int((10.9 + 50.9) / 2) = 30.
    canvas = draw_skeleton(_pose(body={0: (10.9, 10.9), 14: (50.9, 50.9)}), CANVAS_720P)
    assert _colour(canvas, 30, 30) == (51, 0, 153)
    # Point circles at the truncated coordinates.
    assert _colour(canvas, 10, 10) == (255, 0, 0)  # Nose
    assert _colour(canvas, 50, 50) == (170, 0, 255)  # REye, the 15th colour


def test_points_below_threshold_are_not_drawn():
    canvas = draw_skeleton(_pose(body={1: (100, 200), 2: (200, 200, 0.49)}), CANVAS_720P)
    assert _colour(canvas, 150, 200) == (0, 0, 0)  # no limb
    assert _colour(canvas, 200, 200) == (0, 0, 0)  # no RShoulder circle
    assert _colour(canvas, 100, 200) == (255, 85, 0)  # Neck still drawn
    # Exactly 0.5 is drawn.
    canvas = draw_skeleton(_pose(body={1: (100, 200), 2: (200, 200, 0.5)}), CANVAS_720P)
    assert _colour(canvas, 150, 200) == (153, 0, 0)


def test_threshold_parameter():
    pose = _pose(body={1: (100, 200, 0.3), 2: (200, 200, 0.3)})
    assert not draw_skeleton(pose, CANVAS_720P).any()
    assert _colour(draw_skeleton(pose, CANVAS_720P, threshold=0.25), 150, 200) == (153, 0, 0)


def test_face_landmarks_are_not_drawn():
    face = {i: (300 + 3 * i, 300) for i in range(68)}
    assert not draw_skeleton(_pose(face=face), CANVAS_720P).any()


def test_nan_points_are_skipped():
    pose = _pose(body={1: (np.nan, 200), 2: (200, 200)})
    canvas = draw_skeleton(pose, CANVAS_720P)
    assert _colours(canvas) == {(0, 0, 0), (255, 170, 0)}


def _fan_hand(x0: int, y0: int, step: int = 20) -> dict:
    """A hand with the wrist at (x0, y0) and five straight fingers in the directions right, down-right, down,
    down-left, left; finger f's joints are at 1..4 steps."""
    directions = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0)]
    hand = {0: (x0, y0)}
    for finger, (dx, dy) in enumerate(directions):
        for joint in range(1, 5):
            hand[1 + 4 * finger + joint - 1] = (x0 + dx * step * joint, y0 + dy * step * joint)
    return hand


@pytest.mark.parametrize("side", ["left_hand", "right_hand"])
def test_hand_edge_colours(side):
    hand = _fan_hand(400, 300)
    canvas = draw_skeleton(_pose(**{side: hand}), CANVAS_720P)
    for index, (a, b) in enumerate([(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
                                    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18),
                                    (18, 19), (19, 20)]):  # fmt: skip
        middle_x = (hand[a][0] + hand[b][0]) // 2
        middle_y = (hand[a][1] + hand[b][1]) // 2
        assert _colour(canvas, middle_x, middle_y) == HAND_EDGE_RGB[index], f"edge {index}"
    # Points on top in blue.
    assert _colour(canvas, 400, 300) == (0, 0, 255)
    assert _colour(canvas, 480, 300) == (0, 0, 255)


def test_hand_edge_colour_matches_hsv_conversion():
    matplotlib_colors = pytest.importorskip("matplotlib.colors")
    for index in range(20):
        expected = matplotlib_colors.hsv_to_rgb([index / 20.0, 1.0, 1.0]) * 255
        np.testing.assert_array_equal(np.array(hand_edge_color(index)), expected)


def test_hand_line_is_thin_at_720p():
    # Hand width 1 at 720p: a horizontal edge is one pixel thick.
    canvas = draw_skeleton(_pose(left_hand={0: (100, 100), 1: (160, 100)}), CANVAS_720P)
    assert np.flatnonzero(canvas[:, 130].any(axis=1)).tolist() == [100]
    # Hand point circles have radius 1.
    assert _colour(canvas, 100, 101) == (0, 0, 255) and _colour(canvas, 100, 102) == (0, 0, 0)


def test_hand_points_need_pixel_coordinates_of_at_least_one():
    # x = 0.9 truncates to 0: neither the point nor its edge is drawn.
    canvas = draw_skeleton(_pose(right_hand={0: (0.9, 50), 1: (60, 50)}), CANVAS_720P)
    assert _colour(canvas, 30, 50) == (0, 0, 0)
    assert _colour(canvas, 0, 50) == (0, 0, 0)
    assert _colour(canvas, 60, 50) == (0, 0, 255)  # the other point is drawn
    # x = 1.0 is drawn, edge included.
    canvas = draw_skeleton(_pose(right_hand={0: (1.0, 50), 1: (60, 50)}), CANVAS_720P)
    assert _colour(canvas, 30, 50) == (255, 0, 0)
    assert _colour(canvas, 1, 50) == (0, 0, 255)


def test_hand_points_below_threshold():
    canvas = draw_skeleton(_pose(left_hand={0: (100, 100), 1: (160, 100, 0.49)}), CANVAS_720P)
    assert _colour(canvas, 130, 100) == (0, 0, 0)
    assert _colour(canvas, 160, 100) == (0, 0, 0)
    assert _colour(canvas, 100, 100) == (0, 0, 255)


def _standing_pose() -> WholeBodyPose:
    body = {
        0: (640, 100), 1: (640, 160), 2: (580, 160), 3: (560, 240), 4: (550, 320), 5: (700, 160), 6: (720, 240),
        7: (730, 320), 8: (600, 340), 9: (595, 460), 10: (590, 580), 11: (680, 340), 12: (685, 460),
        13: (690, 580), 14: (625, 85), 15: (655, 85), 16: (605, 95), 17: (675, 95), 18: (700, 620), 19: (580, 620),
    }  # fmt: skip
    return _pose(body=body, left_hand=_fan_hand(800, 340, 14), right_hand=_fan_hand(480, 340, 14))


def test_full_skeleton_colour_set_720p():
    canvas = draw_skeleton(_standing_pose(), CANVAS_720P)
    limbs = {  # the contract's limb colours x 0.6, truncated
        (153, 0, 0), (153, 51, 0), (153, 102, 0), (153, 153, 0), (102, 153, 0), (51, 153, 0), (0, 153, 0),
        (0, 153, 51), (0, 153, 102), (0, 153, 153), (0, 102, 153), (0, 51, 153), (0, 0, 153), (51, 0, 153),
        (102, 0, 153), (153, 0, 153), (153, 0, 102), (153, 0, 51), (120, 120, 0),
    }  # fmt: skip
    points = {
        (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
        (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
        (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (200, 200, 0), (100, 100, 0),
    }  # fmt: skip
    expected = {(0, 0, 0)} | limbs | points | set(HAND_EDGE_RGB) | {(0, 0, 255)}
    assert _colours(canvas) == expected


def test_render_frames():
    first = _standing_pose()
    second = first.scaled(0.5, 0.5)
    frames = render_skeleton_frames(WholeBodyPose.stack([first, second]), CANVAS_480P)
    assert frames.shape == (2, 480, 832, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0], draw_skeleton(first, CANVAS_480P))
    np.testing.assert_array_equal(frames[1], draw_skeleton(second, CANVAS_480P))
    assert not np.array_equal(frames[0], frames[1])


def test_draw_skeleton_takes_one_frame():
    pose = _standing_pose()
    with pytest.raises(ValueError):
        draw_skeleton(WholeBodyPose.stack([pose]), CANVAS_720P)
