"""Video and image I/O: decoding with frame-rate resampling, browser-playable H.264 encoding, photos.

Every frame in this package is an RGB ``uint8`` array of shape ``(H, W, 3)``; a clip is ``(T, H, W, 3)``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import av
import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import WanAnimateError
from .progress import ProgressCallback
from .validation import FPS, MAX_SECONDS, check_trim

logger = logging.getLogger("wan_animate")

MAX_FRAME_SIDE = 4096
"""Largest accepted side of a driving video or photo, in pixels (4K UHD is 3840 x 2160)."""

DEFAULT_MAX_SECONDS = 30.0
"""Longest driving clip accepted by default, in seconds."""

# Photos with transparency are composited onto this colour: a neutral white studio background.
ALPHA_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, read from its headers (sizes as displayed, i.e. after rotation)."""

    width: int
    height: int
    fps: float
    duration: float
    has_audio: bool


@dataclass(frozen=True)
class Clip:
    """Decoded, resampled frames of a driving video.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB frames at ``fps``, resized if a size was asked for.
        fps: Frame rate of ``frames``.
        source_size: ``(height, width)`` of the video as displayed, before any resizing.
        start: Offset in seconds of the first frame in the source file (for cutting its audio).
    """

    frames: np.ndarray
    fps: float
    source_size: tuple[int, int]
    start: float


def _unreadable_video(path: Path, error: Exception) -> WanAnimateError:
    """The user's sentence for a file FFmpeg cannot read; the path and FFmpeg's error code go to the log only."""
    logger.warning("FFmpeg could not read %s: %s", path, error)
    return WanAnimateError(
        f"Could not read {path.name} as a video: the file is damaged, incomplete or not a video. "
        "Try an mp4, mov, webm or mkv file."
    )


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        logger.warning("Video file not found: %s", path)
        raise WanAnimateError(f"The video file {path.name} was not found. Upload or choose it again.")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise _unreadable_video(path, error) from None


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's size, frame rate, duration and whether it has sound, without decoding it.

    Raises:
        WanAnimateError: The file is missing, unreadable, or has no video stream.
    """
    with _open(path) as container:
        if not container.streams.video:
            raise WanAnimateError(f"{Path(path).name} has no video stream (is it a sound file?). Use a video with a person in it.")
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            raise WanAnimateError(f"{Path(path).name} is a still image, not a video. Upload the driving video here.")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = (stream.frames or 0) / fps
        width, height = stream.codec_context.width, stream.codec_context.height
        try:
            rotation = _stream_rotation(container)
        except av.error.FFmpegError as error:
            raise _unreadable_video(Path(path), error) from None
        if rotation % 180:
            width, height = height, width
        return VideoInfo(width=width, height=height, fps=fps, duration=duration, has_audio=bool(container.streams.audio))


def _stream_rotation(container: av.container.InputContainer) -> int:
    """Rotation in degrees of the first video stream, from its display matrix (0 if unknown)."""
    for frame in container.decode(video=0):
        return int(getattr(frame, "rotation", 0) or 0)
    return 0


def round_half_even(value: float) -> int:
    """Round as ``numpy.round`` does (halves to even), which the contract's frame-index rule uses."""
    return int(np.round(value))


def resample_indices(num_source: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Source frame index for every output frame, resampling by nearest frame.

    Contract ("Size, frame rate, segments"): output frame ``t`` for ``t = 0 .. floor(n / source_fps *
    target_fps) - 1`` takes source frame ``round(t / target_fps * source_fps)``, clipped to the last frame.
    """
    num_output = math.floor(num_source / source_fps * target_fps + 1e-9)
    t = np.arange(num_output)
    return np.minimum(np.round(t / target_fps * source_fps).astype(np.int64), num_source - 1)


def _decoded_frames(container: av.container.InputContainer, path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(time in seconds, RGB frame)`` for every frame of the first video stream, rotation applied.

    Raises:
        WanAnimateError: The stream breaks off or is damaged part-way (naming ``path``'s file).
    """
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            image = frame.to_ndarray(format="rgb24")
            # The display matrix gives the counter-clockwise rotation needed to show the frame upright.
            rotation = int(getattr(frame, "rotation", 0) or 0) % 360
            if rotation:
                image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))
            yield float(frame.pts * stream.time_base), image
    except av.error.FFmpegError as error:
        raise _unreadable_video(path, error) from None


