"""Contract "Pose retargeting": bone ratios from the first frames, feet/neck anchors, hands and face."""

import numpy as np
import pytest

from wan_animate.errors import WanAnimateError
from wan_animate.preprocess.keypoints import BODY_INDEX, LIMBS_0BASED, WholeBodyPose
from wan_animate.preprocess.retarget import body_scale, bone_ratios, retarget_poses, uses_feet_anchor

I = BODY_INDEX

# A front-facing standing driver, in driving-frame pixels.
DRIVER = {
    "Nose": (640, 100), "Neck": (640, 160), "RShoulder": (580, 160), "RElbow": (560, 240), "RWrist": (550, 320),
    "LShoulder": (700, 160), "LElbow": (720, 240), "LWrist": (730, 320), "RHip": (600, 340), "RKnee": (600, 460),
    "RAnkle": (600, 580), "LHip": (680, 340), "LKnee": (680, 460), "LAnkle": (680, 580), "REye": (625, 85),
    "LEye": (655, 85), "REar": (605, 95), "LEar": (675, 95), "LToe": (700, 600), "RToe": (580, 600),
}  # fmt: skip


def _body(points: dict, score: float = 0.9) -> np.ndarray:
    body = np.zeros((20, 3))
    for name, (x, y) in points.items():
        body[I[name]] = (x, y, score)
    return body


def _pose(body: np.ndarray, hand_offset=(0.0, 10.0), face_offset=(0.0, 0.0)) -> WholeBodyPose:
    """Hands hang below their wrists; the face surrounds the nose."""
    offsets = np.stack([np.arange(21) % 5 - 2.0, np.arange(21) * 2.0], axis=-1) + hand_offset
    left = np.concatenate([body[I["LWrist"], :2] + offsets, np.full((21, 1), 0.8)], axis=-1)
    right = np.concatenate([body[I["RWrist"], :2] + offsets, np.full((21, 1), 0.7)], axis=-1)
    face_offsets = np.stack([np.linspace(-20, 20, 68), np.linspace(-25, 25, 68)], axis=-1) + face_offset
    face = np.concatenate([body[I["Nose"], :2] + face_offsets, np.full((68, 1), 0.6)], axis=-1)
    return WholeBodyPose(body=body, left_hand=left, right_hand=right, face=face)


def _clip(*poses: WholeBodyPose) -> WholeBodyPose:
    return WholeBodyPose.stack(poses)


def _long_legged_reference(shift=(100.0, 50.0)) -> np.ndarray:
    """The driver with legs and feet twice as long, moved by ``shift`` (the character's own canvas)."""
    points = dict(DRIVER)
    for hip, knee, ankle, toe in (("RHip", "RKnee", "RAnkle", "RToe"), ("LHip", "LKnee", "LAnkle", "LToe")):
        d = {name: np.array(DRIVER[name], float) for name in (hip, knee, ankle, toe)}
        points[knee] = d[hip] + 2 * (d[knee] - d[hip])
        points[ankle] = points[knee] + 2 * (d[ankle] - d[knee])
        points[toe] = points[ankle] + 2 * (d[toe] - d[ankle])
    return _body({name: np.array(xy, float) + shift for name, xy in points.items()})


def _bone(body: np.ndarray, a: str, b: str) -> float:
    return float(np.hypot(*(body[I[a], :2] - body[I[b], :2])))


def test_bone_ratios_legs_twice_as_long():
    reference, driver = _long_legged_reference(), _body(DRIVER)
    scale = body_scale(reference, driver)
    # Nose to the ankles' midpoint (both straight below it): driver y 100 -> 580, 480 px; the reference's
    # ankles are 240 + 240 below its hips instead of 120 + 120, so 480 + 240 = 720 px.
    assert scale == pytest.approx(720 / 480)
    ratios = bone_ratios(reference, driver, scale)
    legs = {(I["RHip"], I["RKnee"]), (I["RKnee"], I["RAnkle"]), (I["LHip"], I["LKnee"]), (I["LKnee"], I["LAnkle"]),
            (I["LAnkle"], I["LToe"]), (I["RAnkle"], I["RToe"])}  # fmt: skip
    expected = [2.0 if limb in legs else 1.0 for limb in LIMBS_0BASED]
    np.testing.assert_allclose(ratios, expected)


