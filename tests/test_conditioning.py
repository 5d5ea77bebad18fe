"""`Conditioning`: validation messages and the upstream folder layout round trip."""

from __future__ import annotations

import numpy as np
import pytest

from tests.media import write_test_video
from wan_animate.conditioning import Conditioning
from wan_animate.errors import WanAnimateError
from wan_animate.video import VideoFrames


def make(mode="animate", frames=3, height=32, width=48, **overrides) -> Conditioning:
    rng = np.random.default_rng(0)
    fields = dict(
        mode=mode,
        reference_image=rng.integers(0, 255, (40, 30, 3), dtype=np.uint8),
        pose_frames=rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8),
        face_frames=rng.integers(0, 255, (frames, 512, 512, 3), dtype=np.uint8),
        fps=30.0,
    )
    if mode == "replace":
        mask = np.zeros((frames, height, width), np.uint8)
        mask[:, 8:24, 16:32] = 1
        fields["mask_frames"] = mask
        fields["background_frames"] = fields["pose_frames"] * (1 - mask[..., None])
    fields.update(overrides)
    return Conditioning(**fields)


def test_valid_conditioning_has_its_sizes():
    cond = make("replace", frames=4)
    assert (cond.num_frames, cond.height, cond.width, cond.duration) == (4, 32, 48, pytest.approx(4 / 30))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(pose_frames=np.zeros((3, 30, 48, 3), np.uint8)), "multiples of 16"),
        (dict(pose_frames=np.zeros((3, 32, 48, 3), np.float32)), "pose_frames must be uint8"),
        (dict(pose_frames=np.zeros((3, 32, 48), np.uint8)), r"pose_frames must have shape \(T, H, W, 3\)"),
        (dict(face_frames=np.zeros((3, 256, 256, 3), np.uint8)), "face_frames must be 512x512, got 256x256"),
        (dict(face_frames=np.zeros((2, 512, 512, 3), np.uint8)), "face_frames has 2 frames but pose_frames has 3"),
        (dict(pose_frames=np.zeros((0, 32, 48, 3), np.uint8), face_frames=np.zeros((0, 512, 512, 3), np.uint8)), "empty"),
        (dict(fps=0), "fps must be a positive number"),
        (dict(reference_image=[[1, 2, 3]]), "reference_image must be a numpy array"),
        (dict(mask_frames=np.zeros((3, 32, 48), np.uint8)), "only used in replace mode"),
    ],
)
def test_each_animate_problem_has_its_message(overrides, message):
    with pytest.raises(WanAnimateError, match=message):
        make("animate", **overrides)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(mask_frames=None), "needs both background_frames and mask_frames"),
        (dict(mask_frames=np.full((3, 32, 48), 255, np.uint8)), r"only 0 \(kept\) and 1 \(regenerated\)"),
        (dict(mask_frames=np.zeros((3, 32, 48), bool)), r"mask_frames must be a \(T, H, W\) uint8 array"),
        (dict(mask_frames=np.zeros((3, 16, 48), np.uint8)), "mask_frames has shape"),
        (dict(background_frames=np.zeros((2, 32, 48, 3), np.uint8)), "background_frames has shape"),
    ],
)
def test_each_replace_problem_has_its_message(overrides, message):
    with pytest.raises(WanAnimateError, match=message):
        make("replace", **overrides)


def test_unknown_mode_is_refused():
    with pytest.raises(WanAnimateError, match="mode must be one of"):
        make("dance")


def test_all_problems_are_listed_together():
    with pytest.raises(WanAnimateError) as error:
        make(pose_frames=np.zeros((3, 30, 48, 3), np.uint8), face_frames=np.zeros((2, 256, 256, 3), np.uint8))
    text = str(error.value)
    assert "multiples of 16" in text and "512x512" in text and "2 frames" in text