def read_video(
    path: str | Path,
    *,
    fps: float | None = 30.0,
    start: float = 0.0,
    end: float | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    size: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
    max_side: int = MAX_FRAME_SIDE,
    progress: ProgressCallback | None = None,
) -> Clip:
    """Decode a whole clip into memory at ``size``; see `iter_video` for the arguments.

    Returns:
        The decoded clip.
    """
    info = probe_video(path)
    frames = list(iter_video(path, fps=fps, start=start, end=end, max_seconds=max_seconds, size=size, max_side=max_side, progress=progress))
    return Clip(
        frames=np.stack(frames),
        fps=float(fps or info.fps),
        source_size=(info.height, info.width),
        start=float(start),
    )


def iter_video(
    path: str | Path,
    *,
    fps: float | None = 30.0,
    start: float = 0.0,
    end: float | None = None,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    size: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
    max_side: int = MAX_FRAME_SIDE,
    progress: ProgressCallback | None = None,
) -> Iterator[np.ndarray]:
    """Decode a video as a stream, resampling to ``fps`` and resizing each frame as it arrives.

    The clip is never held at its source size: each decoded frame is resized to ``size`` before it is
    yielded, so a 4K clip costs one source frame at a time. Decoding the same file twice with the same
    arguments yields the same frames.

    Args:
        path: Any file FFmpeg reads (mp4, mov, webm, mkv, ...); rotation metadata is applied.
        fps: Output frame rate (nearest-frame resampling, see `resample_indices`); ``None`` keeps every
            source frame at the source's average rate.
        start: First second of the source to use.
        end: Last second (exclusive) of the source to use; ``None`` for the end of the file.
        max_seconds: Longest accepted clip after trimming; ``None`` for no limit.
        size: ``(height, width)`` to resize every frame to, or a function of the source ``(height, width)``
            returning it; ``None`` keeps the source size.
        max_side: Largest accepted source side in pixels.
        progress: Called as frames are decoded.

    Yields:
        RGB uint8 frames.

    Raises:
        WanAnimateError: Unreadable or empty file, clip over ``max_seconds``, or frames over ``max_side``.
    """
    start, end = check_trim(start, end)
    if fps is not None:
        FPS.check(fps)
    if max_seconds is not None:
        MAX_SECONDS.check(max_seconds)
    info = probe_video(path)
    if max(info.width, info.height) > max_side:
        raise WanAnimateError(
            f"The video {Path(path).name} is {info.width}x{info.height}; the largest side accepted is {max_side} px. "
            "Downscale it (e.g. to 1080p) and try again."
        )
    clip_end = info.duration if end is None else min(end, info.duration)
    if max_seconds is not None and clip_end - start > max_seconds + 1e-6:
        raise WanAnimateError(
            f"The clip of {Path(path).name} is {clip_end - start:.1f} s long; the limit is {max_seconds:g} s. "
            "Trim it with the start and end settings."
        )
    target_size = size(info.height, info.width) if callable(size) else size

    def resized(image: np.ndarray) -> np.ndarray:
        if target_size is None or image.shape[:2] == tuple(target_size):
            return image
        interpolation = cv2.INTER_AREA if target_size[0] < image.shape[0] else cv2.INTER_LINEAR
        return cv2.resize(image, (target_size[1], target_size[0]), interpolation=interpolation)

    source_fps = info.fps
    expected = max(1, round((clip_end - start) * (fps or source_fps)))
    emitted = 0  # output frames yielded
    seen = 0  # source frames in range so far
    # Recent source frames that a pending output frame may still take: [index, frame, resized frame or None].
    window: deque[list] = deque()

    def take(index: int) -> np.ndarray:
        for entry in window:
            if entry[0] == index:
                if entry[2] is None:
                    entry[2] = resized(entry[1])
                return entry[2]
        raise AssertionError(f"source frame {index} left the window too early")

    with _open(path) as container:
        if start > 0:
            container.seek(int(start * av.time_base), backward=True, any_frame=False)
        for time, image in _decoded_frames(container, Path(path)):
            if time < start - 1e-6:
                continue
            if end is not None and time >= end - 1e-6:
                break
            if max_seconds is not None and time - start > max_seconds + 1.0:
                raise WanAnimateError(
                    f"The clip of {Path(path).name} is longer than {max_seconds:g} s. Trim it with the start and end settings."
                )
            seen += 1
            if fps is None:
                yield resized(image)
                emitted += 1
            else:
                window.append([seen - 1, image, None])
                # Streamed `resample_indices`: output frame t takes source frame round(t / fps * source_fps).
                # It is emitted once that frame has arrived and t is sure to be inside the final count
                # floor(n / source_fps * fps), which can only grow with n. Variable-frame-rate files are
                # indexed at their average rate, as upstream does.
                while emitted < math.floor(seen / source_fps * fps + 1e-9):
                    index = round_half_even(emitted / fps * source_fps)
                    if index >= seen:
                        break
                    yield take(index)
                    emitted += 1
                oldest_needed = round_half_even(emitted / fps * source_fps)
                while len(window) > 1 and window[0][0] < oldest_needed:
                    window.popleft()
            if progress is not None:
                progress(min(emitted, expected), expected, "Decoding video")
    if seen == 0:
        where = " in the chosen range" if start > 0 or end is not None else ""
        raise WanAnimateError(f"{Path(path).name} has no video frames{where}.")
    if fps is not None:
        num_output = max(1, math.floor(seen / source_fps * fps + 1e-9))
        while emitted < num_output:  # indices past the end are clipped to the last frame
            yield take(min(round_half_even(emitted / fps * source_fps), seen - 1))
            emitted += 1


