"""Draw the example files of the app: a character photo and a short dance clip with a beat.

Everything here is drawn with OpenCV and synthesised with numpy (no third-party material), so the
results are free to use (see LICENSES.md). Run from the repository root::

    python assets/make_assets.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

ASSETS = Path(__file__).resolve().parent
SIZE = (768, 512)  # (height, width): portrait, like most phone dance clips
FPS = 30
SECONDS = 4.0
SAMPLE_RATE = 44100
BPM = 120


@dataclass(frozen=True)
class Look:
    """Colours (RGB) of one drawn person."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    shoes: tuple[int, int, int]


CHARACTER = Look(skin=(241, 194, 160), hair=(60, 40, 30), shirt=(200, 60, 70), trousers=(40, 60, 120), shoes=(30, 30, 30))
DANCER = Look(skin=(198, 140, 105), hair=(25, 20, 20), shirt=(250, 200, 60), trousers=(50, 50, 55), shoes=(235, 235, 235))


def _background(top: tuple[int, int, int], bottom: tuple[int, int, int], floor: int) -> np.ndarray:
    height, width = SIZE
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    image = (np.array(top) * (1 - t) + np.array(bottom) * t).astype(np.uint8)
    image = np.repeat(image, width, axis=1)
    image[floor:] = (image[floor:] * 0.75).astype(np.uint8)  # the floor, a little darker than the wall
    return np.ascontiguousarray(image)