def test_save_and_load_round_trip_in_upstream_layout(tmp_path):
    audio = write_test_video(tmp_path / "driving.mp4", np.zeros((3, 32, 48, 3), np.uint8), 30.0, audio_seconds=0.1)
    # Smooth content survives H.264 closely; random noise would not, and isn't what conditioning looks like.
    ramp = np.linspace(0, 255, 48, dtype=np.uint8)[None, None, :, None]
    pose = np.broadcast_to(ramp, (3, 32, 48, 3)).copy()
    cond = make("replace", pose_frames=pose, background_frames=pose, audio_source=audio, audio_start=0.25)
    folder = cond.save(tmp_path / "cond")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["conditioning.json", "src_bg.mp4", "src_face.mp4", "src_mask.mp4", "src_pose.mp4", "src_ref.png"]
    )
    loaded = Conditioning.load(folder)
    assert loaded.mode == "replace" and loaded.fps == 30.0 and loaded.num_frames == 3
    assert np.array_equal(loaded.reference_image, cond.reference_image)  # png is lossless
    assert np.array_equal(loaded.mask_frames, cond.mask_frames)  # thresholded back to 0/1
    assert np.abs(loaded.pose_frames.astype(int) - pose).mean() < 2.0
    assert loaded.audio_source == audio and loaded.audio_start == 0.25


def test_load_upstream_folder_without_metadata(tmp_path):
    folder = make("animate").save(tmp_path / "cond")
    (folder / "conditioning.json").unlink()
    loaded = Conditioning.load(folder)
    assert loaded.mode == "animate" and loaded.fps == pytest.approx(30.0) and loaded.audio_source is None
    with pytest.raises(WanAnimateError, match="has no src_bg.mp4"):
        Conditioning.load(folder, mode="replace")
    with pytest.raises(WanAnimateError, match="not found"):
        Conditioning.load(tmp_path / "missing")


def test_save_replaces_a_folder_whole(tmp_path):
    folder = make("replace").save(tmp_path / "cond")
    make("animate").save(folder)
    assert not (folder / "src_bg.mp4").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cond"]


def test_open_leaves_the_videos_in_their_files_and_reads_what_load_reads(tmp_path):
    ramp = np.linspace(0, 255, 48, dtype=np.uint8)[None, None, :, None]
    pose = np.broadcast_to(ramp, (12, 32, 48, 3)) // (1 + np.arange(12)[:, None, None, None])
    folder = make("replace", frames=12, pose_frames=pose.astype(np.uint8), background_frames=pose.astype(np.uint8)).save(tmp_path / "cond")
    lazy = Conditioning.open(folder)
    eager = Conditioning.load(folder)
    assert isinstance(lazy.pose_frames, VideoFrames) and isinstance(eager.pose_frames, np.ndarray)
    assert (lazy.num_frames, lazy.height, lazy.width, lazy.mode, lazy.fps) == (12, 32, 48, "replace", 30.0)
    assert lazy.mask_frames.shape == (12, 32, 48) and lazy.face_frames.shape == (12, 512, 512, 3)
    for name in ("pose_frames", "face_frames", "background_frames", "mask_frames"):
        np.testing.assert_array_equal(np.asarray(getattr(lazy, name)), getattr(eager, name))
    np.testing.assert_array_equal(lazy.mask_frames[3:7], eager.mask_frames[3:7])  # thresholded back to 0/1 too
    assert set(np.unique(lazy.mask_frames[0])) == {0, 1}


def test_open_checks_the_files_without_decoding_them(tmp_path):
    folder = make("replace", frames=4).save(tmp_path / "cond")
    write_test_video(folder / "src_face.mp4", np.zeros((3, 512, 512, 3), np.uint8), 30.0)
    with pytest.raises(WanAnimateError, match="face_frames has 3 frames but pose_frames has 4"):
        Conditioning.open(folder)


def test_save_moves_videos_already_encoded_instead_of_encoding_them(tmp_path):
    cond = make("animate")
    pose = write_test_video(tmp_path / "pose.mp4", np.full((3, 32, 48, 3), 77, np.uint8), 30.0)
    folder = cond.save(tmp_path / "cond", encoded={"src_pose.mp4": pose})
    assert not pose.exists()
    assert np.abs(Conditioning.load(folder).pose_frames.astype(int) - 77).max() <= 1  # the moved file, not cond's
    with pytest.raises(ValueError, match=r"not part of animate conditioning: \['src_bg.mp4'\]"):
        cond.save(tmp_path / "other", encoded={"src_bg.mp4": folder / "src_face.mp4"})
    assert not (tmp_path / "other").exists()