class VideoFrames:
    """A video file as a read-only array of its frames, decoded on demand.

    It has what generation reads of a frame array -- ``shape``, ``dtype``, ``ndim``, ``len()``, indexing by a
    number, a slice or an array of numbers, iteration and ``np.asarray`` -- without holding the clip: a read
    decodes just the frames asked for. Reads that move forward (one segment after the other, each starting a
    few frames before the last one ended) continue the same decode; only a read before the recently decoded
    frames starts the file again. Frames are every decoded frame in order, as ``read_video(path, fps=None)``
    gives them, each passed through ``transform`` (e.g. RGB -> a 0/1 mask). Safe to share between threads;
    pickled as its path, so another process reopens the file.

    Args:
        path: The video file.
        transform: Applied to every decoded ``(H, W, 3)`` RGB frame; ``frame_shape`` is what it returns.
        frame_shape: Shape of one frame after ``transform``; ``(H, W, 3)`` from the file when ``None``.
        num_frames: The frame count when known (e.g. recorded beside the file); else counted from the
            container without decoding.
    """

    RECENT_FRAMES = 8
    """Decoded frames kept for a following read that starts a little before the last one ended (the segment
    overlap is 1 or 5 frames)."""

    def __init__(
        self,
        path: str | Path,
        *,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        frame_shape: tuple[int, ...] | None = None,
        num_frames: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.transform = transform
        info = probe_video(self.path)
        self.shape = (num_frames if num_frames is not None else _count_frames(self.path), *(frame_shape or (info.height, info.width, 3)))
        self.dtype = np.dtype(np.uint8)
        self._lock = threading.Lock()
        self._container: av.container.InputContainer | None = None
        self._decoder: Iterator[tuple[float, np.ndarray]] | None = None
        self._next = 0  # index of the frame the decoder yields next
        self._recent: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"VideoFrames({self.path.name!r}, shape={self.shape})"

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"frame {key} out of range for {len(self)} frames")
            return self.take([index])[0]
        if isinstance(key, slice):
            return self.take(range(*key.indices(len(self))))
        return self.take(np.asarray(key, dtype=np.int64))

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self), self.RECENT_FRAMES):
            yield from self.take(range(start, min(start + self.RECENT_FRAMES, len(self))))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self.take(range(len(self)))
        return frames if dtype is None else frames.astype(dtype)

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The frames at ``indices`` (any order, repeats allowed), stacked; decoded in increasing order once each."""
        indices = [int(index) for index in indices]
        if any(not 0 <= index < len(self) for index in indices):
            raise IndexError(f"frame indices must be in [0, {len(self)})")
        with self._lock:
            found = {index: self._frame(index) for index in sorted(set(indices))}
        if not indices:
            return np.empty((0, *self.shape[1:]), self.dtype)
        return np.stack([found[index] for index in indices])

    def close(self) -> None:
        """Close the decoder (a later read opens the file again)."""
        with self._lock:
            self._close()

    def _frame(self, index: int) -> np.ndarray:
        if index in self._recent:
            return self._recent[index]
        if index < self._next:  # behind the decoder and no longer kept: decode from the start again
            self._close()
        if self._decoder is None:
            self._container = _open(self.path)
            self._decoder = _decoded_frames(self._container, Path(self.path))
            self._next = 0
        while self._next <= index:
            item = next(self._decoder, None)
            if item is None:
                decoded = self._next
                self._close()
                raise WanAnimateError(
                    f"{self.path.name} ends after {decoded} frames but {len(self)} were expected; "
                    "the conditioning files do not fit together. Extract the conditioning again."
                )
            frame = item[1] if self.transform is None else self.transform(item[1])
            self._recent[self._next] = frame
            if len(self._recent) > self.RECENT_FRAMES:
                self._recent.popitem(last=False)
            self._next += 1
        return self._recent[index]

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._decoder = None
        self._next = 0
        self._recent.clear()

    def __getstate__(self) -> dict:
        return {"path": self.path, "transform": self.transform, "shape": self.shape}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], transform=state["transform"], frame_shape=state["shape"][1:], num_frames=state["shape"][0])


def _count_frames(path: Path) -> int:
    """Frames of the first video stream: from the container's header, else by reading its packets (no decoding)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


