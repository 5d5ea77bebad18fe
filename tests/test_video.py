"""Video decoding, frame-rate resampling, H.264 writing with sound, and photo reading."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.media import audio_duration, counter_frames, frame_index, video_facts, write_test_video
from wan_animate.errors import WanAnimateError
from wan_animate.video import VideoFrames, concat_videos, has_alpha, probe_video, read_image, read_video, resample_indices, write_side_by_side, write_video


def test_resample_indices_follow_the_contract_rule():
    # 25 fps -> 30 fps: t takes round(t / 30 * 25) (numpy rounds halves to even), n_out = floor(n / 25 * 30).
    indices = resample_indices(10, 25.0, 30.0)
    assert len(indices) == 12
    assert indices.tolist() == [int(np.round(t / 30 * 25)) for t in range(12)]
    assert indices.tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 8, 9]
    # 60 -> 30 keeps every other frame; indices are clipped to the last frame.
    assert resample_indices(7, 60.0, 30.0).tolist() == [0, 2, 4]
    assert resample_indices(3, 10.0, 30.0).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("source_fps", [25.0, 30.0, 60.0, 12.0])
def test_read_video_resamples_by_nearest_frame(tmp_path, source_fps):
    source = counter_frames(24)
    path = write_test_video(tmp_path / "clip.mp4", source, source_fps)
    clip = read_video(path, fps=30.0)
    expected = resample_indices(24, source_fps, 30.0)
    assert clip.fps == 30.0
    assert [frame_index(f) for f in clip.frames] == expected.tolist()


def test_read_video_keeps_source_fps_and_resizes(tmp_path):
    path = write_test_video(tmp_path / "clip.mp4", counter_frames(9, 64, 96), 24.0)
    clip = read_video(path, fps=None, size=(32, 48))
    assert clip.fps == pytest.approx(24.0)
    assert clip.frames.shape == (9, 32, 48, 3)
    assert clip.source_size == (64, 96)
    assert [frame_index(f) for f in clip.frames] == list(range(9))


def test_read_video_trims_and_limits_length(tmp_path):
    path = write_test_video(tmp_path / "clip.mp4", counter_frames(30), 10.0)  # 3 s
    clip = read_video(path, fps=None, start=1.0, end=2.0)
    assert [frame_index(f) for f in clip.frames] == list(range(10, 20))
    assert clip.start == pytest.approx(1.0)
    with pytest.raises(WanAnimateError, match="limit is 2 s"):
        read_video(path, max_seconds=2.0)
    assert len(read_video(path, fps=None, start=1.0, max_seconds=2.0).frames) == 20
    with pytest.raises(WanAnimateError, match=r"End \(1 s\) must come after Start \(2 s\)"):
        read_video(path, start=2.0, end=1.0)


def test_read_video_refuses_bad_files(tmp_path):
    with pytest.raises(WanAnimateError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(WanAnimateError, match="Could not read"):
        read_video(text)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(WanAnimateError):
        read_video(empty)
    big = write_test_video(tmp_path / "big.mp4", counter_frames(2, 64, 128), 10.0)
    with pytest.raises(WanAnimateError, match="largest side accepted is 100"):
        read_video(big, max_side=100)


@pytest.mark.parametrize("suffix,codec,fmt", [(".webm", "libvpx-vp9", "webm"), (".mkv", "libx264", "matroska"), (".mov", "libx264", "mov")])
def test_read_video_reads_other_containers(tmp_path, suffix, codec, fmt):
    path = write_test_video(tmp_path / f"clip{suffix}", counter_frames(6), 30.0, codec=codec, container_format=fmt)
    clip = read_video(path, fps=30.0)
    assert len(clip.frames) == 6
    assert [frame_index(f) for f in clip.frames] == list(range(6))


def test_write_video_is_browser_playable_with_audio_cut_to_length(tmp_path):
    driving = write_test_video(tmp_path / "driving.mp4", counter_frames(20), 10.0, audio_seconds=2.0)
    frames = counter_frames(15, 48, 64)
    out = write_video(tmp_path / "out.mp4", frames, 30.0, audio_source=driving, audio_start=0.5)
    facts = video_facts(out)
    assert facts == {"codec": "h264", "pix_fmt": "yuv420p", "width": 64, "height": 48, "fps": 30.0, "has_audio": True, "frames": 15}
    assert audio_duration(out) == pytest.approx(0.5, abs=0.03)  # 15 frames at 30 fps
    with open(out, "rb") as handle:  # faststart: the index (moov) comes before the media data (mdat)
        head = handle.read(4096)
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))
    assert not list(tmp_path.glob(".*partial*"))


def test_write_video_without_audio_source_sound(tmp_path):
    silent = write_test_video(tmp_path / "silent.mp4", counter_frames(5), 10.0)
    out = write_video(tmp_path / "out.mp4", counter_frames(5), 10.0, audio_source=silent)
    assert video_facts(out)["has_audio"] is False


def test_write_video_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), 30.0)
    assert list(tmp_path.iterdir()) == []


def test_write_video_gives_the_same_file_every_time(tmp_path):
    """The same frames encode to the same pixels and bytes (a resumed job's video equals an uninterrupted one's).
    With x264's macroblock tree on, 2 to 5 of 40 encodes of these blocky frames differed."""
    blocks = np.random.default_rng(0).integers(0, 256, (20, 12, 12, 3), dtype=np.uint8)
    frames = blocks.repeat(8, axis=1).repeat(8, axis=2)
    written = {write_video(tmp_path / f"take{take}.mp4", frames, 30.0, preset="veryfast").read_bytes() for take in range(30)}
    assert len(written) == 1


