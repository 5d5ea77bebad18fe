"""Pose retargeting: the driver's motion with the character's body proportions (Animation, optional).

Contract, "Pose retargeting": every bone of the driving skeleton is scaled by (bone length in the reference
image's pose) / (the same bone in the first driving frame), with the same ratios for all frames; the result
is anchored at the feet when both skeletons show hips and ankles with score >= 0.4, else at the neck.

How it is done here (all in pixels; the output is in the reference pose's pixels, i.e. the output canvas):

* Each frame's body is rebuilt outward from the Neck along the 19 limbs (a tree): a child point is its
  parent's new position plus the driver's bone vector times that bone's ratio. A bone's direction and its
  change of length over time are the driver's; its length in the first frame becomes the reference's.
* The Neck itself moves with the driver, scaled by the *body scale* ``s`` (`body_scale`: the character's
  size over the driver's), so walking across the frame covers proportionally the same ground.
* One constant offset, from the first frame, puts the rebuilt skeleton onto the reference: the feet anchor
  aligns the hips' mid x and the lower ankle's y; the neck anchor aligns the Necks.
* Hands follow their wrist and the face its nose: translated with them and scaled by ``s`` about them
  (a hand's or face's size follows the body's overall size better than any one noisy bone).
* A bone missing (score < 0.4) in either first pose takes the ratio ``s``; every ratio is kept within
  ``[s / 3, 3 s]`` so one foreshortened bone in the first frame cannot blow a limb up (upstream caps only the
  feet, at half the shin).
* Where a point is missing in some frame, its children hang from the nearest found ancestor.
"""

from __future__ import annotations

import numpy as np

from ..errors import WanAnimateError
from .keypoints import BODY_INDEX, LIMBS_0BASED, WholeBodyPose, present_points

RETARGET_THRESHOLD = 0.4
"""Contract: points count for retargeting (ratios, anchor choice) at score >= 0.4."""

MAX_RATIO_SPREAD = 3.0
"""A bone's ratio is kept within [s / 3, 3 s] of the body scale ``s`` (guards against foreshortening)."""

REQUIRED_POINTS = ("Neck", "RShoulder", "LShoulder")
"""Points both first poses need: the neck anchor and the last-resort body scale (shoulder span)."""

_NECK, _NOSE = BODY_INDEX["Neck"], BODY_INDEX["Nose"]
_HIPS = (BODY_INDEX["RHip"], BODY_INDEX["LHip"])
_ANKLES = (BODY_INDEX["RAnkle"], BODY_INDEX["LAnkle"])
_SHOULDERS = (BODY_INDEX["RShoulder"], BODY_INDEX["LShoulder"])
_RWRIST, _LWRIST = BODY_INDEX["RWrist"], BODY_INDEX["LWrist"]


def check_retarget_points(
    reference: np.ndarray, driving_first: np.ndarray, threshold: float = RETARGET_THRESHOLD
) -> None:
    """Refuse clearly when either first pose lacks `REQUIRED_POINTS`.

    Args:
        reference: ``(20, 3)`` body of the character photo.
        driving_first: ``(20, 3)`` body of the first driving frame.
        threshold: Score a point needs.

    Raises:
        WanAnimateError: Naming the missing points and where they are missing.
    """
    problems = []
    for where, body in (("the character photo", reference), ("the first frame of the driving video", driving_first)):
        present = present_points(body, threshold)
        missing = [name for name in REQUIRED_POINTS if not present[BODY_INDEX[name]]]
        if missing:
            problems.append(f"{', '.join(missing)} not found in {where}")
    if problems:
        raise WanAnimateError(
            "Pose retargeting needs the neck and both shoulders in the character photo and in the first frame "
            f"of the driving video ({'; '.join(problems)}). Use a photo and a clip start where the person faces "
            "the camera with the upper body in view, or turn retargeting off."
        )


def _distance(body: np.ndarray, a: int, b: int | tuple[int, int]) -> float:
    """Distance from point ``a`` to point ``b`` (or to the midpoint of two points)."""
    target = body[list(b), :2].mean(axis=0) if isinstance(b, tuple) else body[b, :2]
    return float(np.hypot(*(body[a, :2] - target)))


def body_scale(reference: np.ndarray, driving_first: np.ndarray, threshold: float = RETARGET_THRESHOLD) -> float:
    """The character's overall size over the driver's, from the first poses.

    The first measure both poses show, with the driver's above zero: nose to the ankles' midpoint, nose to
    the hips' midpoint, then the shoulder span (always there after `check_retarget_points`).

    Args:
        reference: ``(20, 3)`` reference body.
        driving_first: ``(20, 3)`` first driving body.
        threshold: Score a point needs.

    Returns:
        The ratio (reference length / driving length).
    """
    present = present_points(reference, threshold) & present_points(driving_first, threshold)
    measures = ((_NOSE, _ANKLES), (_NOSE, _HIPS), (_SHOULDERS[0], _SHOULDERS[1]))
    for a, b in measures:
        points = (a, *b) if isinstance(b, tuple) else (a, b)
        if present[list(points)].all():
            driver = _distance(driving_first, a, b)
            if driver > 0:
                return _distance(reference, a, b) / driver
    raise WanAnimateError(
        "Pose retargeting could not measure the driver's body size in the first frame (shoulders on top of each "
        "other). Use a clip that starts with the person facing the camera, or turn retargeting off."
    )