FAST_PRESET = "veryfast"
"""x264 preset of the conditioning and preview videos: on skeleton frames at crf 18, 1.8x faster than ``medium``
with nearly the same mean error (0.24 vs 0.20 levels of 255) and 4 % smaller files (`benchmarks/bench_encode.py`)."""


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray] | np.ndarray,
    fps: float,
    *,
    audio_source: str | Path | None = None,
    audio_start: float = 0.0,
    crf: int = 18,
    preset: str = "medium",
) -> Path:
    """Encode frames as H.264 (yuv420p, faststart) in an mp4 that browsers play, with optional sound.

    Args:
        path: Output ``.mp4`` path; written to a temporary name first so a failure leaves nothing behind.
        frames: RGB uint8 frames, all the same size with even sides.
        fps: Frame rate to write; must equal the conditioning's rate so motion keeps its speed.
        audio_source: A media file whose first audio stream is carried over (re-encoded to AAC), if it has one.
        audio_start: Second of ``audio_source`` at which the video's first frame starts.
        crf: x264 quality (lower is better; 18 is visually lossless).
        preset: x264 speed preset; `FAST_PRESET` for intermediate files (see there for its cost).

    Returns:
        ``path``.
    """
    path = Path(path)
    rate = _rate(fps)
    with _mp4_in_place(path) as output:
        video = output.add_stream("libx264", rate=rate)
        video.pix_fmt = "yuv420p"
        # mbtree off: libx264's macroblock-tree pass reads uninitialised memory, so the same frames encoded to
        # different bits from run to run (2 to 5 variants in 40 encodes here); without it every encode of the same
        # frames is the same file (400 of 400), for 8-30 % more bytes at the same crf.
        video.options = {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
        # Streams must all exist before the first packet is written.
        audio = _add_audio_stream(output, audio_source) if audio_source is not None else None
        count = 0
        for frame in frames:
            if count == 0:
                height, width = frame.shape[:2]
                if height % 2 or width % 2:
                    raise ValueError(f"H.264 in yuv420p needs even frame sides, got {width}x{height}")
                video.width, video.height = width, height
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in video.encode(picture):
                output.mux(packet)
            count += 1
        if count == 0:
            raise ValueError("write_video needs at least one frame")
        for packet in video.encode():
            output.mux(packet)
        if audio is not None:
            _copy_audio(output, audio, audio_source, audio_start, count / float(rate))
    return path


@contextmanager
def _mp4_in_place(path: Path) -> Iterator[av.container.OutputContainer]:
    """An mp4 (``+faststart``) written to a temporary name beside ``path`` and moved onto it once complete, so a
    reader of ``path`` sees the previous file or the new one, never a part-written one; nothing is left on error."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix or '.mp4'}")
    try:
        with av.open(str(partial), mode="w", format="mp4", options={"movflags": "+faststart"}) as output:
            yield output
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _add_audio_stream(output: av.container.OutputContainer, source: str | Path) -> av.audio.stream.AudioStream | None:
    """Add an AAC stream shaped like ``source``'s first audio stream, or return ``None`` if it has no sound."""
    with av.open(str(source)) as container:
        if not container.streams.audio:
            return None
        context = container.streams.audio[0].codec_context
        stream = output.add_stream("aac", rate=context.sample_rate or 48000)
        stream.layout = "stereo" if (context.channels or 2) >= 2 else "mono"
        return stream


def _copy_audio(
    output: av.container.OutputContainer,
    out_stream: av.audio.stream.AudioStream,
    source: str | Path,
    start: float,
    duration: float,
) -> None:
    """Re-encode ``source``'s first audio stream from ``start`` for ``duration`` seconds into ``out_stream``."""
    sample_rate = out_stream.codec_context.sample_rate
    layout = out_stream.layout.name
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
    first_sample = round(start * sample_rate)
    wanted = round(duration * sample_rate)
    written = 0
    with av.open(str(source)) as container:
        in_stream = container.streams.audio[0]
        if start > 0:
            container.seek(int(start * av.time_base), backward=True, any_frame=False)
        for frame in container.decode(in_stream):
            if frame.pts is None:
                continue
            chunk_start = round(float(frame.pts * in_stream.time_base) * sample_rate)
            for chunk in resampler.resample(frame):
                samples = chunk.to_ndarray()
                skip = max(0, first_sample - chunk_start)
                chunk_start += samples.shape[1]
                keep = min(samples.shape[1] - skip, wanted - written)
                if keep <= 0:
                    continue
                piece = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, skip : skip + keep]), format="fltp", layout=layout
                )
                piece.sample_rate = sample_rate
                piece.pts = written
                for packet in out_stream.encode(piece):
                    output.mux(packet)
                written += keep
            if written >= wanted:
                break
    for packet in out_stream.encode(None):
        output.mux(packet)