def test_side_by_side_matches_heights(tmp_path):
    left = counter_frames(4, 64, 96)
    right = counter_frames(4, 32, 32)
    out = write_side_by_side(tmp_path / "sbs.mp4", left, right, 30.0)
    facts = video_facts(out)
    assert (facts["height"], facts["width"], facts["frames"]) == (32, 48 + 32, 4)
    # Streams of frames, the left one ending early: the right one sets the length, the left holds its last frame.
    out = write_side_by_side(tmp_path / "sbs.mp4", iter(counter_frames(3, 64, 96)), iter(counter_frames(5, 32, 32)), 30.0)
    frames = read_video(out, fps=None).frames
    assert len(frames) == 5 and [frame_index(frame[:, :48]) for frame in frames] == [0, 1, 2, 2, 2]


def test_video_frames_reads_on_demand_what_read_video_reads(tmp_path):
    path = write_test_video(tmp_path / "clip.mp4", counter_frames(30, 32, 48), 30.0)
    everything = read_video(path, fps=None).frames
    frames = VideoFrames(path)
    assert (frames.shape, frames.dtype, frames.ndim, len(frames)) == ((30, 32, 48, 3), np.uint8, 4, 30)
    np.testing.assert_array_equal(frames[5:12], everything[5:12])
    np.testing.assert_array_equal(frames[[10, 9, 10, 13]], everything[[10, 9, 10, 13]])  # a few back: still kept
    np.testing.assert_array_equal(frames[np.array([2, 29, 0])], everything[[2, 29, 0]])  # far back: decoded again
    np.testing.assert_array_equal(frames[-1], everything[-1])
    np.testing.assert_array_equal(np.asarray(frames), everything)
    np.testing.assert_array_equal(np.stack(list(frames)), everything)
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(frames))[3], everything[3])
    with pytest.raises(IndexError):
        frames[30]
    too_many = VideoFrames(path, num_frames=31)
    with pytest.raises(WanAnimateError, match="ends after 30 frames but 31 were expected"):
        too_many[30]


def test_concat_videos_joins_parts_without_re_encoding(tmp_path):
    """Parts of several lengths, one of a single frame (x264 gives it no decode delay), joined with sound."""
    rng = np.random.default_rng(0)
    base = rng.normal(128, 30, (1, 32, 48, 3))
    parts, frames = [], []
    for index, count in enumerate([9, 1, 8, 3]):
        part = np.clip(base + np.arange(count)[:, None, None, None] * 4 + index * 20 + rng.normal(0, 2, (count, 32, 48, 3)), 0, 255).astype(np.uint8)
        parts.append(write_video(tmp_path / f"part{index}.mp4", part, 30.0))
        frames.append(read_video(parts[-1], fps=None).frames)
    driving = write_test_video(tmp_path / "driving.mp4", counter_frames(30, 32, 32), 30.0, audio_seconds=1.0)
    out = concat_videos(tmp_path / "joined.mp4", parts, audio_source=driving, audio_start=0.1)
    np.testing.assert_array_equal(read_video(out, fps=None).frames, np.concatenate(frames))  # the same pixels: packets copied
    assert video_facts(out) == {**video_facts(parts[0]), "frames": 21, "has_audio": True}
    written = write_video(tmp_path / "written.mp4", np.concatenate(frames), 30.0, audio_source=driving, audio_start=0.1)
    assert audio_duration(out) == audio_duration(written)  # the sound cut as write_video cuts it
    with pytest.raises(ValueError, match="differs"):
        concat_videos(tmp_path / "bad.mp4", [parts[0], write_video(tmp_path / "small.mp4", counter_frames(2, 16, 16), 30.0)])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "bad"))) == []


def test_probe_video(tmp_path):
    path = write_test_video(tmp_path / "clip.mp4", counter_frames(20, 64, 96), 20.0, audio_seconds=1.0)
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.has_audio) == (96, 64, 20.0, True)
    assert info.duration == pytest.approx(1.0, abs=0.06)


def test_read_image_handles_alpha_modes_and_orientation(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :3, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert has_alpha(tmp_path / "alpha.png")
    image = read_image(tmp_path / "alpha.png")
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [200, 0, 0] and image[0, 5].tolist() == [255, 255, 255]

    grey16 = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    grey = read_image(tmp_path / "grey16.png")
    assert grey.shape == (3, 4, 3) and grey[-1, -1].tolist() == [255, 255, 255] and grey[0, 0].tolist() == [0, 0, 0]

    Image.new("CMYK", (5, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (3, 5, 3) and cmyk[1, 2, 0] > 200 and cmyk[1, 2, 1] < 60

    tall = Image.new("RGB", (8, 4), (10, 20, 30))
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    tall.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (8, 4, 3)


def test_read_image_refuses_non_images(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(WanAnimateError, match="Could not read text.png as an image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(WanAnimateError, match="not found"):
        read_image(tmp_path / "nope.png")
    Image.new("RGB", (64, 8)).save(tmp_path / "wide.png")
    with pytest.raises(WanAnimateError, match="largest side accepted is 32"):
        read_image(tmp_path / "wide.png", max_side=32)