def _limb(image: np.ndarray, a: tuple[float, float], b: tuple[float, float], width: int, color: tuple[int, int, int]) -> None:
    pa, pb = (round(a[0]), round(a[1])), (round(b[0]), round(b[1]))
    cv2.line(image, pa, pb, color, width, cv2.LINE_AA)
    cv2.circle(image, pa, width // 2, color, -1, cv2.LINE_AA)
    cv2.circle(image, pb, width // 2, color, -1, cv2.LINE_AA)


def _polar(origin: tuple[float, float], length: float, degrees: float) -> tuple[float, float]:
    """The point ``length`` from ``origin`` at ``degrees`` (0 = straight down, positive = towards image right)."""
    angle = math.radians(degrees)
    return origin[0] + length * math.sin(angle), origin[1] + length * math.cos(angle)


def draw_person(image: np.ndarray, look: Look, centre_x: float, angles: dict[str, float], bounce: float = 0.0) -> None:
    """Draw a front-facing person; ``angles`` in degrees for the upper/lower arms and legs."""
    hip_y = 430 + bounce
    neck = (centre_x, 205 + bounce)
    shoulders = {"r": (centre_x - 58, 222 + bounce), "l": (centre_x + 58, 222 + bounce)}
    hips = {"r": (centre_x - 32, hip_y), "l": (centre_x + 32, hip_y)}
    # Legs first (behind the shirt hem): thigh, shin, shoe.
    for side in ("r", "l"):
        knee = _polar(hips[side], 135, angles[f"{side}_thigh"])
        ankle = _polar(knee, 130, angles[f"{side}_shin"])
        _limb(image, hips[side], knee, 40, look.trousers)
        _limb(image, knee, ankle, 34, look.trousers)
        toe = (ankle[0] + (-26 if side == "r" else 26), ankle[1] + 8)
        _limb(image, ankle, toe, 20, look.shoes)
    # Torso: a shirt trapezoid.
    torso = np.array(
        [shoulders["r"], shoulders["l"], (hips["l"][0] + 12, hip_y + 10), (hips["r"][0] - 12, hip_y + 10)], np.int32
    )
    cv2.fillConvexPoly(image, torso, look.shirt, cv2.LINE_AA)
    # Arms: sleeve on the upper arm, skin on the forearm, a hand.
    for side in ("r", "l"):
        elbow = _polar(shoulders[side], 88, angles[f"{side}_upper"])
        wrist = _polar(elbow, 80, angles[f"{side}_fore"])
        _limb(image, shoulders[side], elbow, 30, look.shirt)
        _limb(image, elbow, wrist, 22, look.skin)
        cv2.circle(image, (round(wrist[0]), round(wrist[1])), 15, look.skin, -1, cv2.LINE_AA)
    # Neck and head with a face.
    _limb(image, neck, (centre_x, 180 + bounce), 30, look.skin)
    head = (round(centre_x), round(135 + bounce))
    cv2.ellipse(image, head, (46, 58), 0, 0, 360, look.skin, -1, cv2.LINE_AA)
    cv2.ellipse(image, (head[0], head[1] - 26), (50, 38), 0, 180, 360, look.hair, -1, cv2.LINE_AA)
    for dx in (-18, 18):
        cv2.ellipse(image, (head[0] + dx, head[1] - 2), (9, 6), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(image, (head[0] + dx, head[1] - 2), 4, (40, 30, 20), -1, cv2.LINE_AA)
        cv2.line(image, (head[0] + dx - 10, head[1] - 16), (head[0] + dx + 10, head[1] - 17), look.hair, 3, cv2.LINE_AA)
    nose_color = tuple(int(c * 0.85) for c in look.skin)
    cv2.line(image, (head[0], head[1] + 2), (head[0] - 4, head[1] + 16), nose_color, 3, cv2.LINE_AA)
    cv2.ellipse(image, (head[0], head[1] + 30), (15, 7), 0, 0, 180, (170, 60, 60), 3, cv2.LINE_AA)
    for dx in (-47, 47):  # ears
        cv2.ellipse(image, (head[0] + dx, head[1] + 2), (7, 12), 0, 0, 360, look.skin, -1, cv2.LINE_AA)


# "r" is the person's right side, drawn on the image's left: negative angles point outwards there.
STANDING = {
    "r_upper": -14, "r_fore": -6, "l_upper": 14, "l_fore": 6,
    "r_thigh": -3, "r_shin": -1, "l_thigh": 3, "l_shin": 1,
}


def dance_pose(t: float) -> tuple[dict[str, float], float, float]:
    """Joint angles, body bounce and sideways sway at time ``t`` seconds: arms wave, knees bend to the beat."""
    beat = 2 * math.pi * BPM / 60 * t
    wave = math.sin(beat / 2)
    # The arms wave in turn between down-and-out (about 20 degrees) and up-and-out (about 160).
    r_upper, l_upper = -90 - 70 * wave, 90 - 70 * wave
    angles = {
        "r_upper": r_upper,
        "r_fore": r_upper - 35 - 15 * math.sin(beat),
        "l_upper": l_upper,
        "l_fore": l_upper + 35 + 15 * math.sin(beat),
        "r_thigh": -6 - 12 * max(0.0, math.sin(beat)),
        "r_shin": -6 + 10 * max(0.0, math.sin(beat)),
        "l_thigh": 6 + 12 * max(0.0, -math.sin(beat)),
        "l_shin": 6 - 10 * max(0.0, -math.sin(beat)),
    }
    return angles, 10 * abs(math.sin(beat)), 24 * math.sin(beat / 4)


def make_photo(path: Path) -> Path:
    image = _background((235, 228, 215), (200, 190, 175), floor=600)
    draw_person(image, CHARACTER, SIZE[1] / 2, STANDING)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def beat_audio() -> np.ndarray:
    """A kick on every beat and a hi-hat between: mono float32 samples."""
    count = int(SECONDS * SAMPLE_RATE)
    audio = np.zeros(count, np.float32)
    rng = np.random.default_rng(0)
    period = SAMPLE_RATE * 60 / BPM
    kick_len = int(0.15 * SAMPLE_RATE)
    k = np.arange(kick_len) / SAMPLE_RATE
    kick = np.sin(2 * np.pi * (110 * k - 150 * k**2)) * np.exp(-k * 25)
    hat = rng.standard_normal(int(0.04 * SAMPLE_RATE)) * np.exp(-np.arange(int(0.04 * SAMPLE_RATE)) / 300) * 0.2
    for n in range(int(SECONDS * BPM / 60) + 1):
        for offset, sound in ((0.0, kick * 0.8), (0.5, hat)):
            start = int((n + offset) * period)
            end = min(count, start + len(sound))
            if start < count:
                audio[start:end] += sound[: end - start]
    return np.clip(audio, -1, 1)


def make_dance(path: Path) -> Path:
    background = _background((70, 90, 120), (30, 40, 60), floor=620)
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as output:
        video = output.add_stream("libx264", rate=FPS)
        video.width, video.height = SIZE[1], SIZE[0]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "30", "preset": "veryslow"}
        audio = output.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        for index in range(int(SECONDS * FPS)):
            angles, bounce, sway = dance_pose(index / FPS)
            frame = background.copy()
            draw_person(frame, DANCER, SIZE[1] / 2 + sway, angles, bounce)
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                output.mux(packet)
        for packet in video.encode():
            output.mux(packet)
        samples = beat_audio()
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate = SAMPLE_RATE
            chunk.pts = start
            chunk.time_base = Fraction(1, SAMPLE_RATE)
            for packet in audio.encode(chunk):
                output.mux(packet)
        for packet in audio.encode():
            output.mux(packet)
    return path


if __name__ == "__main__":
    print(make_photo(ASSETS / "character.jpg"))
    print(make_dance(ASSETS / "dance.mp4"))
