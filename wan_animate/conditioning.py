"""`Conditioning`: the one hand-off from preprocessing to generation.

It holds exactly what Wan2.2-Animate is fed (see ``WAN_ANIMATE_CONTRACT.md``), checks itself, and can be
saved to and loaded from a folder in the upstream layout (``src_ref.png``, ``src_pose.mp4``,
``src_face.mp4`` and, for Replacement, ``src_bg.mp4`` and ``src_mask.mp4``), so conditioning made by the
upstream scripts can be used here and ours can be inspected. `Conditioning.load` decodes the videos into
arrays; `Conditioning.open` leaves them in their files and generation decodes one segment's frames at a time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Literal, Mapping

import cv2
import numpy as np
from PIL import Image

from .errors import WanAnimateError
from .video import FAST_PRESET, VideoFrames, probe_video, read_image, write_video

Mode = Literal["animate", "replace"]
MODES: tuple[Mode, ...] = ("animate", "replace")

FACE_SIZE = 512
"""Side of the square face crops the motion encoder takes (contract: "Face video")."""

SIZE_MULTIPLE = 16
"""Output sides are multiples of 16 (VAE stride 8 times the transformer's 2x2 patches)."""

REFERENCE_FILE = "src_ref.png"
POSE_FILE = "src_pose.mp4"
FACE_FILE = "src_face.mp4"
BACKGROUND_FILE = "src_bg.mp4"
MASK_FILE = "src_mask.mp4"
METADATA_FILE = "conditioning.json"


@dataclass(eq=False)
class Conditioning:
    """Model-ready inputs for one job.

    The frame fields are uint8 arrays, or `VideoFrames` (their files, read on demand) in a conditioning made by
    `Conditioning.open`.

    Attributes:
        mode: ``"animate"`` (the character performs the video's motion) or ``"replace"`` (the character
            replaces the person in the video).
        reference_image: ``(h, w, 3)`` uint8 RGB character photo; the pipeline letterboxes it to the output size.
        pose_frames: ``(T, H, W, 3)`` uint8 RGB skeleton frames; ``(H, W)`` is the output size.
        face_frames: ``(T, 512, 512, 3)`` uint8 RGB face crops.
        fps: Frame rate of every video here; the output is written at this rate.
        background_frames: Replacement only: ``(T, H, W, 3)`` uint8 frames with the person blacked out.
        mask_frames: Replacement only: ``(T, H, W)`` uint8, 1 = region the model regenerates, 0 = kept.
        audio_source: A media file whose sound is carried over to the result, or ``None``.
        audio_start: Second of ``audio_source`` at which the first frame starts (for trimmed clips).
    """

    mode: Mode
    reference_image: np.ndarray
    pose_frames: np.ndarray | VideoFrames
    face_frames: np.ndarray | VideoFrames
    fps: float
    background_frames: np.ndarray | VideoFrames | None = None
    mask_frames: np.ndarray | VideoFrames | None = None
    audio_source: Path | None = None
    audio_start: float = 0.0

    def __post_init__(self) -> None:
        if self.audio_source is not None:
            self.audio_source = Path(self.audio_source)
        self.validate()

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return int(self.pose_frames.shape[0])

    @property
    def height(self) -> int:
        """Output height H."""
        return int(self.pose_frames.shape[1])

    @property
    def width(self) -> int:
        """Output width W."""
        return int(self.pose_frames.shape[2])

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_frames / self.fps

    def validate(self) -> None:
        """Check every array against what the model expects (shapes and types only for `VideoFrames`).

        Raises:
            WanAnimateError: One message per problem found, all of them listed.
        """
        problems = list(self._problems())
        if problems:
            raise WanAnimateError("Invalid conditioning:\n- " + "\n- ".join(problems))

    def _problems(self):
        basic = [
            *_check_frames("reference_image", self.reference_image, ndim=3),
            *_check_frames("pose_frames", self.pose_frames, ndim=4),
            *_check_frames("face_frames", self.face_frames, ndim=4),
        ]
        if self.mode not in MODES:
            basic.append(f"mode must be one of {MODES}, got {self.mode!r}")
        if not (isinstance(self.fps, (int, float)) and np.isfinite(self.fps) and self.fps > 0):
            basic.append(f"fps must be a positive number, got {self.fps!r}")
        if basic:  # the checks below need well-formed arrays
            yield from basic
            return
        if self.num_frames < 1:
            yield "pose_frames is empty: at least one frame is needed"
        height, width = self.pose_frames.shape[1:3]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            yield f"pose_frames are {width}x{height}; both sides must be multiples of {SIZE_MULTIPLE}"
        if self.face_frames.shape[1:3] != (FACE_SIZE, FACE_SIZE):
            yield f"face_frames must be {FACE_SIZE}x{FACE_SIZE}, got {self.face_frames.shape[2]}x{self.face_frames.shape[1]}"
        if len(self.face_frames) != self.num_frames:
            yield f"face_frames has {len(self.face_frames)} frames but pose_frames has {self.num_frames}"
        if self.mode == "animate":
            for name in ("background_frames", "mask_frames"):
                if getattr(self, name) is not None:
                    yield f"{name} is only used in replace mode; leave it out for animate"
            return
        if self.background_frames is None or self.mask_frames is None:
            yield "replace mode needs both background_frames and mask_frames"
            return
        yield from _check_frames("background_frames", self.background_frames, ndim=4)
        if not isinstance(self.mask_frames, FRAME_TYPES) or self.mask_frames.ndim != 3 or self.mask_frames.dtype != np.uint8:
            yield f"mask_frames must be a (T, H, W) uint8 array, got {getattr(self.mask_frames, 'dtype', type(self.mask_frames).__name__)} {getattr(self.mask_frames, 'shape', '')}"
        # A mask read from its file is thresholded to 0/1 frame by frame (`mask_from_rgb`).
        elif isinstance(self.mask_frames, np.ndarray) and self.mask_frames.size and self.mask_frames.max() > 1:
            yield "mask_frames must hold only 0 (kept) and 1 (regenerated)"
        else:
            for name, frames in (("background_frames", self.background_frames), ("mask_frames", self.mask_frames)):
                if frames.shape[:3] != self.pose_frames.shape[:3]:
                    yield f"{name} has shape {frames.shape[:3]}, but pose_frames has {self.pose_frames.shape[:3]} (T, H, W)"

    def save(self, folder: str | Path, *, encoded: Mapping[str, Path] | None = None) -> Path:
        """Write the conditioning in the upstream layout (mp4 videos at ``fps``, png reference).

        The folder is written whole or not at all: files go to a temporary folder that is moved into place.

        Args:
            folder: The folder to write.
            encoded: Videos of this conditioning that are already encoded, by file name (``{POSE_FILE: path}``;
                preprocessing encodes them while it works on): moved into the folder instead of encoded again.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        encoded = dict(encoded or {})

        def write(name: str, frames) -> None:
            if name in encoded:
                shutil.move(encoded.pop(name), staging / name)
            else:  # x264's veryfast preset at crf 18 (why: FAST_PRESET)
                write_video(staging / name, frames, fps=self.fps, preset=FAST_PRESET)

        try:
            Image.fromarray(self.reference_image).save(staging / REFERENCE_FILE)
            write(POSE_FILE, self.pose_frames)
            write(FACE_FILE, self.face_frames)
            if self.mode == "replace":
                write(BACKGROUND_FILE, self.background_frames)
                write(MASK_FILE, mask_video_frames(self.mask_frames))
            if encoded:
                raise ValueError(f"encoded videos that are not part of {self.mode} conditioning: {sorted(encoded)}")
            metadata = {"mode": self.mode, "fps": self.fps, "num_frames": self.num_frames, "audio_start": self.audio_start}
            if self.audio_source is not None:
                metadata["audio_source"] = str(self.audio_source)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
            if folder.exists():
                shutil.rmtree(folder)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, mode: Mode | None = None, fps: float | None = None) -> "Conditioning":
        """Read a conditioning folder written by `save` or by the upstream preprocessing scripts into memory.

        Args:
            folder: Folder holding ``src_ref.png``, ``src_pose.mp4``, ``src_face.mp4`` and, for Replacement,
                ``src_bg.mp4`` and ``src_mask.mp4``.
            mode: ``"animate"`` or ``"replace"``; by default ``"replace"`` when the background and mask files
                are there.
            fps: Frame rate; by default the one recorded by `save`, else the pose video's own rate.

        Raises:
            WanAnimateError: A file is missing or the contents don't fit together.
        """
        lazy = cls.open(folder, mode=mode, fps=fps)
        arrays = {name: np.asarray(getattr(lazy, name)) for name in VIDEO_FIELDS if getattr(lazy, name) is not None}
        return replace(lazy, **arrays)

    @classmethod
    def open(cls, folder: str | Path, *, mode: Mode | None = None, fps: float | None = None) -> "Conditioning":
        """Like `load`, but the videos stay in their files: every frame field is a `VideoFrames`.

        Frames are decoded when generation reads them, one segment at a time, so memory does not grow with
        the clip's length. Only the headers (and each video's first frame) are read here.

        Raises:
            WanAnimateError: A file is missing or the contents don't fit together.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise WanAnimateError(f"Conditioning folder not found: {folder}")
        metadata = json.loads((folder / METADATA_FILE).read_text()) if (folder / METADATA_FILE).is_file() else {}
        has_replacement = (folder / BACKGROUND_FILE).is_file() and (folder / MASK_FILE).is_file()
        mode = mode or metadata.get("mode") or ("replace" if has_replacement else "animate")
        for name in (REFERENCE_FILE, POSE_FILE, FACE_FILE) + ((BACKGROUND_FILE, MASK_FILE) if mode == "replace" else ()):
            if not (folder / name).is_file():
                raise WanAnimateError(f"{folder} has no {name}, which {mode} mode needs")
        pose = VideoFrames(folder / POSE_FILE)
        background = mask = None
        if mode == "replace":
            background = VideoFrames(folder / BACKGROUND_FILE)
            mask_info = probe_video(folder / MASK_FILE)
            mask = VideoFrames(folder / MASK_FILE, transform=mask_from_rgb, frame_shape=(mask_info.height, mask_info.width))
        return cls(
            mode=mode,
            reference_image=read_image(folder / REFERENCE_FILE),
            pose_frames=pose,
            face_frames=VideoFrames(folder / FACE_FILE),
            fps=float(fps or metadata.get("fps") or probe_video(folder / POSE_FILE).fps),
            background_frames=background,
            mask_frames=mask,
            audio_source=metadata.get("audio_source"),
            audio_start=float(metadata.get("audio_start", 0.0)),
        )