def write_side_by_side(
    path: str | Path,
    left: Iterable[np.ndarray],
    right: Iterable[np.ndarray],
    fps: float,
    *,
    audio_source: str | Path | None = None,
    audio_start: float = 0.0,
) -> Path:
    """Write ``left | right`` as one video, both scaled to the right's height (the driving clip beside the result).

    Both clips are read as the video is written (arrays or streams such as `iter_video`), so neither is held in
    memory. The video has as many frames as ``right``; should ``left`` end first (a decoder that yields one frame
    fewer), its last frame is held.
    """

    def fit(frame: np.ndarray, height: int) -> np.ndarray:
        width = max(2, round(frame.shape[1] * height / frame.shape[0] / 2) * 2)
        if frame.shape[:2] == (height, width):
            return frame
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)

    def pairs() -> Iterator[np.ndarray]:
        lefts = iter(left)
        shown = None
        for frame in right:
            shown = next(lefts, shown)
            if shown is None:
                raise ValueError("side by side needs at least one left frame")
            height = frame.shape[0]
            yield np.concatenate([fit(shown, height), fit(frame, height)], axis=1)

    return write_video(path, pairs(), fps, audio_source=audio_source, audio_start=audio_start)


def concat_videos(
    path: str | Path,
    parts: Sequence[str | Path],
    *,
    audio_source: str | Path | None = None,
    audio_start: float = 0.0,
) -> Path:
    """Join mp4 files written by `write_video` with the same size and rate into one, without re-encoding.

    The H.264 packets are copied with their times moved on by the frames before them. Each part's decode
    times start its own encoder delay early (x264 has none for a one-frame part), so decode times are
    renumbered with the largest delay of all parts: they then rise across every join and never pass a
    frame's presentation time. The sound of ``audio_source`` from ``audio_start`` is encoded for the joined
    length, as `write_video` does. Written to a temporary name and moved into place, so a reader of ``path``
    sees the previous file or the new one, never a part-written one.

    Raises:
        ValueError: No parts, or parts that differ in size, rate or encoder settings.
    """
    path = Path(path)
    if not parts:
        raise ValueError("concat_videos needs at least one part")
    inputs = [av.open(str(part)) for part in parts]
    try:
        streams = [container.streams.video[0] for container in inputs]
        first = streams[0]
        for part, stream in zip(parts, streams):
            same = (stream.time_base, stream.average_rate, stream.codec_context.extradata) == (
                first.time_base, first.average_rate, first.codec_context.extradata,
            )
            if not same:
                raise ValueError(f"{Path(part).name} differs from {Path(parts[0]).name} in size, rate or encoder settings")
        ticks = 1 / (first.time_base * first.average_rate)  # time-base units per frame
        if ticks.denominator != 1:
            raise ValueError(f"a frame lasts {ticks} time-base units; whole units are needed to join parts")
        delay = max(-_first_decode_time(part) for part in parts)
        with _mp4_in_place(path) as output:
            video = output.add_stream_from_template(first)
            audio = _add_audio_stream(output, audio_source) if audio_source is not None else None
            offset = count = 0
            for container, stream in zip(inputs, streams):
                for packet in container.demux(stream):
                    if not packet.size:  # the demuxer's end-of-stream marker
                        continue
                    packet.pts += offset
                    packet.dts = count * int(ticks) - delay
                    packet.stream = video
                    output.mux(packet)
                    count += 1
                offset = count * int(ticks)
            if audio is not None:
                _copy_audio(output, audio, audio_source, audio_start, float(count / first.average_rate))
    finally:
        for container in inputs:
            container.close()
    return path


