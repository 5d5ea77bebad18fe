"""The bad-input matrix: what a careless or hostile user may send, and what must come of each.

Every case ends in a result, or in a refusal whose one sentence names the user's file or the field (never a
traceback, a server path, a job id or FFmpeg's errno). The cases are data: `CASES` is importable, and a runner
(tests/test_bad_inputs.py has the package API's and the CLI's) only maps a case to its interface and checks the
outcome with `check_outcome`:

- `Case.photo` / `Case.video` name files that `make_media` writes (under the user's own file names);
- `Case.settings` uses the interface-neutral names of `SETTINGS` (the app's and the CLI's words), with the raw
  values a client could send (NaN, infinities, 2**64, nested JSON, ...);
- a runner that cannot express a setting (the CLI has no ``fps`` or ``points``) skips the case (`runs_on`).

A runner through `gradio_client` against the served app can be added the same way: upload the two files, map
``SETTINGS`` to the endpoint's parameters, call, and `check_outcome` with the `gr.Error` text as the message.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from PIL import Image

from tests.media import encode_tone, write_test_video

SETTINGS = {
    # name: stage it belongs to
    "start": "preprocess",
    "end": "preprocess",
    "fps": "preprocess",
    "max_seconds": "preprocess",
    "resolution": "preprocess",
    "points": "preprocess",
    "mask_kernel": "preprocess",
    "mask_iterations": "preprocess",
    "blockify": "preprocess",
    "detect_every": "preprocess",
    "steps": "generate",
    "seed": "generate",
    "guidance": "generate",
    "shift": "generate",
    "relight_weight": "generate",
}
"""Interface-neutral setting names of the cases, and the stage that reads each."""


@dataclass(frozen=True)
class Case:
    """One bad (or borderline good) input.

    Attributes:
        id: Test id: ``bad_`` for unusable input, ``refuse_`` for input refused by a limit, ``ok_`` for odd input
            that must work.
        expect: ``"result"``, ``"refused"``, or ``"either"`` (a damaged file a decoder may half read).
        mode: ``"animate"`` or ``"replace"``.
        photo: Key of the photo in `make_media`'s files.
        video: Key of the driving video.
        settings: Values by `SETTINGS` name (defaults for the rest).
        names: What the refusal must name: the user's file name or the field's name (any one of them).
    """

    id: str
    expect: Literal["result", "refused", "either"]
    mode: Literal["animate", "replace"] = "animate"
    photo: str = "photo"
    video: str = "video"
    settings: Mapping[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] = ()

    @property
    def stage(self) -> str:
        """``"generate"`` when a generation setting is set (the inputs are then a finished conditioning)."""
        return "generate" if any(SETTINGS[name] == "generate" for name in self.settings) else "preprocess"


@dataclass(frozen=True)
class Outcome:
    """What a runner saw: a result, or the sentence the user was shown."""

    ok: bool
    message: str = ""


def check_outcome(case: Case, outcome: Outcome, *, private: tuple[str, ...] = ()) -> None:
    """Assert that ``outcome`` is what ``case`` expects, and that a refusal is one clean sentence.

    Args:
        private: Strings the user must never see (the server's folders, job ids).
    """
    if case.expect == "result":
        assert outcome.ok, f"{case.id}: expected a result, got the refusal {outcome.message!r}"
        return
    if case.expect == "refused":
        assert not outcome.ok, f"{case.id}: expected a refusal, got a result"
    if outcome.ok:
        return
    message = outcome.message
    assert message.strip(), f"{case.id}: refused without a message"
    assert "Traceback" not in message and "Errno" not in message, f"{case.id}: {message!r}"
    for text in private:
        assert text not in message, f"{case.id}: the message shows {text!r}: {message!r}"
    if case.names:
        assert any(name.lower() in message.lower() for name in case.names), f"{case.id}: {message!r} names none of {case.names}"


# -- the files ------------------------------------------------------------------------------------------------------


def _figure(height: int, width: int, frames: int = 1) -> np.ndarray:
    """A bright figure swaying over a dark background (what the tiny models are confident on)."""
    video = np.full((frames, height, width, 3), 30, np.uint8)
    for index in range(frames):
        x = width // 2 + int(width / 16 * np.sin(index / 5))
        video[index, height // 8 : height * 7 // 8, x - width // 6 : x + width // 6] = (220, 180, 150)
        video[index, height // 16 : height // 4, x - width // 10 : x + width // 10] = (240, 200, 170)
    return video


def _save(image: Image.Image, path: Path, **kwargs: Any) -> Path:
    image.save(path, **kwargs)
    return path


def _cut(source: Path, path: Path, fraction: float) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` with one empty data chunk (how a decompression bomb opens)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _audio_only(path: Path, *, with_empty_video: bool = False) -> Path:
    """One second of a tone (container by the file's extension); with ``with_empty_video``, beside a video stream
    with no frames (Matroska keeps such a track, mp4 drops it)."""
    with av.open(str(path), mode="w") as output:
        if with_empty_video:
            video = output.add_stream("libx264", rate=Fraction(30))
            video.width, video.height, video.pix_fmt = 128, 128, "yuv420p"
        audio = output.add_stream("aac", rate=48000)
        audio.layout = "mono"
        encode_tone(output, audio, 1.0)
    return path


def _glitched(source: Path, path: Path) -> Path:
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


GOOD_FRAMES = 6

MEDIA: dict[str, Callable[[Path, dict[str, Path]], Path]] = {
    # Good inputs, at the real minimum sizes (validation.MIN_PHOTO_SIDE, MIN_VIDEO_SIDE) or above.
    "photo": lambda d, m: _save(Image.fromarray(_figure(160, 128)[0]), d / "character.png"),
    "video": lambda d, m: write_test_video(d / "dance.mp4", _figure(128, 128, GOOD_FRAMES), 30.0, audio_seconds=GOOD_FRAMES / 30),
    # Photos.
    "photo_truncated_png": lambda d, m: _cut(m["photo"], d / "truncated.png", 0.5),
    "photo_truncated_jpeg": lambda d, m: _cut(_save(Image.fromarray(_figure(160, 128)[0]), d / "full.jpg"), d / "truncated.jpg", 0.4),
    "photo_text": lambda d, m: _write(d / "notes.png", b"these are my notes, not a photo\n"),
    "photo_empty": lambda d, m: _write(d / "empty.jpg", b""),
    "photo_missing": lambda d, m: d / "missing.png",
    "photo_tiny": lambda d, m: _save(Image.fromarray(_figure(16, 16)[0]), d / "tiny.png"),
    "photo_thin": lambda d, m: _save(Image.new("RGB", (2000, 64), (200, 180, 150)), d / "banner.png"),
    "photo_huge": lambda d, m: _save(Image.new("RGB", (9000, 200)), d / "panorama.png"),
    "photo_bomb": lambda d, m: _png_header_only(d / "bomb.png", 40000, 40000),
    "photo_grey16": lambda d, m: _save(Image.fromarray((_figure(160, 128)[0, ..., 0].astype(np.uint16) * 257)), d / "grey16.png"),
    "photo_alpha": lambda d, m: _save(Image.fromarray(np.dstack([_figure(160, 128)[0], np.full((160, 128), 128, np.uint8)]), "RGBA"), d / "alpha.png"),
    "photo_cmyk": lambda d, m: _save(Image.fromarray(_figure(160, 128)[0]).convert("CMYK"), d / "cmyk.jpg"),
    "photo_palette": lambda d, m: _save(Image.fromarray(_figure(160, 128)[0]).convert("P"), d / "palette.gif", transparency=0),
    # Videos.
    "video_truncated": lambda d, m: _cut(m["video"], d / "cut.mp4", 0.6),
    "video_text": lambda d, m: _write(d / "notes.mp4", b"these are my notes, not a video\n" * 20),
    "video_empty": lambda d, m: _write(d / "empty.mp4", b""),
    "video_missing": lambda d, m: d / "missing.mp4",
    "video_audio_only": lambda d, m: _audio_only(d / "voice.m4a"),
    "video_no_frames": lambda d, m: _audio_only(d / "blank.mkv", with_empty_video=True),
    "video_tiny": lambda d, m: write_test_video(d / "tiny.mp4", _figure(32, 32, 4), 30.0),
    "video_huge": lambda d, m: write_test_video(d / "wide.mp4", _figure(128, 4160, 2), 30.0),
    "video_long": lambda d, m: write_test_video(d / "long.mp4", _figure(128, 128, 32), 1.0),
    "video_glitched": lambda d, m: _glitched(m["video"], d / "glitch.mp4"),
}
"""Builders of the case files, by key; each writes under a name a user might give it."""


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_media(folder: Path) -> dict[str, Path]:
    """Write every file of `MEDIA` into ``folder``; returns their paths by key."""
    folder.mkdir(parents=True, exist_ok=True)
    media: dict[str, Path] = {}
    for key, build in MEDIA.items():  # "photo" and "video" come first: others are made from them
        media[key] = build(folder, media)
    return media


# -- the cases ------------------------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
DEEP_JSON = "[" * 100_000 + "]" * 100_000

CASES: list[Case] = [
    # Photos that can't be read, or are refused by a limit, or are odd but fine.
    Case("bad_photo_truncated_png", "refused", photo="photo_truncated_png", names=("truncated.png",)),
    Case("bad_photo_truncated_jpeg", "refused", photo="photo_truncated_jpeg", names=("truncated.jpg",)),
    Case("bad_photo_not_an_image", "refused", photo="photo_text", names=("notes.png",)),
    Case("bad_photo_empty_file", "refused", photo="photo_empty", names=("empty.jpg",)),
    Case("bad_photo_missing", "refused", photo="photo_missing", names=("missing.png",)),
    Case("bad_photo_is_a_video", "refused", photo="video", names=("dance.mp4",)),
    Case("bad_photo_is_a_video_replace", "refused", mode="replace", photo="video", names=("dance.mp4",)),
    Case("refuse_photo_tiny", "refused", photo="photo_tiny", names=("tiny.png",)),
    Case("refuse_photo_thin", "refused", photo="photo_thin", names=("banner.png",)),
    Case("refuse_photo_huge_side", "refused", photo="photo_huge", names=("panorama.png",)),
    Case("refuse_photo_decompression_bomb", "refused", photo="photo_bomb", names=("bomb.png",)),
    Case("ok_photo_16bit_grey", "result", photo="photo_grey16"),
    Case("ok_photo_alpha", "result", photo="photo_alpha"),
    Case("ok_photo_cmyk", "result", photo="photo_cmyk"),
    Case("ok_photo_palette_transparent_replace", "result", mode="replace", photo="photo_palette"),
    # Driving videos.
    Case("bad_video_truncated", "refused", video="video_truncated", names=("cut.mp4",)),
    Case("bad_video_not_a_video", "refused", video="video_text", names=("notes.mp4",)),
    Case("bad_video_empty_file", "refused", video="video_empty", names=("empty.mp4",)),
    Case("bad_video_missing", "refused", video="video_missing", names=("missing.mp4",)),
    Case("bad_video_is_a_photo", "refused", video="photo", names=("character.png",)),
    Case("bad_video_audio_only", "refused", video="video_audio_only", names=("voice.m4a",)),
    Case("bad_video_zero_frames", "refused", video="video_no_frames", names=("blank.mkv",)),
    Case("bad_video_glitched_middle", "either", video="video_glitched", names=("glitch.mp4",)),
    Case("refuse_video_tiny", "refused", video="video_tiny", names=("tiny.mp4",)),
    Case("refuse_video_tiny_replace", "refused", mode="replace", video="video_tiny", names=("tiny.mp4",)),
    Case("refuse_video_huge_side", "refused", video="video_huge", names=("wide.mp4",)),
    Case("refuse_video_too_long", "refused", video="video_long", names=("long.mp4",)),
    Case("bad_video_start_past_its_end", "refused", settings={"start": 100.0}, names=("dance.mp4",)),
    # Numbers of the preprocessing.
    Case("bad_start_nan", "refused", settings={"start": NAN}, names=("Start",)),
    Case("bad_start_inf", "refused", settings={"start": INF}, names=("Start",)),
    Case("bad_start_negative", "refused", settings={"start": -1.0}, names=("Start",)),
    Case("bad_end_inf", "refused", settings={"end": INF}, names=("End",)),
    Case("bad_end_before_start", "refused", settings={"start": 0.15, "end": 0.05}, names=("End",)),
    Case("bad_fps_zero", "refused", settings={"fps": 0.0}, names=("Frame rate",)),
    Case("bad_fps_nan", "refused", settings={"fps": NAN}, names=("Frame rate",)),
    Case("bad_max_seconds_nan", "refused", settings={"max_seconds": NAN}, names=("Longest clip",)),
    Case("bad_resolution", "refused", settings={"resolution": "1080p"}, names=("resolution",)),
    Case("bad_mask_kernel_zero", "refused", mode="replace", settings={"mask_kernel": 0}, names=("Mask dilation kernel",)),
    Case("bad_mask_kernel_huge", "refused", mode="replace", settings={"mask_kernel": 10**6}, names=("Mask dilation kernel",)),
    Case("bad_mask_iterations_negative", "refused", mode="replace", settings={"mask_iterations": -3}, names=("Mask dilation iterations",)),
    Case("bad_blockify_zero", "refused", mode="replace", settings={"blockify": 0}, names=("Blockify",)),
    Case("bad_detect_every_zero", "refused", settings={"detect_every": 0}, names=("Detect every",)),
    # Points clicked on the video (JSON from the page or an API client).
    Case("bad_points_frame_1e400", "refused", settings={"points": '[{"frame": 1e400, "x": 0.5, "y": 0.5}]'}, names=("Point frame",)),
    Case("bad_points_deeply_nested", "refused", settings={"points": DEEP_JSON}, names=("Points",)),
    Case("bad_points_nested_in_the_limit", "refused", settings={"points": "[" * 9000 + "]" * 9000}, names=("Points",)),
    Case("bad_points_nan_x", "refused", settings={"points": "[[0, NaN, 0.5]]"}, names=("Point x",)),
    Case("bad_points_outside_the_frame", "refused", settings={"points": "[[0, 1.5, 0.5]]"}, names=("Point x",)),
    Case("bad_points_not_json", "refused", settings={"points": "click here"}, names=("Points",)),
    Case("bad_points_too_many", "refused", settings={"points": str([[0, 0.5, 0.5]] * 500)}, names=("points",)),
    Case("bad_points_positive_as_text", "refused", settings={"points": '[[0, 0.5, 0.5, "no"]]'}, names=("positive",)),
    # Numbers of the generation.
    Case("bad_seed_2_64", "refused", settings={"seed": 2**64}, names=("Seed",)),
    Case("bad_seed_1e30", "refused", settings={"seed": 1e30}, names=("Seed",)),
    Case("bad_seed_negative", "refused", settings={"seed": -5}, names=("Seed",)),
    Case("bad_seed_nan", "refused", settings={"seed": NAN}, names=("Seed",)),
    Case("bad_steps_10000", "refused", settings={"steps": 10000}, names=("Steps",)),
    Case("bad_steps_zero", "refused", settings={"steps": 0}, names=("Steps",)),
    Case("bad_steps_fraction", "refused", settings={"steps": 2.5}, names=("Steps",)),
    Case("bad_guidance_nan", "refused", settings={"guidance": NAN}, names=("Guidance",)),
    Case("bad_guidance_inf", "refused", settings={"guidance": INF}, names=("Guidance",)),
    Case("bad_shift_zero", "refused", settings={"shift": 0.0}, names=("Flow shift",)),
    Case("bad_shift_nan", "refused", settings={"shift": NAN}, names=("Flow shift",)),
    Case("bad_relight_weight_inf", "refused", settings={"relight_weight": INF}, names=("Relighting weight",)),
    Case("ok_seed_largest", "result", settings={"seed": 2**63 - 1, "steps": 1}),
]
"""The matrix. Ids are unique; ``names`` lists what a refusal must name."""

assert len({case.id for case in CASES}) == len(CASES)
assert all(set(case.settings) <= set(SETTINGS) for case in CASES)
