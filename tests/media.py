"""Small synthetic media files for tests: videos with a frame counter drawn in, sine-wave sound, photos."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def counter_frames(count: int, height: int = 64, width: int = 96) -> np.ndarray:
    """Frames whose mean brightness encodes their index (frame i is filled with grey level 8 * i % 256)."""
    levels = (np.arange(count) * 8 % 256).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).copy()


def frame_index(frame: np.ndarray) -> int:
    """Inverse of `counter_frames` for one decoded frame (valid for fewer than 32 frames)."""
    return int(round(float(frame.mean()) / 8))


def write_test_video(
    path: Path,
    frames: np.ndarray,
    fps: float,
    *,
    audio_seconds: float | None = None,
    codec: str = "libx264",
    container_format: str | None = None,
) -> Path:
    """Write frames (and optionally a 440 Hz tone of the given length) losslessly enough for index checks."""
    with av.open(str(path), mode="w", format=container_format) as output:
        stream = output.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "0"}
        audio = None
        if audio_seconds:
            audio = output.add_stream("aac", rate=48000)
            audio.layout = "mono"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
        if audio is not None:
            encode_tone(output, audio, audio_seconds)
    return path


def encode_tone(output: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    """Encode ``seconds`` of a 440 Hz tone into ``stream`` (mono AAC at 48 kHz) of ``output``."""
    samples = int(seconds * 48000)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
    for start in range(0, samples, 1024):
        chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
        chunk.sample_rate = 48000
        chunk.pts = start
        for packet in stream.encode(chunk):
            output.mux(packet)
    for packet in stream.encode():
        output.mux(packet)


def audio_duration(path: Path) -> float:
    """Seconds of decoded audio in a file (0 if it has none)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return 0.0
        samples = sum(frame.samples for frame in container.decode(audio=0))
        return samples / container.streams.audio[0].codec_context.sample_rate


def video_facts(path: Path) -> dict:
    """Codec, pixel format, size, rate and decoded frame count of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        facts = {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate),
            "has_audio": bool(container.streams.audio),
        }
        facts["frames"] = sum(1 for _ in container.decode(video=0))
    return facts