def _first_decode_time(path: str | Path) -> int:
    """Decode time of a video's first packet: minus the encoder's delay, in time-base units."""
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            return int(packet.dts)
    raise ValueError(f"{Path(path).name} has no video packets")


def read_image(path: str | Path, *, max_side: int = MAX_FRAME_SIDE * 2) -> np.ndarray:
    """Read a photo as RGB uint8: EXIF orientation applied, alpha composited on white, any mode converted.

    The size is checked from the header, before the pixels are decoded.

    Raises:
        WanAnimateError: Missing or unreadable file, not an image, or larger than ``max_side``; the message names
            the file, the log has its path and the decoder's error.
    """
    path = Path(path)
    if not path.is_file():
        logger.warning("Image file not found: %s", path)
        raise WanAnimateError(f"The photo {path.name} was not found. Upload or choose it again.")
    try:
        with Image.open(path) as image:
            if max(image.size) > max_side:
                raise WanAnimateError(
                    f"The photo {path.name} is {image.width}x{image.height} px; the largest side accepted is "
                    f"{max_side} px. Downscale it and try again."
                )
            image.load()
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        logger.warning("Refused %s: %s", path, error)
        raise WanAnimateError(f"The photo {path.name} has too many pixels to read safely. Downscale it and try again.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        logger.warning("Could not read %s as an image: %s", path, error)
        raise WanAnimateError(
            f"Could not read {path.name} as an image: the file is damaged, incomplete or not a photo. "
            "Use a JPEG, PNG or WebP photo."
        ) from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL image mode to an RGB uint8 array (alpha composited onto `ALPHA_BACKGROUND`)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the used range down to 8 bits instead of clipping it.
        values = np.asarray(image, dtype=np.float64)
        top = values.max() if values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def has_alpha(path: str | Path) -> bool:
    """Whether a photo has a transparency channel (the app tells the user it was composited)."""
    with Image.open(path) as image:
        return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
