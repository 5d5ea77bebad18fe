"""Job folders: one per extraction, so generation reuses the conditioning instead of extracting again.

A job folder holds the inputs (hard-linked or copied in under the user's own file names, so messages about
them name the user's file and the sound and side-by-side still work after an upload cache is cleared), the
preprocessing output in the upstream layout, the record of how it was made (``job.json``) and the results.
A job is named by an opaque id that the app hands to the browser or API client; `open_job` accepts only ids
that name a folder under the root, so a client cannot point the app at other files.

The folder is bounded: `clean_jobs` removes jobs unused for too long and then the least recently used until
the rest fit a size limit; `JobStore` adds the jobs in use (never removed) and failed extractions (removed at
once), and `Cleaner` runs the cleaning on a timer. A job keeps its last result only (`Job.new_result`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .conditioning import MODES, Conditioning, Mode
from .errors import WanAnimateError
from .validation import check_trim
from .video import iter_video, probe_video, write_side_by_side

logger = logging.getLogger("wan_animate")

RECORD_FILE = "job.json"
GENERATIONS_DIR = "generations"
JOB_ID_PATTERN = re.compile(r"^(animate|replace)-[0-9a-f]{32}$")
RESULT_PATTERN = re.compile(r"^(result|side_by_side)_([0-9a-f]{12})\.mp4$")

DEFAULT_MAX_AGE_SECONDS = 6 * 3600
"""Jobs unused for longer are removed: a page left open over lunch can still generate from its extraction."""
DEFAULT_MAX_BYTES = 20 * 2**30
"""Size the jobs folder is cleaned down to (20 GiB): dozens of jobs of a 30-s 720p Replacement clip (inputs,
conditioning, previews and a result: an estimate of a few hundred MB, not measured), well inside a Space's 50 GB of ephemeral disk."""
DEFAULT_CLEAN_INTERVAL_SECONDS = 10 * 60


