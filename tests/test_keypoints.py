"""Contract "Keypoints": the 133 -> body/hands/face split and the reuse of a missing frame's body."""

import numpy as np
import pytest

from wan_animate.preprocess.keypoints import (
    BODY_NAMES,
    BODY_POINT_COLORS,
    HAND_EDGES,
    LIMB_COLORS,
    LIMBS,
    LIMBS_0BASED,
    WholeBodyPose,
    fill_missing_bodies,
    split_wholebody,
)


def _wholebody(offset: float = 0.0) -> np.ndarray:
    """Point i of the 133 is (i + offset, 1000 + i, i / 200): every value tells where it came from."""
    index = np.arange(133, dtype=np.float64)
    return np.stack([index + offset, 1000 + index, index / 200], axis=-1)


def test_tables_match_contract():
    assert BODY_NAMES == (
        "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "RHip", "RKnee",
        "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LToe", "RToe",
    )  # fmt: skip
    assert len(LIMBS) == 19 and len(LIMB_COLORS) == 19
    assert LIMBS[0] == (2, 3) and LIMB_COLORS[0] == (255, 0, 0)
    assert LIMBS[12] == (2, 1) and LIMB_COLORS[12] == (0, 0, 255)
    assert LIMBS[-1] == (11, 20) and LIMB_COLORS[-1] == (200, 200, 0)
    assert LIMBS_0BASED[-1] == (10, 19)
    assert len(BODY_POINT_COLORS) == 20
    assert BODY_POINT_COLORS[17] == (255, 0, 85) and BODY_POINT_COLORS[18:] == ((200, 200, 0), (100, 100, 0))
    assert len(HAND_EDGES) == 20 and HAND_EDGES[4] == (0, 5) and HAND_EDGES[-1] == (19, 20)


def test_split_body_order_and_means():
    pose = split_wholebody(_wholebody())
    # The contract's COCO-WholeBody sources; pairs are means.
    sources = [0, (5, 6), 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, (17, 18), (20, 21)]
    for position, source in enumerate(sources):
        mean = np.mean(source)
        np.testing.assert_allclose(pose.body[position], [mean, 1000 + mean, mean / 200], err_msg=BODY_NAMES[position])
    # Neck's score is the shoulders' mean score too.
    assert pose.body[1, 2] == pytest.approx(5.5 / 200)


def test_split_hands_and_face():
    pose = split_wholebody(_wholebody())
    assert pose.left_hand.shape == (21, 3) and pose.right_hand.shape == (21, 3) and pose.face.shape == (68, 3)
    assert pose.left_hand[0, 0] == 91 and pose.left_hand[-1, 0] == 111
    assert pose.right_hand[0, 0] == 112 and pose.right_hand[-1, 0] == 132
    assert pose.face[0, 0] == 23 and pose.face[-1, 0] == 90


def test_split_keeps_leading_dims():
    clip = np.stack([_wholebody(0), _wholebody(1000)])
    pose = split_wholebody(clip)
    assert pose.body.shape == (2, 20, 3) and pose.face.shape == (2, 68, 3)
    assert pose.leading_shape == (2,)
    second = pose.frame(1)
    assert second.leading_shape == ()
    assert second.body[0, 0] == 1000 and second.left_hand[0, 0] == 1091


def test_split_rejects_wrong_shape():
    with pytest.raises(ValueError):
        split_wholebody(np.zeros((17, 3)))


def test_stack_and_map_parts():
    one = split_wholebody(_wholebody())
    clip = WholeBodyPose.stack([one, one.scaled(2, 2)])
    assert clip.leading_shape == (2,) and clip.right_hand.shape == (2, 21, 3)
    assert clip.frame(1).body[2, 0] == 12  # RShoulder x = 6, doubled
    shifted = clip.map_parts(lambda points: points + 1)
    assert shifted.face[0, 0].tolist() == [24, 1024, 1 + 23 / 200]
    with pytest.raises(ValueError):  # shapes are checked: a body of 1 point is refused
        clip.map_parts(lambda points: points[..., :1, :])


def test_pose_shapes_checked():
    with pytest.raises(ValueError):
        WholeBodyPose(
            body=np.zeros((20, 3)), left_hand=np.zeros((21, 3)), right_hand=np.zeros((21, 3)), face=np.zeros((60, 3))
        )


def test_scaled_maps_xy_keeps_scores():
    pose = split_wholebody(_wholebody())
    moved = pose.scaled(2.0, 0.5, offset_x=10, offset_y=-1)
    assert moved.body[0].tolist() == [10.0, 499.0, 0.0]  # Nose (0, 1000, 0)
    assert moved.face[0].tolist() == [56.0, 510.5, 23 / 200]  # (23, 1023)
    assert pose.body[0, 0] == 0  # the original is untouched


def _body(x: float, score: float = 0.9) -> np.ndarray:
    body = np.zeros((20, 3))
    body[:, 0] = x + np.arange(20)
    body[:, 1] = 100 + np.arange(20)
    body[:, 2] = score
    return body


def test_missing_body_reuses_previous_frame():
    frames = np.stack([_body(10), _body(20, score=0.1), _body(30), _body(40, score=0.0), _body(50, score=0.2)])
    filled = fill_missing_bodies(frames)
    np.testing.assert_array_equal(filled[0], frames[0])
    np.testing.assert_array_equal(filled[1], frames[0])  # all scores < 0.5 -> previous
    np.testing.assert_array_equal(filled[2], frames[2])
    np.testing.assert_array_equal(filled[3], frames[2])
    np.testing.assert_array_equal(filled[4], frames[2])  # a run repeats the last real body
    np.testing.assert_array_equal(frames[1], _body(20, score=0.1))  # input not modified


def test_negative_coordinates_count_as_missing():
    lost = _body(0)
    lost[:, 0] = -1.0  # upstream's "no detection" marker, whatever the score
    filled = fill_missing_bodies(np.stack([_body(10), lost]))
    np.testing.assert_array_equal(filled[1], _body(10))


def test_one_found_point_keeps_the_frame():
    weak = _body(20, score=0.1)
    weak[7, 2] = 0.5  # exactly the threshold counts as found
    filled = fill_missing_bodies(np.stack([_body(10), weak]))
    np.testing.assert_array_equal(filled[1], weak)


def test_leading_missing_frames_stay():
    frames = np.stack([_body(10, score=0.0), _body(20)])
    filled = fill_missing_bodies(frames)
    np.testing.assert_array_equal(filled, frames)


def test_threshold_is_a_parameter():
    frames = np.stack([_body(10), _body(20, score=0.3)])
    np.testing.assert_array_equal(fill_missing_bodies(frames, threshold=0.25)[1], frames[1])
    np.testing.assert_array_equal(fill_missing_bodies(frames, threshold=0.5)[1], frames[0])
