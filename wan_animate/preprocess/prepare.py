"""Photo + driving video -> `Conditioning` + previews + quality report, for each mode.

The stages run in the contract's order (``WAN_ANIMATE_CONTRACT.md``)::

    decode -> detect person -> track -> whole-body pose -> skeleton / face crops [-> SAM2 mask, background]

On the CPU the person detector runs on every few frames only and the boxes in between are interpolated
(`PreprocessOptions.detect_every`); the pose model still runs on every frame.

Animation decodes the clip in three streaming passes (detection, pose, then face crops from the original
frames) so a long 1080p or 4K clip is never held in memory at its source size; Replacement works on frames
resized to the output size, which it needs in memory anyway for SAM2 and the background.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from .. import validation
from ..conditioning import BACKGROUND_FILE, FACE_FILE, POSE_FILE, Conditioning, Mode
from ..errors import WanAnimateError
from ..progress import ProgressCallback
from ..video import DEFAULT_MAX_SECONDS, FAST_PRESET, iter_video, probe_video, read_image, write_video
from .detect import DEFAULT_DETECTOR, PersonDetector, PersonTrack, detection_stride, follow_person, is_detection_frame, track_person
from .face import crop_faces, track_face_boxes
from .keypoints import WholeBodyPose, fill_missing_bodies, split_wholebody
from .mask import DEFAULT_SAM2, PersonSegmenter, PointPrompt, background_frames, keypoint_prompts, mask_coverage, mask_overlay_frames, refine_masks
from .pose import DEFAULT_POSE_REPO, PoseEstimator
from .report import QualityReport
from .retarget import retarget_poses
from .sizing import RESOLUTION_AREAS, letterbox, output_size
from .skeleton import draw_skeleton

logger = logging.getLogger("wan_animate")

ANALYSIS_MAX_SIDE = 1280
"""Animation detects people and estimates pose on frames no larger than this (keypoints are scaled back)."""

MIN_PERSON_RATIO = 0.25
"""Below this fraction of frames with the person, preprocessing refuses: the motion would be mostly guessed."""

WARN_PERSON_RATIO = 0.9
WARN_POSE_CONFIDENCE = 0.5
WARN_FACE_RATIO = 0.8
BATCH = 8


@dataclass
class PreprocessOptions:
    """Settings of one preprocessing job.

    Attributes:
        resolution: ``"720p"`` (1280 x 720 area) or ``"480p"`` (832 x 480 area).
        fps: Conditioning frame rate; ``None`` keeps the driving video's own rate.
        start: First second of the driving video to use.
        end: Last second to use (exclusive); ``None`` for the end.
        max_seconds: Longest accepted clip after trimming.
        retarget: Animation: scale the driver's bones to the character's proportions.
        person_point: ``(frame, x, y)`` on the driving video, in output-size pixels, choosing which person to
            follow; ``None`` follows the largest person.
        points: Replacement: extra SAM2 clicks (positive or negative), in output-size pixels.
        mask_kernel: Replacement: side of the square dilation kernel.
        mask_iterations: Replacement: dilation iterations.
        blockify: Replacement: ``(w_len, h_len)`` grid over the mask's box; ``(1, 1)`` fills the box.
        detection_threshold: Minimum detector score for a person box.
        detect_every: Run the person detector on every N-th frame (plus the first and last frame and the frame
            of ``person_point``) and interpolate the boxes in between; the pose model still runs on every
            frame. ``None`` (default) picks 1 on a GPU and, on the CPU, where the detector costs as much as
            the pose model, the frames of 1/6 s: 5 at 30 fps. The box ViTPose crops is enlarged 1.25x, and
            a box interpolated over 1/6 s stays inside that margin for normal motion; pass 1 for clips with
            sudden fast moves (`wan_animate.preprocess.detect.detection_stride` has the numbers).
    """

    resolution: Literal["720p", "480p"] = "720p"
    fps: float | None = 30.0
    start: float = 0.0
    end: float | None = None
    max_seconds: float = DEFAULT_MAX_SECONDS
    retarget: bool = False
    person_point: tuple[int, float, float] | None = None
    points: Sequence[PointPrompt] = ()
    mask_kernel: int = 7
    mask_iterations: int = 3
    blockify: tuple[int, int] = (1, 1)
    detection_threshold: float = 0.5
    detect_every: int | None = None

    def check(self) -> None:
        """Raise `WanAnimateError` for a value outside its range (`wan_animate.validation`), naming the field."""
        if self.resolution not in RESOLUTION_AREAS:
            raise WanAnimateError(f"Unknown resolution {self.resolution!r}: use one of {', '.join(RESOLUTION_AREAS)}.")
        if self.fps is not None:
            validation.FPS.check(self.fps)
        validation.check_trim(self.start, self.end)
        validation.MAX_SECONDS.check(self.max_seconds)
        validation.MASK_KERNEL.check(self.mask_kernel)
        validation.MASK_ITERATIONS.check(self.mask_iterations)
        if len(self.blockify) != 2:
            raise WanAnimateError(f"Blockify grid must be two whole numbers (columns, rows); got {self.blockify!r}.")
        for cells in self.blockify:
            validation.BLOCKIFY.check(cells)
        validation.DETECTION_THRESHOLD.check(self.detection_threshold)
        if self.detect_every is not None:
            validation.DETECT_EVERY.check(self.detect_every)
        points = ([] if self.person_point is None else [self.person_point]) + [(p.frame, p.x, p.y) for p in self.points]
        for frame, x, y in points:
            validation.POINT_FRAME.check(frame)
            validation.check_float("Point x", x, 0.0, None)
            validation.check_float("Point y", y, 0.0, None)


@dataclass
class Preprocessed:
    """What preprocessing made: the model's inputs, what a person looks at, and the report.

    Attributes:
        conditioning: The model-ready inputs.
        report: Quality report.
        folder: Where everything below was written (the conditioning in the upstream layout is in
            ``folder / "conditioning"``).
        skeleton_video: Preview of the pose video the model gets.
        face_video: Preview of the face crops.
        mask_video: Replacement: the mask drawn over the frames.
        background_video: Replacement: the background video the model gets.
    """

    conditioning: Conditioning
    report: QualityReport
    folder: Path
    skeleton_video: Path
    face_video: Path
    mask_video: Path | None = None
    background_video: Path | None = None


@dataclass
class _Tracked:
    """Keypoints of the followed person over the clip, in the pixels of the frames they were found in, and
    how the person was detected (stride and device, for the report)."""

    poses: WholeBodyPose
    track: PersonTrack
    detect_every: int
    detect_device: str
    warnings: list[str] = field(default_factory=list)
    person_height: float | None = None


class Preprocessor:
    """Loads the preprocessing models on first use and turns inputs into conditioning.

    Args:
        detector: Person detector: hub repo id or local folder.
        pose: ViTPose whole-body ONNX: hub repo id, local folder or ``.onnx`` file.
        sam2: SAM2 video model (Replacement): hub repo id or local folder.
        pose_backend: ``"torch"`` (default, runs beside diffusers on the GPU) or ``"onnxruntime"``.
        device: Device for all three; CUDA when available by default.
    """

    def __init__(
        self,
        detector: str | Path = DEFAULT_DETECTOR,
        pose: str | Path = DEFAULT_POSE_REPO,
        sam2: str | Path = DEFAULT_SAM2,
        *,
        pose_backend: Literal["torch", "onnxruntime"] = "torch",
        device: str | None = None,
    ) -> None:
        self.sources = {"detector": detector, "pose": pose, "sam2": sam2}
        self.pose_backend = pose_backend
        self.device = device
        # Two extractions may start at once in the app: each model is loaded once, by whichever comes first.
        self._loading = threading.Lock()

    @cached_property
    def detector(self) -> PersonDetector:
        """The person detector, loaded on first use."""
        return self._load_once("detector", lambda: PersonDetector.from_pretrained(self.sources["detector"], device=self.device))

    @cached_property
    def pose_estimator(self) -> PoseEstimator:
        """The whole-body pose model, loaded on first use."""
        return self._load_once(
            "pose_estimator",
            lambda: PoseEstimator.from_pretrained(self.sources["pose"], backend=self.pose_backend, device=self.device),
        )

    @cached_property
    def segmenter(self) -> PersonSegmenter:
        """SAM2, loaded on first Replacement job."""
        return self._load_once("segmenter", lambda: PersonSegmenter.from_pretrained(self.sources["sam2"], device=self.device))

    def _load_once(self, name: str, load):
        with self._loading:
            if name not in self.__dict__:  # another thread may have loaded it while this one waited
                self.__dict__[name] = load()
            return self.__dict__[name]

    def prepare(
        self,
        mode: Mode,
        image: str | Path,
        video: str | Path,
        workdir: str | Path,
        options: PreprocessOptions | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> Preprocessed:
        """Preprocess one job.

        Args:
            mode: ``"animate"`` or ``"replace"``.
            image: The character photo.
            video: The driving video.
            workdir: Folder for the conditioning and previews; created, and removed again on failure.
            options: Settings; defaults when ``None``.
            progress: Called per stage as ``progress(done, total, description)``.

        Raises:
            WanAnimateError: Unreadable inputs, clip too long or too large, no person, no face, empty mask.
        """
        options = options or PreprocessOptions()
        options.check()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if mode == "animate":
                return self._animation(Path(image), Path(video), workdir, options, progress)
            if mode == "replace":
                return self._replacement(Path(image), Path(video), workdir, options, progress)
            raise WanAnimateError(f"Unknown mode {mode!r}: use 'animate' or 'replace'.")
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    # -- stages shared by both modes ------------------------------------------------------------------

    def _track(
        self,
        frames: _FrameSource | _ArraySource,
        options: PreprocessOptions,
        point: tuple[int, float, float] | None,
        progress: ProgressCallback | None,
    ) -> _Tracked:
        """Detect people every few frames, follow one person, and estimate their whole-body pose in every frame."""
        device = str(self.detector.device)
        every = detection_stride(options.detect_every, device, frames.fps)
        extra = set() if point is None else {int(point[0])}
        detected, detections = self._detect(frames, every, extra, options.detection_threshold, progress)
        logger.info("Person detector on %s, stride %d: ran on %d of %d frames.", device, every, len(detected), frames.count)
        track = follow_person(detections, detected, frames.count, point=point)
        found = ~np.isnan(track.boxes).any(axis=1)
        if not found.any():
            raise WanAnimateError(
                "No person was found in the driving video. Use a clip with one clearly visible person."
            )
        if found.mean() < MIN_PERSON_RATIO:
            raise WanAnimateError(
                f"A person was found in only {found.sum()} of {len(found)} frames. Trim the clip to the part "
                "where the person is in view."
            )
        keypoints = []
        for start, batch in zip(range(0, frames.count, BATCH), frames.batches()):
            boxes = track.boxes[start : start + len(batch)]
            keypoints.append(self.pose_estimator.estimate(batch, boxes))
            _notify(progress, start + len(batch), frames.count, "Estimating pose")
        poses = split_wholebody(np.concatenate(keypoints))
        warnings = []
        if track.persons_seen > 1 and point is None:
            warnings.append(
                f"{track.persons_seen} people are in the video; the largest one was followed. "
                "Choose the person by clicking on them if it's the wrong one."
            )
        if found.mean() < WARN_PERSON_RATIO:
            warnings.append(f"The person is missing in {(~found).sum()} frames; the pose there is carried over.")
        return _Tracked(poses=poses, track=track, detect_every=every, detect_device=device, warnings=warnings)

    @staticmethod
    def _check_person_size(tracked: _Tracked, to_video_pixels: float, video_name: str) -> None:
        """Refuse a person too small to read; warn in the band above (`validation.check_person_height`).

        Args:
            tracked: The followed person, in the pixels of the analysed frames.
            to_video_pixels: Scale from those pixels to the driving video's own.
            video_name: The video's name for the messages.
        """
        boxes = tracked.track.boxes[~np.isnan(tracked.track.boxes).any(axis=1)]
        tracked.person_height = float(np.median(boxes[:, 3] - boxes[:, 1])) * to_video_pixels
        warning = validation.check_person_height(tracked.person_height, video_name)
        if warning:
            tracked.warnings.append(warning)

    def _detect(
        self,
        frames: _FrameSource | _ArraySource,
        every: int,
        extra: set[int],
        threshold: float,
        progress: ProgressCallback | None,
    ) -> tuple[list[int], list[np.ndarray]]:
        """Person boxes on the detection frames (`is_detection_frame`, and the last frame), in batches.

        Returns:
            The detected frames' indices and, per detected frame, its (N, 5) boxes.
        """
        indices: list[int] = []
        detections: list[np.ndarray] = []
        wanted = _sampled(frames.frames(), lambda index: is_detection_frame(index, every, extra))
        for batch in _batched(wanted, BATCH):
            detections += self.detector.detect([frame for _, frame in batch], score_threshold=threshold)
            indices += [index for index, _ in batch]
            _notify(progress, indices[-1] + 1, frames.count, "Detecting people")
        return indices, detections

    def _faces(self, tracked: _Tracked, frame_size: tuple[int, int]) -> tuple[np.ndarray, float]:
        boxes, found = track_face_boxes(tracked.poses.face, frame_size)
        if not found.any():
            raise WanAnimateError(
                "No face was found in the driving video. The model needs the performer's face: use a clip where "
                "the face is visible."
            )
        ratio = float(found.mean())
        if ratio < WARN_FACE_RATIO:
            tracked.warnings.append(
                f"The face was found in only {ratio:.0%} of frames; expressions there follow the last seen face."
            )
        return boxes, ratio

    def _report(self, tracked: _Tracked, face_ratio: float, coverage: float | None = None) -> QualityReport:
        found = ~np.isnan(tracked.track.boxes).any(axis=1)
        # Heatmap peaks can exceed 1 slightly; as a confidence they are read as capped at 1.
        confidence = float(np.clip(tracked.poses.body[found][..., 2], 0.0, 1.0).mean())
        if confidence < WARN_POSE_CONFIDENCE:
            tracked.warnings.append(
                f"Pose confidence is low ({confidence:.2f}): the skeleton may be wrong in places. "
                "A clip with the whole body in view and good light helps."
            )
        return QualityReport(
            frames=len(found),
            person_frames=int(found.sum()),
            persons_seen=int(tracked.track.persons_seen),
            mean_pose_confidence=confidence,
            face_found_ratio=face_ratio,
            mask_coverage=coverage,
            detect_every=tracked.detect_every,
            detect_device=tracked.detect_device,
            person_height=tracked.person_height,
            pose_backend=self.pose_estimator.backend,
            pose_fallback=self.pose_estimator.fallback,
            warnings=tracked.warnings,
        )

    # -- modes ----------------------------------------------------------------------------------------

    def _animation(
        self, image_path: Path, video_path: Path, workdir: Path, options: PreprocessOptions, progress: ProgressCallback | None
    ) -> Preprocessed:
        """Animation: the output takes the photo's aspect; the skeleton is drawn on the driving frame's own
        canvas and letterboxed into the output (or, with retargeting, drawn on the output canvas)."""
        reference = read_image(image_path)
        validation.check_photo_size(*reference.shape[:2], image_path.name)
        size = output_size(reference.shape[0], reference.shape[1], options.resolution)
        reference = letterbox(reference, size, interpolation="auto")
        info = probe_video(video_path)
        validation.check_video_size(info.height, info.width, video_path.name)
        source_size = (info.height, info.width)
        scale = min(1.0, ANALYSIS_MAX_SIDE / max(source_size))
        analysis_size = (max(1, round(source_size[0] * scale)), max(1, round(source_size[1] * scale)))
        decode = dict(fps=options.fps, start=options.start, end=options.end, max_seconds=options.max_seconds)
        analysis = _FrameSource(video_path, size=analysis_size, **decode)
        point = _scale_point(options.person_point, size, analysis_size)
        tracked = self._track(analysis, options, point, progress)
        self._check_person_size(tracked, source_size[0] / analysis_size[0], video_path.name)
        # Keypoints back into the driving video's own pixels (the canvas the contract draws on).
        tracked.poses = tracked.poses.scaled(source_size[1] / analysis_size[1], source_size[0] / analysis_size[0])
        tracked.poses = _with_body(tracked.poses, fill_missing_bodies(tracked.poses.body))
        face_boxes, face_ratio = self._faces(tracked, source_size)

        if options.retarget:
            reference_pose = self._reference_pose(reference)
            poses, canvas = retarget_poses(reference_pose, tracked.poses), size
        else:
            poses, canvas = tracked.poses, source_size
        skeleton = np.empty((analysis.count, *size, 3), np.uint8)
        faces = np.empty((analysis.count, 512, 512, 3), np.uint8)
        original = _FrameSource(video_path, size=None, **decode)
        for index, frame in enumerate(original.frames()):
            drawn = draw_skeleton(poses.frame(index), canvas)
            skeleton[index] = drawn if canvas == size else letterbox(drawn, size)
            faces[index] = crop_faces(frame[None], face_boxes[index : index + 1])[0]
            _notify(progress, index + 1, original.count, "Drawing skeleton and cropping faces")
        conditioning = Conditioning(
            mode="animate",
            reference_image=reference,
            pose_frames=skeleton,
            face_frames=faces,
            fps=analysis.fps,
            audio_source=video_path if info.has_audio else None,
            audio_start=options.start,
        )
        report = self._report(tracked, face_ratio)
        return _write_outputs(workdir, conditioning, report, progress)

    def _reference_pose(self, reference: np.ndarray) -> WholeBodyPose:
        """The character's own pose, for retargeting (the photo as letterboxed into the output)."""
        detections = self.detector.detect([reference])
        track = track_person(detections)
        keypoints = self.pose_estimator.estimate([reference], track.boxes)
        return split_wholebody(keypoints).frame(0)

    def _replacement(
        self, image_path: Path, video_path: Path, workdir: Path, options: PreprocessOptions, progress: ProgressCallback | None
    ) -> Preprocessed:
        """Replacement: the output takes the video's aspect; frames are resized to the output size first and
        everything is computed at that size."""
        info = probe_video(video_path)
        validation.check_video_size(info.height, info.width, video_path.name)
        size = output_size(info.height, info.width, options.resolution)
        photo = read_image(image_path)
        validation.check_photo_size(*photo.shape[:2], image_path.name)
        reference = letterbox(photo, size, interpolation="auto")
        decode = dict(fps=options.fps, start=options.start, end=options.end, max_seconds=options.max_seconds)
        source = _FrameSource(video_path, size=None, **decode)
        # Each decoded frame is letterboxed into the output size at once (as upstream's padding resize), so only
        # output-size frames are kept.
        frames = np.stack([letterbox(frame, size, interpolation="auto") for frame in source.frames()])
        in_memory = _ArraySource(frames, source.fps)
        tracked = self._track(in_memory, options, options.person_point, progress)
        self._check_person_size(tracked, info.height / size[0], video_path.name)
        tracked.poses = _with_body(tracked.poses, fill_missing_bodies(tracked.poses.body))
        face_boxes, face_ratio = self._faces(tracked, size)
        skeleton = np.stack([draw_skeleton(tracked.poses.frame(i), size) for i in range(len(frames))])
        faces = crop_faces(frames, face_boxes)

        clicks = list(options.points)
        # Clicked frames also get the keypoint prompts, so a lone negative click never stands alone on its frame.
        prompts = keypoint_prompts(tracked.poses.body, size, click_frames=[p.frame for p in clicks]) + clicks
        masks = self.segmenter.segment(frames, prompts, progress=progress)
        masks = refine_masks(masks, options.mask_kernel, options.mask_iterations, *options.blockify)
        coverage = mask_coverage(masks)
        conditioning = Conditioning(
            mode="replace",
            reference_image=reference,
            pose_frames=skeleton,
            face_frames=faces,
            fps=source.fps,
            background_frames=background_frames(frames, masks),
            mask_frames=masks,
            audio_source=video_path if info.has_audio else None,
            audio_start=options.start,
        )
        report = self._report(tracked, face_ratio, coverage)
        return _write_outputs(workdir, conditioning, report, progress, overlay=mask_overlay_frames(frames, masks))