@dataclass
class JobRecord:
    """How a job's conditioning was made.

    Attributes:
        mode: ``"animate"`` or ``"replace"``.
        photo: The character photo (inside the job folder, under the user's file name).
        video: The driving video (inside the job folder, under the user's file name).
        start: First second of the driving video used.
        end: Last second used (exclusive), ``None`` for the end.
        fps: Conditioning frame rate asked for; ``None`` kept the source rate.
        resolution: ``"720p"`` or ``"480p"``.
        num_frames: Frames of the conditioning, once preprocessed.
        options: Other preprocessing options, as plain values (for the record and the API's report).
        report: The quality report (`QualityReport.to_dict`), once preprocessed.
        report_markdown: The report as the page shows it.
        previews: The preview videos preprocessing wrote (``"skeleton"``, ``"faces"``, in Replacement also
            ``"mask"`` and ``"background"``), as paths inside the job folder.
        created: Unix time the job was made.
        photo_name: The photo's name as the user gave it (for messages).
        video_name: The video's name as the user gave it.
        owner: The app session that made the job (Gradio's session hash); the app lets only that session use
            it. ``None`` for a job made outside a session (the package API, the CLI).
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
    previews: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    photo_name: str = ""
    video_name: str = ""
    owner: str | None = None


@dataclass(frozen=True)
class JobResult:
    """Where one generation of a job writes its files."""

    video: Path
    side_by_side: Path


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

    def preview(self, name: str) -> Path | None:
        """The preview video ``name`` (see `JobRecord.previews`), ``None`` if this job has none of that name."""
        relative = self.record.previews.get(name)
        return None if relative is None else self.folder / relative

    def output(self, name: str) -> Path:
        """Path of a result file in the job folder."""
        return self.folder / name

    def generation_dir(self, key: str) -> Path:
        """The state folder of one generation of this job (`generate_video`'s ``state_dir``: the checkpoint and
        each finished segment), one per ``key`` naming its settings: a stopped generation goes on from there."""
        return self.folder / GENERATIONS_DIR / key

    @contextmanager
    def new_result(self, keep: int = 1) -> Iterator[JobResult]:
        """Paths for a new result; once the block succeeds, older results beyond the newest ``keep`` are removed.

        If the block fails, this result's files are removed and the earlier results stay, so a failed or
        stopped generation never costs the user the result they had.
        """
        name = uuid.uuid4().hex[:12]
        result = JobResult(video=self.output(f"result_{name}.mp4"), side_by_side=self.output(f"side_by_side_{name}.mp4"))
        try:
            yield result
        except BaseException:
            for path in (result.video, result.side_by_side):
                path.unlink(missing_ok=True)
            raise
        self.prune_results(keep)

    def prune_results(self, keep: int = 1) -> list[Path]:
        """Remove all but the newest ``keep`` results (a result and its side-by-side count as one).

        Returns:
            The files removed.
        """
        results: dict[str, list[Path]] = {}
        for path in self.folder.iterdir():
            match = RESULT_PATTERN.match(path.name)
            if match:
                results.setdefault(match.group(2), []).append(path)
        newest_first = sorted(results.values(), key=lambda paths: max(p.stat().st_mtime_ns for p in paths), reverse=True)
        removed = [path for paths in newest_first[max(keep, 0):] for path in paths]
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

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
    photo_name: str | None = None,
    video_name: str | None = None,
    owner: str | None = None,
) -> Job:
    """Make a job folder under ``root`` with the inputs linked (or copied) in under the user's file names.

    Args:
        photo_name: The photo's name as the user gave it, when ``photo`` is a server copy of another name
            (default: ``photo``'s own name). Messages about the file use it.
        video_name: Likewise for the video.
        owner: `JobRecord.owner`.

    Raises:
        WanAnimateError: Unknown mode, a missing input file, or a trim that is not finite or ends before it starts.
    """
    if mode not in MODES:
        raise WanAnimateError(f"Unknown mode {mode!r}: use 'animate' or 'replace'.")
    for kind, path in (("photo", photo), ("video", video)):
        if not path or not Path(path).is_file():
            raise WanAnimateError(f"Give a {kind}: the {kind} file was not found.")
    start, end = check_trim(start, end)
    photo_name = _safe_name(photo_name or Path(photo).name, "photo.png")
    video_name = _safe_name(video_name or Path(video).name, "video.mp4")
    job_id = f"{mode}-{uuid.uuid4().hex}"
    folder = Path(root) / job_id
    for kind in ("photo", "video"):
        (folder / "inputs" / kind).mkdir(parents=True)
    record = JobRecord(
        mode=mode,
        photo=str(_link_in(Path(photo), folder / "inputs" / "photo" / photo_name)),
        video=str(_link_in(Path(video), folder / "inputs" / "video" / video_name)),
        start=start,
        end=end,
        fps=fps,
        resolution=resolution,
        options=dict(options or {}),
        photo_name=photo_name,
        video_name=video_name,
        owner=owner,
    )
    job = Job(id=job_id, folder=folder, record=record)
    job.save()
    return job


def _safe_name(name: str, fallback: str) -> str:
    """A user's file name usable as one file inside the job folder (no folders, no hidden or empty names)."""
    name = "".join(ch for ch in Path(str(name).replace("\\", "/")).name if ch.isprintable()).strip()
    if not name or name.startswith("."):
        return fallback
    stem, suffix = os.path.splitext(name)
    suffix = suffix[:16]
    while len((stem + suffix).encode()) > 200:  # file systems allow 255 bytes; UTF-8 takes up to 4 a character
        stem = stem[:-1]
    return (stem or "file") + suffix


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
    """Remove job folders unused for longer than ``max_age_seconds`` (`clean_jobs` without a size limit).

    Returns:
        The ids removed.
    """
    return clean_jobs(root, max_age_seconds=max_age_seconds, max_bytes=None, now=now).removed


@dataclass(frozen=True)
class CleanupReport:
    """What one cleaning pass did.

    Attributes:
        removed: Ids of the jobs removed, oldest first.
        freed_bytes: Their size.
        kept_bytes: Size of the jobs left.
        kept_jobs: How many jobs are left.
    """

    removed: list[str]
    freed_bytes: int
    kept_bytes: int
    kept_jobs: int


def folder_bytes(folder: str | Path) -> int:
    """Total size of the files under ``folder`` (links not followed; a hard-linked upload counts in full)."""
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:  # removed while we looked
                pass
    return total


def clean_jobs(
    root: str | Path,
    *,
    max_age_seconds: float | None = DEFAULT_MAX_AGE_SECONDS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    keep: Collection[str] = (),
    now: float | None = None,
) -> CleanupReport:
    """Remove the job folders unused for longer than ``max_age_seconds``, then the least recently used ones
    until the rest fit in ``max_bytes``. "Used" is the folder's modification time, which `open_job` renews.

    Args:
        root: The jobs folder; other files and folders in it are left alone.
        max_age_seconds: Age limit; ``None`` for none.
        max_bytes: Size limit of all jobs together; ``None`` for none. A single job in use may exceed it.
        keep: Ids never removed (jobs being extracted or generated).
        now: The current time (for tests).

    Returns:
        What was removed and what is left (also logged).
    """
    root = Path(root)
    if not root.is_dir():
        return CleanupReport(removed=[], freed_bytes=0, kept_bytes=0, kept_jobs=0)
    now = time.time() if now is None else now
    jobs = []
    for folder in root.iterdir():
        if JOB_ID_PATTERN.match(folder.name) and folder.is_dir():
            try:
                jobs.append((folder.stat().st_mtime, folder, folder_bytes(folder)))
            except FileNotFoundError:  # removed by another pass meanwhile
                continue
    jobs.sort(key=lambda job: job[0])  # least recently used first
    total = sum(size for _, _, size in jobs)
    removed, freed = [], 0
    for used, folder, size in jobs:
        if folder.name in keep:
            continue
        too_old = max_age_seconds is not None and now - used > max_age_seconds
        too_big = max_bytes is not None and total - freed > max_bytes
        if not (too_old or too_big):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
        freed += size
    report = CleanupReport(removed=removed, freed_bytes=freed, kept_bytes=total - freed, kept_jobs=len(jobs) - len(removed))
    if removed or (max_bytes is not None and report.kept_bytes > max_bytes):
        logger.info(
            "Jobs folder %s: removed %d job(s), %.1f MB; %d job(s), %.1f MB left (limits: %s).",
            root, len(removed), freed / 1e6, report.kept_jobs, report.kept_bytes / 1e6, _limits(max_age_seconds, max_bytes),
        )
    return report


def _limits(max_age_seconds: float | None, max_bytes: int | None) -> str:
    age = "no age limit" if max_age_seconds is None else f"jobs unused for {max_age_seconds / 3600:g} h"
    size = "no size limit" if max_bytes is None else f"least recently used beyond {max_bytes / 2**30:g} GiB"
    return f"{age}; {size}"


class JobStore:
    """The jobs folder with its limits: makes and opens jobs, and cleans around the ones in use.

    Args:
        root: The jobs folder (created).
        max_age_seconds: Jobs unused for longer are removed by `clean`; ``None`` for no age limit.
        max_bytes: `clean` removes the least recently used jobs until the rest fit; ``None`` for no limit.

    Wiring in an app::

        store = JobStore(work_root, max_age_seconds=..., max_bytes=...)
        cleaner = Cleaner(store.clean).start()        # cleans at once, then every 10 minutes
        job = store.new(mode, photo, video, ...)
        with store.use(job, discard_on_failure=True):  # a failed extraction leaves no folder
            preprocessor.prepare(mode, job.record.photo, job.record.video, job.prepared_dir, options)
        job = store.open(job_id)
        with store.use(job), job.new_result() as result:
            ...  # write result.video and result.side_by_side; older results are removed on success
    """

    def __init__(
        self,
        root: str | Path,
        *,
        max_age_seconds: float | None = DEFAULT_MAX_AGE_SECONDS,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_seconds = max_age_seconds
        self.max_bytes = max_bytes
        self._in_use: Counter[str] = Counter()
        self._lock = threading.Lock()
        logger.info("Jobs folder %s, cleaned of: %s.", self.root, _limits(max_age_seconds, max_bytes))

    def new(self, mode: Mode, photo: str | Path, video: str | Path, **kwargs: Any) -> Job:
        """`new_job` in this folder."""
        return new_job(self.root, mode, photo, video, **kwargs)

    def open(self, job_id: str) -> Job:
        """`open_job` in this folder."""
        return open_job(self.root, job_id)

    @contextmanager
    def use(self, job: Job, *, discard_on_failure: bool = False) -> Iterator[Job]:
        """Mark ``job`` in use for the block (`clean` leaves it alone).

        Args:
            discard_on_failure: Remove the job's folder if the block raises (an extraction that failed has
                nothing worth keeping, and its id was never handed out).
        """
        with self._lock:
            self._in_use[job.id] += 1
        try:
            yield job
        except BaseException:
            if discard_on_failure:
                shutil.rmtree(job.folder, ignore_errors=True)
                logger.info("Removed the job %s after its extraction failed.", job.id)
            raise
        finally:
            with self._lock:
                self._in_use[job.id] -= 1
                if not self._in_use[job.id]:
                    del self._in_use[job.id]

    def in_use(self) -> set[str]:
        """Ids of the jobs in use now."""
        with self._lock:
            return set(self._in_use)

    def clean(self) -> CleanupReport:
        """`clean_jobs` with this store's limits, keeping the jobs in use."""
        return clean_jobs(self.root, max_age_seconds=self.max_age_seconds, max_bytes=self.max_bytes, keep=self.in_use())


class Cleaner:
    """Calls ``clean`` at once and then every ``interval_seconds`` in a daemon thread, until `stop`.

    A failing pass is logged and the next one runs on time: cleaning must never stop the app.
    """

    def __init__(self, clean: Callable[[], object], interval_seconds: float = DEFAULT_CLEAN_INTERVAL_SECONDS) -> None:
        self.clean = clean
        self.interval_seconds = interval_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wan-animate-job-cleaner", daemon=True)

    def start(self) -> "Cleaner":
        """Start the thread (the first pass runs at once); returns ``self``."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the pass in progress, if any."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            try:
                self.clean()
            except Exception:
                logger.exception("Cleaning the jobs folder failed; trying again in %g s.", self.interval_seconds)
            if self._stopped.wait(self.interval_seconds):
                return


def _link_in(source: Path, target: Path) -> Path:
    """Hard-link ``source`` to ``target`` (same file system: no copy), else copy it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


__all__ = [
    "Cleaner",
    "CleanupReport",
    "Job",
    "JobRecord",
    "JobResult",
    "JobStore",
    "clean_jobs",
    "folder_bytes",
    "new_job",
    "open_job",
    "prune_jobs",
]
