"""Job folders: one per extraction, so generation reuses the conditioning instead of extracting again.

A job folder holds the inputs (the driving video hard-linked or copied in, so its sound and the
side-by-side still work after an upload cache is cleared), the preprocessing output in the upstream
layout, the record of how it was made (``job.json``) and the results. A job is named by an opaque id that
the app hands to the browser or API client; `open_job` accepts only ids that name a folder under the root,
so a client cannot point the app at other files. Old folders are removed by `prune_jobs`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .conditioning import MODES, Conditioning, Mode
from .errors import WanAnimateError
from .video import iter_video, probe_video, write_side_by_side

RECORD_FILE = "job.json"
JOB_ID_PATTERN = re.compile(r"^(animate|replace)-[0-9a-f]{32}$")


@dataclass
class JobRecord:
    """How a job's conditioning was made.

    Attributes:
        mode: ``"animate"`` or ``"replace"``.
        photo: The character photo (inside the job folder).
        video: The driving video (inside the job folder).
        start: First second of the driving video used.
        end: Last second used (exclusive), ``None`` for the end.
        fps: Conditioning frame rate asked for; ``None`` kept the source rate.
        resolution: ``"720p"`` or ``"480p"``.
        num_frames: Frames of the conditioning, once preprocessed.
        options: Other preprocessing options, as plain values (for the record and the API's report).
        report: The quality report (`QualityReport.to_dict`), once preprocessed.
        report_markdown: The report as the page shows it.
        created: Unix time the job was made.
    """

    mode: Mode
    photo: str
    video: str
    start: float = 0.0
    end: float | None = None
    fps: float | None = 30.0
    resolution: str = "720p"
    num_frames: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    report_markdown: str = ""
    created: float = field(default_factory=time.time)


@dataclass
class Job:
    """One job folder and its record."""

    id: str
    folder: Path
    record: JobRecord

    @property
    def prepared_dir(self) -> Path:
        """Where the preprocessing output goes (``Preprocessor.prepare``'s workdir)."""
        return self.folder / "prepared"

    @property
    def conditioning_dir(self) -> Path:
        """The conditioning in the upstream layout."""
        return self.prepared_dir / "conditioning"

    def output(self, name: str) -> Path:
        """Path of a result file in the job folder."""
        return self.folder / name

    def save(self) -> None:
        """Write ``job.json``."""
        (self.folder / RECORD_FILE).write_text(json.dumps(asdict(self.record), indent=2))

    def load_conditioning(self) -> Conditioning:
        """The job's conditioning, its videos left in their files (`Conditioning.open`: read per segment).

        Raises:
            WanAnimateError: The job was not preprocessed (or its files were cleaned up).
        """
        if not self.conditioning_dir.is_dir():
            raise WanAnimateError("This job has no extracted conditioning (it may have expired). Press Extract again.")
        return Conditioning.open(self.conditioning_dir, mode=self.record.mode)

    def write_side_by_side(self, result: str | Path, path: str | Path) -> Path:
        """Write the driving clip (as trimmed and resampled for this job) beside the result video, with its sound.

        Both are decoded as the video is written, never held whole. The driving clip is decoded with the job's
        own trim and frame rate, so frame ``t`` on the left is the frame that drove frame ``t`` of ``result``
        on the right; the video has the result's frames and frame rate.
        """
        info = probe_video(result)
        driving = iter_video(
            self.record.video,
            fps=self.record.fps,
            start=self.record.start,
            end=self.record.end,
            max_seconds=None,
            size=lambda h, w: (info.height, max(2, round(w * info.height / h / 2) * 2)),
        )
        frames = iter_video(result, fps=None, max_seconds=None)
        return write_side_by_side(path, driving, frames, info.fps, audio_source=self.record.video, audio_start=self.record.start)


def new_job(
    root: str | Path,
    mode: Mode,
    photo: str | Path,
    video: str | Path,
    *,
    start: float = 0.0,
    end: float | None = None,
    fps: float | None = 30.0,
    resolution: str = "720p",
    options: dict[str, Any] | None = None,
) -> Job:
    """Make a job folder under ``root`` with the inputs linked (or copied) in.

    Raises:
        WanAnimateError: Unknown mode, or a missing input file.
    """
    if mode not in MODES:
        raise WanAnimateError(f"Unknown mode {mode!r}: use 'animate' or 'replace'.")
    for kind, path in (("photo", photo), ("video", video)):
        if not path or not Path(path).is_file():
            raise WanAnimateError(f"Give a {kind}: the {kind} file was not found.")
    job_id = f"{mode}-{uuid.uuid4().hex}"
    folder = Path(root) / job_id
    (folder / "inputs").mkdir(parents=True)
    record = JobRecord(
        mode=mode,
        photo=str(_link_in(Path(photo), folder / "inputs" / f"photo{Path(photo).suffix.lower()}")),
        video=str(_link_in(Path(video), folder / "inputs" / f"driving{Path(video).suffix.lower()}")),
        start=float(start),
        end=None if end is None else float(end),
        fps=fps,
        resolution=resolution,
        options=dict(options or {}),
    )
    job = Job(id=job_id, folder=folder, record=record)
    job.save()
    return job


def open_job(root: str | Path, job_id: str) -> Job:
    """Open a job by id.

    Raises:
        WanAnimateError: Not a job id, or no such job (never made, or removed by `prune_jobs`).
    """
    job_id = (job_id or "").strip()
    if not JOB_ID_PATTERN.match(job_id):
        raise WanAnimateError("No extraction to generate from: press Extract first (or use the one-click button).")
    folder = Path(root) / job_id
    record_file = folder / RECORD_FILE
    if not record_file.is_file():
        raise WanAnimateError("That extraction has expired or does not exist. Press Extract again.")
    record = JobRecord(**json.loads(record_file.read_text()))
    os.utime(folder)  # a job in use is young again for `prune_jobs`
    return Job(id=job_id, folder=folder, record=record)


def prune_jobs(root: str | Path, max_age_seconds: float, *, now: float | None = None) -> list[str]:
    """Remove job folders older than ``max_age_seconds`` (by their folder's modification time).

    Returns:
        The ids removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for folder in root.iterdir():
        if folder.is_dir() and JOB_ID_PATTERN.match(folder.name) and now - folder.stat().st_mtime > max_age_seconds:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def _link_in(source: Path, target: Path) -> Path:
    """Hard-link ``source`` to ``target`` (same file system: no copy), else copy it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


__all__ = ["Job", "JobRecord", "new_job", "open_job", "prune_jobs"]