VIDEO_FIELDS = ("pose_frames", "face_frames", "background_frames", "mask_frames")
"""The conditioning's video fields, in the order they are read and fingerprinted."""
FRAME_TYPES = (np.ndarray, VideoFrames)
"""What a frame field may be: frames in memory, or frames in their file."""


def mask_from_rgb(frames: np.ndarray) -> np.ndarray:
    """A mask video's RGB frame(s) ``(..., 3)`` back to 0/1: compression blurs the 0/255 edges slightly."""
    return (frames.mean(axis=-1) >= 128).astype(np.uint8)


def mask_video_frames(masks: np.ndarray) -> Iterator[np.ndarray]:
    """The mask video's frames: white (255) where the mask is 1 (regenerated), black elsewhere, RGB.

    Made one at a time by OpenCV, which releases the GIL (preprocessing encodes this video beside others).
    """
    return (cv2.cvtColor(np.multiply(mask, 255, dtype=np.uint8), cv2.COLOR_GRAY2RGB) for mask in masks)


def _check_frames(name: str, array: object, *, ndim: int):
    if not isinstance(array, FRAME_TYPES if ndim == 4 else np.ndarray):
        yield f"{name} must be a numpy array, got {type(array).__name__}"
    elif array.dtype != np.uint8:
        yield f"{name} must be uint8 RGB, got {array.dtype}"
    elif array.ndim != ndim or array.shape[-1] != 3:
        expected = "(H, W, 3)" if ndim == 3 else "(T, H, W, 3)"
        yield f"{name} must have shape {expected}, got {array.shape}"