class _FrameSource:
    """A driving clip decoded on demand (possibly several times) with fixed decoding arguments."""

    def __init__(self, path: Path, *, size: tuple[int, int] | None, **decode) -> None:
        self.path, self.size, self.decode = path, size, decode
        info = probe_video(path)
        self.fps = float(decode.get("fps") or info.fps)
        end = info.duration if decode.get("end") is None else min(decode["end"], info.duration)
        self._estimate = max(1, round((end - decode.get("start", 0.0)) * self.fps))
        self._count: int | None = None

    @property
    def count(self) -> int:
        """Frames in the clip: exact once a pass has been decoded, estimated from the header before."""
        return self._count if self._count is not None else self._estimate

    def frames(self) -> Iterator[np.ndarray]:
        count = 0
        for frame in iter_video(self.path, size=self.size, **self.decode):
            count += 1
            yield frame
        self._count = count

    def batches(self) -> Iterator[list[np.ndarray]]:
        return _batched(self.frames(), BATCH)


class _ArraySource:
    """Frames already in memory, with the same interface as `_FrameSource`."""

    def __init__(self, frames: np.ndarray, fps: float) -> None:
        self.array, self.fps, self.count = frames, fps, len(frames)

    def frames(self) -> Iterator[np.ndarray]:
        return iter(self.array)

    def batches(self) -> Iterator[list[np.ndarray]]:
        for start in range(0, self.count, BATCH):
            yield list(self.array[start : start + BATCH])