def test_first_frame_becomes_the_reference_feet_anchor():
    reference = _long_legged_reference()
    driving = _clip(_pose(_body(DRIVER)))
    assert uses_feet_anchor(reference, driving.body[0])
    out = retarget_poses(_pose(reference), driving)
    # Every bone has the reference's length and (here) direction, and the feet are put on the reference's.
    np.testing.assert_allclose(out.body[0, :, :2], reference[:, :2], atol=1e-9)
    np.testing.assert_array_equal(out.body[0, :, 2], driving.body[0, :, 2])  # scores are the driver's


def test_same_ratios_for_all_frames_and_motion_scaled():
    reference = _long_legged_reference()
    moved = _body({name: (x + 10, y) for name, (x, y) in DRIVER.items()})  # the driver steps 10 px right
    moved[I["RWrist"], :2] = moved[I["RElbow"], :2] + (-80, 0)  # and raises the right forearm sideways
    moved[I["RKnee"], :2] = moved[I["RHip"], :2] + (30, 110)  # and bends a leg
    out = retarget_poses(_pose(reference), _clip(_pose(_body(DRIVER)), _pose(moved)))
    scale = 720 / 480
    # The neck moves with the driver, scaled by the body scale.
    np.testing.assert_allclose(out.body[1, I["Neck"], :2] - out.body[0, I["Neck"], :2], (10 * scale, 0))
    # Bone vectors of frame 1 are the driver's times the first frame's ratios (1 for arms, 2 for legs).
    forearm = out.body[1, I["RWrist"], :2] - out.body[1, I["RElbow"], :2]
    np.testing.assert_allclose(forearm, (-80, 0))
    thigh = out.body[1, I["RKnee"], :2] - out.body[1, I["RHip"], :2]
    np.testing.assert_allclose(thigh, (60, 220))
    shin = out.body[1, I["RAnkle"], :2] - out.body[1, I["RKnee"], :2]
    np.testing.assert_allclose(shin, 2 * (moved[I["RAnkle"], :2] - moved[I["RKnee"], :2]))


def _spread_legs_reference() -> np.ndarray:
    """Same bone lengths as the driver, but legs spread: a different ground height for the same neck."""
    points = dict(DRIVER)
    for side, sign in (("R", -1), ("L", 1)):
        hip = np.array(DRIVER[f"{side}Hip"], float)
        points[f"{side}Knee"] = hip + (sign * 72, 96)  # 120 px, as the driver's thigh
        points[f"{side}Ankle"] = points[f"{side}Knee"] + (sign * 72, 96)
        points[f"{side}Toe"] = points[f"{side}Ankle"] + (sign * 20, 20)
    return _body(points)


def test_feet_anchor_puts_the_feet_on_the_reference_ground():
    reference = _spread_legs_reference()
    out = retarget_poses(_pose(reference), _clip(_pose(_body(DRIVER))))
    # Ground = hips' mid x and the lower ankle's y.
    ground = lambda b: (b[[I["RHip"], I["LHip"]], 0].mean(), b[[I["RAnkle"], I["LAnkle"]], 1].max())  # noqa: E731
    np.testing.assert_allclose(ground(out.body[0]), ground(reference))
    # The legs keep the driver's straight (taller) direction, so the neck stands higher than the reference's:
    # the hips are 240 px above the ground instead of 192.
    np.testing.assert_allclose(out.body[0, I["Neck"], 1], reference[I["Neck"], 1] - 48)


def test_neck_anchor_without_ankles():
    reference = _spread_legs_reference()
    reference[I["LAnkle"], 2] = 0.3  # below 0.4: the feet anchor is not used
    assert not uses_feet_anchor(reference, _body(DRIVER))
    out = retarget_poses(_pose(reference), _clip(_pose(_body(DRIVER))))
    np.testing.assert_allclose(out.body[0, I["Neck"], :2], reference[I["Neck"], :2])


