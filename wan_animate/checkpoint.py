"""A job's state between calls: what a stopped job needs to go on from its last finished segment.

`wan_animate.generate.generate_video` writes it into the job's state folder after every segment, beside the
segment's mp4 (``segment_0000.mp4``, ...): which job it is (a fingerprint of the conditioning and of every
setting that changes the frames), the seed, the segments done, the last frames of the last segment as the VAE
decoded them (after colour matching: they condition the next segment), the state of the job's random
generator, and the measured times. A later call with the same job and folder goes on from there and gives the
video an uninterrupted run gives. The file is replaced whole (written beside it, then moved), so a crash leaves
the previous state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .conditioning import VIDEO_FIELDS, Conditioning
from .errors import WanAnimateError


@dataclass
class SegmentTimes:
    """Measured seconds of one segment (stored in the checkpoint, used for estimates).

    Attributes:
        inputs: Waiting for the segment's conditioning frames (read and preprocessed on a worker thread while
            the previous segment ran: the part that did not overlap).
        encode: VAE encodes of the skeleton frames and the conditioning video.
        steps: Each denoising step.
        decode: VAE decode, colour matching and the copy of the frames to the host.
        write: Encoding the segment's mp4 and re-assembling the output (on a worker thread, overlapping the
            next segment).
        total: Wall time of the segment on the main thread.
    """

    inputs: float = 0.0
    encode: float = 0.0
    steps: list[float] = field(default_factory=list)
    decode: float = 0.0
    write: float = 0.0
    total: float = 0.0


CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


def segment_file(state_dir: str | Path, index: int) -> Path:
    """The mp4 of segment ``index`` in a state folder."""
    return Path(state_dir) / f"segment_{index:04d}.mp4"


def job_fingerprint(conditioning: Conditioning, settings: dict[str, Any]) -> str:
    """A short hash naming a job: its conditioning and the settings that change its frames.

    The conditioning is named by its mode, size, length and frame rate, the reference photo, and the first
    frame of each video (reading a whole clip to hash it would cost what the lazy conditioning saves). The
    weights are not part of it: resume a job with the pipeline that started it.

    Args:
        conditioning: The job's inputs.
        settings: Plain values (JSON) of every setting that changes the frames.
    """
    digest = hashlib.sha256()
    described = {
        "mode": conditioning.mode,
        "frames": conditioning.num_frames,
        "size": [conditioning.height, conditioning.width],
        "fps": conditioning.fps,
        "settings": settings,
    }
    digest.update(json.dumps(described, sort_keys=True, default=repr).encode())
    digest.update(np.ascontiguousarray(conditioning.reference_image).tobytes())
    for name in VIDEO_FIELDS:
        frames = getattr(conditioning, name)
        if frames is not None:
            digest.update(np.ascontiguousarray(frames[0]).tobytes())
    return digest.hexdigest()[:32]


@dataclass
class Checkpoint:
    """What a job that stopped needs to go on.

    Attributes:
        fingerprint: `job_fingerprint` of the job.
        seed: The job's seed.
        segments_done: Finished segments (their mp4s are in the state folder).
        segments_total: Segments of the whole job.
        overlap: ``(1, 3, overlap_frames, H, W)`` the last segment's last frames as the VAE decoded them
            (after colour matching), on the CPU; ``None`` before the first segment.
        generator_state: The job generator's state after ``segments_done`` segments.
        times: Measured seconds of each finished segment (stored as dicts).
    """

    fingerprint: str
    seed: int
    segments_done: int
    segments_total: int
    overlap: torch.Tensor | None
    generator_state: torch.Tensor
    times: list[SegmentTimes] = field(default_factory=list)

    def save(self, state_dir: str | Path) -> Path:
        """Write the checkpoint into ``state_dir``, replacing the previous one whole."""
        path = Path(state_dir) / CHECKPOINT_FILE
        partial = path.with_name(f".{path.name}.partial")
        torch.save({"version": FORMAT_VERSION, **asdict(self)}, partial)
        partial.replace(path)
        return path

    @classmethod
    def load(cls, state_dir: str | Path, *, fingerprint: str, seed: int | None) -> "Checkpoint | None":
        """The checkpoint of this job in ``state_dir``, or ``None`` when it holds none.

        Args:
            state_dir: The job's state folder.
            fingerprint: `job_fingerprint` of the job about to run.
            seed: The job's seed, or ``None`` to take the checkpoint's.

        Raises:
            WanAnimateError: The folder holds the state of another job, or its segment files are missing.
        """
        state_dir = Path(state_dir)
        path = state_dir / CHECKPOINT_FILE
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a file of another version or a damaged one: say so, do not guess
            raise WanAnimateError(f"{path} could not be read ({error}). Delete {state_dir} to start the job again.") from error
        if stored.pop("version", None) != FORMAT_VERSION:
            raise WanAnimateError(f"{path} was written by another version. Delete {state_dir} to start the job again.")
        stored["times"] = [SegmentTimes(**times) for times in stored.get("times", [])]
        checkpoint = cls(**stored)
        if checkpoint.fingerprint != fingerprint or (seed is not None and seed != checkpoint.seed):
            raise WanAnimateError(
                f"{state_dir} holds the state of another job (other conditioning, settings or seed: seed "
                f"{checkpoint.seed}). Use an empty folder for this job, or the same inputs and settings to go on with that one."
            )
        missing = [segment_file(state_dir, index).name for index in range(checkpoint.segments_done) if not segment_file(state_dir, index).is_file()]
        if missing:
            raise WanAnimateError(f"{state_dir} lacks {', '.join(missing)}. Delete the folder to start the job again.")
        return checkpoint


__all__ = ["CHECKPOINT_FILE", "Checkpoint", "SegmentTimes", "job_fingerprint", "segment_file"]