def _sampled(frames: Iterable[np.ndarray], wanted: Callable[[int], bool]) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, frame)`` of the wanted frames and of the last frame (whose index is known only at the end)."""
    index, frame = -1, None
    for index, frame in enumerate(frames):
        if wanted(index):
            yield index, frame
    if frame is not None and not wanted(index):
        yield index, frame


def _batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _with_body(poses: WholeBodyPose, body: np.ndarray) -> WholeBodyPose:
    return WholeBodyPose(body=body, left_hand=poses.left_hand, right_hand=poses.right_hand, face=poses.face)


def _scale_point(
    point: tuple[int, float, float] | None, from_size: tuple[int, int], to_size: tuple[int, int]
) -> tuple[int, float, float] | None:
    if point is None:
        return None
    frame, x, y = point
    return frame, x * to_size[1] / from_size[1], y * to_size[0] / from_size[0]


def _notify(progress: ProgressCallback | None, done: int, total: int, description: str) -> None:
    if progress is not None:
        progress(min(done, total), total, description)


def _write_outputs(
    workdir: Path,
    conditioning: Conditioning,
    report: QualityReport,
    progress: ProgressCallback | None,
    *,
    overlay: np.ndarray | None = None,
) -> Preprocessed:
    """Save the conditioning (upstream layout) and the previews a person looks at.

    The skeleton, face and background previews are the conditioning's own videos (what the model will be fed,
    encoded once); only the mask overlay is a video of its own.
    """
    _notify(progress, 0, 1, "Writing previews")
    folder = conditioning.save(workdir / "conditioning")
    result = Preprocessed(
        conditioning=conditioning,
        report=report,
        folder=workdir,
        skeleton_video=folder / POSE_FILE,
        face_video=folder / FACE_FILE,
    )
    if overlay is not None:
        result.mask_video = write_video(workdir / "mask.mp4", overlay, conditioning.fps, preset=FAST_PRESET)
        result.background_video = folder / BACKGROUND_FILE
    _notify(progress, 1, 1, "Writing previews")
    logger.info("Preprocessed %d frames (%s): %s", conditioning.num_frames, conditioning.mode, report.to_dict())
    return result