def bone_ratios(
    reference: np.ndarray, driving_first: np.ndarray, scale: float, threshold: float = RETARGET_THRESHOLD
) -> np.ndarray:
    """Per-limb length ratio reference / first driving frame, for the 19 limbs in `LIMBS` order.

    Contract, "Pose retargeting": bone length in the reference pose over the same bone in the first driving
    frame. A bone missing (or of zero length) in either takes ``scale``; all are clipped to
    ``[scale / MAX_RATIO_SPREAD, scale * MAX_RATIO_SPREAD]``.

    Args:
        reference: ``(20, 3)`` reference body.
        driving_first: ``(20, 3)`` first driving body.
        scale: The body scale (`body_scale`).
        threshold: Score a point needs.

    Returns:
        ``(19,)`` float ratios.
    """
    present = present_points(reference, threshold) & present_points(driving_first, threshold)
    ratios = np.full(len(LIMBS_0BASED), scale)
    for index, (a, b) in enumerate(LIMBS_0BASED):
        if present[a] and present[b]:
            driver = _distance(driving_first, a, b)
            if driver > 0:
                ratios[index] = _distance(reference, a, b) / driver
    return np.clip(ratios, scale / MAX_RATIO_SPREAD, scale * MAX_RATIO_SPREAD)


def uses_feet_anchor(reference: np.ndarray, driving_first: np.ndarray, threshold: float = RETARGET_THRESHOLD) -> bool:
    """Contract: anchor at the feet when both first poses show both hips and both ankles (score >= 0.4)."""
    needed = list(_HIPS + _ANKLES)
    return bool(
        present_points(reference, threshold)[needed].all() and present_points(driving_first, threshold)[needed].all()
    )


def _ground(body_xy: np.ndarray) -> np.ndarray:
    """The feet anchor of a ``(20, 2)`` body: hips' mid x, lower (larger y) ankle's y."""
    return np.array([body_xy[list(_HIPS), 0].mean(), body_xy[list(_ANKLES), 1].max()])


def _rebuild(
    driving: np.ndarray, ratios: np.ndarray, scale: float, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rebuild every frame's body from the Neck with the bone ratios (before the anchor offset).

    Returns:
        ``(rebuilt_xy, base_new, base_old)``, each ``(T, 20, 2)``: the rebuilt points, and for each point
        the new and original positions of the point itself when found in that frame, else of its nearest
        found ancestor (the Neck at the latest), which its children hang from.
    """
    present = present_points(driving, threshold)
    old = driving[..., :2]
    new = np.full_like(old, np.nan)
    base_new, base_old = np.empty_like(old), np.empty_like(old)
    new[:, _NECK] = scale * old[:, _NECK]
    base_new[:, _NECK], base_old[:, _NECK] = new[:, _NECK], old[:, _NECK]
    for (parent, child), ratio in zip(LIMBS_0BASED, ratios):
        new[:, child] = base_new[:, parent] + ratio * (old[:, child] - base_old[:, parent])
        found = present[:, child, None]
        base_new[:, child] = np.where(found, new[:, child], base_new[:, parent])
        base_old[:, child] = np.where(found, old[:, child], base_old[:, parent])
    return new, base_new, base_old


def _follow(
    points: np.ndarray, base_new: np.ndarray, base_old: np.ndarray, scale: float, offset: np.ndarray
) -> np.ndarray:
    """Move ``(T, N, 3)`` points with their body point: translate with it and scale by ``scale`` about it."""
    out = points.astype(np.float64, copy=True)
    out[..., :2] = base_new[:, None] + offset + scale * (points[..., :2] - base_old[:, None])
    return out


def retarget_poses(
    reference: WholeBodyPose, driving: WholeBodyPose, threshold: float = RETARGET_THRESHOLD
) -> WholeBodyPose:
    """The driving poses with the reference's bone lengths, placed on the reference (output) canvas.

    Contract, "Pose retargeting" (see the module docstring for how each step is done).

    Args:
        reference: The character photo's pose (one frame), in output-canvas pixels.
        driving: The driving clip's poses ``(T, ...)``, in the driving frames' pixels.
        threshold: Score a point needs to count (the contract's 0.4).

    Returns:
        ``(T, ...)`` poses in the reference's pixels; scores are the driver's.

    Raises:
        WanAnimateError: Either first pose lacks the neck or a shoulder.
    """
    if reference.leading_shape:
        raise ValueError(f"The reference pose must be one frame; got leading dimensions {reference.leading_shape}.")
    if len(driving.leading_shape) != 1 or driving.leading_shape[0] == 0:
        raise ValueError(f"The driving poses must be (T, ...) with T >= 1; got {driving.leading_shape}.")
    ref_body = np.asarray(reference.body, dtype=np.float64)
    drv_body = np.asarray(driving.body, dtype=np.float64)
    check_retarget_points(ref_body, drv_body[0], threshold)
    scale = body_scale(ref_body, drv_body[0], threshold)
    ratios = bone_ratios(ref_body, drv_body[0], scale, threshold)
    rebuilt, base_new, base_old = _rebuild(drv_body, ratios, scale, threshold)

    if uses_feet_anchor(ref_body, drv_body[0], threshold):
        offset = _ground(ref_body[:, :2]) - _ground(rebuilt[0])
    else:
        offset = ref_body[_NECK, :2] - rebuilt[0, _NECK]

    body = drv_body.copy()
    body[..., :2] = rebuilt + offset
    return WholeBodyPose(
        body=body,
        left_hand=_follow(driving.left_hand, base_new[:, _LWRIST], base_old[:, _LWRIST], scale, offset),
        right_hand=_follow(driving.right_hand, base_new[:, _RWRIST], base_old[:, _RWRIST], scale, offset),
        face=_follow(driving.face, base_new[:, _NOSE], base_old[:, _NOSE], scale, offset),
    )