def test_neck_anchor_when_the_driver_lacks_hips():
    driver = _body(DRIVER)
    driver[I["RHip"], 2] = 0.1
    reference = _long_legged_reference()
    assert not uses_feet_anchor(reference, driver)
    out = retarget_poses(_pose(reference), _clip(_pose(driver)))
    np.testing.assert_allclose(out.body[0, I["Neck"], :2], reference[I["Neck"], :2])


def test_hands_and_face_follow_wrist_and_nose():
    reference = _long_legged_reference()
    driver = _pose(_body(DRIVER))
    out = retarget_poses(_pose(reference), _clip(driver))
    scale = 720 / 480
    for hand, wrist in ((out.left_hand, "LWrist"), (out.right_hand, "RWrist")):
        source = driver.left_hand if wrist == "LWrist" else driver.right_hand
        np.testing.assert_allclose(
            hand[0, :, :2] - out.body[0, I[wrist], :2], scale * (source[:, :2] - driver.body[I[wrist], :2])
        )
        np.testing.assert_array_equal(hand[0, :, 2], source[:, 2])
    np.testing.assert_allclose(
        out.face[0, :, :2] - out.body[0, I["Nose"], :2], scale * (driver.face[:, :2] - driver.body[I["Nose"], :2])
    )


def test_missing_bone_takes_the_body_scale():
    reference = _long_legged_reference()
    reference[I["LKnee"], 2] = 0.0
    scale = body_scale(reference, _body(DRIVER))
    ratios = bone_ratios(reference, _body(DRIVER), scale)
    for index, (a, b) in enumerate(LIMBS_0BASED):
        if I["LKnee"] in (a, b):
            assert ratios[index] == pytest.approx(scale)
    assert ratios[LIMBS_0BASED.index((I["RHip"], I["RKnee"]))] == pytest.approx(2.0)


def test_foreshortened_bone_ratio_is_capped():
    driver = _body(DRIVER)
    driver[I["RWrist"], :2] = driver[I["RElbow"], :2] + (0, 2)  # forearm pointing at the camera: 2 px
    reference = _long_legged_reference()
    scale = body_scale(reference, driver)
    ratios = bone_ratios(reference, driver, scale)
    assert ratios[LIMBS_0BASED.index((I["RElbow"], I["RWrist"]))] == pytest.approx(3 * scale)


def test_point_missing_in_a_later_frame_does_not_drag_its_children():
    reference = _long_legged_reference()
    # The character's right forearm is 1.5 x the driver's (upper arm ratio 1, forearm ratio 1.5).
    elbow = reference[I["RElbow"], :2]
    reference[I["RWrist"], :2] = elbow + 1.5 * (reference[I["RWrist"], :2] - elbow)
    later = _body(DRIVER)
    later[I["RElbow"]] = (0.0, 0.0, 0.0)  # lost, at a garbage position
    out = retarget_poses(_pose(reference), _clip(_pose(_body(DRIVER)), _pose(later)))
    # The wrist hangs from the shoulder: the driver's shoulder-to-wrist vector times the wrist's bone ratio.
    expected = out.body[1, I["RShoulder"], :2] + 1.5 * (later[I["RWrist"], :2] - later[I["RShoulder"], :2])
    np.testing.assert_allclose(out.body[1, I["RWrist"], :2], expected)


def test_missing_shoulder_in_the_photo_is_refused():
    reference = _long_legged_reference()
    reference[I["RShoulder"], 2] = 0.1
    with pytest.raises(WanAnimateError, match="RShoulder not found in the character photo"):
        retarget_poses(_pose(reference), _clip(_pose(_body(DRIVER))))


def test_missing_neck_in_the_first_driving_frame_is_refused():
    driver = _body(DRIVER)
    driver[I["Neck"], 2] = 0.2
    driver[I["LShoulder"], 2] = 0.0
    with pytest.raises(WanAnimateError, match="Neck, LShoulder not found in the first frame of the driving video"):
        retarget_poses(_pose(_long_legged_reference()), _clip(_pose(driver), _pose(_body(DRIVER))))


def test_shapes_checked():
    driver = _pose(_body(DRIVER))
    with pytest.raises(ValueError):
        retarget_poses(_clip(driver), _clip(driver))  # reference must be one frame
    with pytest.raises(ValueError):
        retarget_poses(driver, driver)  # driving must be (T, ...)
