"""Photo + driving video -> `Conditioning` + previews + quality report, for each mode.

The stages run in the contract's order (``WAN_ANIMATE_CONTRACT.md``)::

    decode -> detect person -> track -> whole-body pose -> skeleton / face crops [-> SAM2 mask, background]

The driving clip is decoded on a worker thread while the person detector works on the frames already decoded
(`frames.decode_batches`). On a GPU it is decoded once and the frames later stages need are kept there: Animation
keeps the decoded frames (at most `HELD_MAX_SIDE`; the pose model sees them resized to `ANALYSIS_MAX_SIDE`, the
face crops are cut from them). On the CPU Animation decodes the clip again for the pose model and again for the
face crops, the same frames each time, so that host memory does not grow by the whole clip. Replacement keeps the
frames resized to the output size, which SAM2 and the background need. The conditioning videos are encoded on
worker threads as soon as their frames are known (`writers.VideoWriters`): in Replacement the skeleton and face
videos while SAM2 runs.

On the CPU the person detector runs on every few frames only and the boxes in between are interpolated
(`PreprocessOptions.detect_every`); the pose model still runs on every frame.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch

from .. import validation
from ..conditioning import BACKGROUND_FILE, FACE_FILE, MASK_FILE, POSE_FILE, Conditioning, Mode, mask_video_frames
from ..errors import WanAnimateError
from ..progress import ProgressCallback
from ..video import DEFAULT_MAX_SECONDS, VideoInfo, probe_video, read_image
from .detect import DEFAULT_DETECTOR, PersonDetector, PersonTrack, detection_stride, follow_person, is_detection_frame, track_person
from .face import crop_faces, track_face_boxes
from .frames import decode_batches, fit_within, letterbox_frames, resize_frames
from .keypoints import WholeBodyPose, fill_missing_bodies, split_wholebody
from .mask import DEFAULT_SAM2, PersonSegmenter, PointPrompt, background_frame, keypoint_prompts, mask_coverage, mask_overlay, refine_masks
from .pose import DEFAULT_POSE_REPO, PoseEstimator
from .report import QualityReport
from .retarget import retarget_poses
from .sizing import RESOLUTION_AREAS, letterbox, output_size
from .skeleton import draw_skeleton
from .writers import VideoWriters

logger = logging.getLogger("wan_animate")

T = TypeVar("T")

ANALYSIS_MAX_SIDE = 1280
"""Animation detects people and estimates pose on frames no larger than this (keypoints are scaled back)."""

HELD_MAX_SIDE = 1920
"""Animation decodes frames no larger than this for the face crops (a 4K clip at 1080p; smaller clips at their own
size). On a GPU they are kept in its memory: 6 MB per 1080p frame, 1.9 GB for 10 s."""

MASK_PREVIEW_FILE = "mask.mp4"
"""Replacement: the mask drawn over the frames, for a person to check it (not part of the conditioning)."""

MIN_PERSON_RATIO = 0.25
"""Below this fraction of frames with the person, preprocessing refuses: the motion would be mostly guessed."""

WARN_PERSON_RATIO = 0.9
WARN_POSE_CONFIDENCE = 0.5
WARN_FACE_RATIO = 0.8


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
        timings: Seconds per stage (keyed by its progress label), in the order they ran; they add up to the
            time `Preprocessor.prepare` took.
    """

    conditioning: Conditioning
    report: QualityReport
    folder: Path
    skeleton_video: Path
    face_video: Path
    mask_video: Path | None = None
    background_video: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Detected:
    """Person boxes found while the clip was decoded: on which frames, and how the detector ran (for the report);
    ``count`` is the number of frames the clip has."""

    frames: list[int]
    boxes: list[np.ndarray]
    every: int
    device: str
    count: int = 0


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
            progress: Called per stage as ``progress(done, total, description)``, from this thread.

        Raises:
            WanAnimateError: Unreadable inputs, clip too long or too large, no person, no face, empty mask.
        """
        options = options or PreprocessOptions()
        options.check()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        stages = _Stages(progress)
        try:
            if mode == "animate":
                return self._animation(Path(image), Path(video), workdir, options, stages)
            if mode == "replace":
                return self._replacement(Path(image), Path(video), workdir, options, stages)
            raise WanAnimateError(f"Unknown mode {mode!r}: use 'animate' or 'replace'.")
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    # -- stages shared by both modes ------------------------------------------------------------------

    def _batch_size(self) -> int:
        """Frames per batch of the detector and the pose model: the detector's (`PersonDetector.batch_size`)."""
        return self.detector.batch_size

    def _keeps_decoded_clip(self) -> bool:
        """Whether Animation keeps the decoded clip for the pose model and the face crops: on a GPU, in its memory;
        on the CPU it decodes the clip again for each instead (the same frames, `video.iter_video`), as kept in
        host memory a 30-s 1080p clip would be 5.6 GB."""
        return torch.device(self.detector.device).type != "cpu"

    def _decode(self, video: Path, options: PreprocessOptions, size: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
        """The clip trimmed and resampled as ``options`` say, in batches on the models' device (`decode_batches`)."""
        return decode_batches(
            video,
            batch=self._batch_size(),
            device=str(self.detector.device),
            size=size,
            fps=options.fps,
            start=options.start,
            end=options.end,
            max_seconds=options.max_seconds,
        )

    def _decode_and_detect(
        self,
        video: Path,
        info: VideoInfo,
        options: PreprocessOptions,
        point: tuple[int, float, float] | None,
        stages: _Stages,
        *,
        analysis: Callable[[torch.Tensor], torch.Tensor],
        keep: Callable[[torch.Tensor, torch.Tensor], Sequence] | None,
        size: tuple[int, int] | None = None,
    ) -> tuple[list, _Detected]:
        """Decode the clip once, keep what later stages need, and detect people on the detection frames as they arrive
        (in the caller's "Detecting people" stage).

        Args:
            video: The driving video.
            info: Its `probe_video` facts.
            options: The job's decoding and detection settings.
            point: The chosen person's ``(frame, x, y)`` in analysis pixels, or ``None``.
            stages: The job's stages.
            analysis: Decoded batch -> the frames the detector and the pose model see (same device).
            keep: ``(decoded batch, analysis batch)`` -> the items to keep, appended in order (Animation keeps
                the decoded batches, Replacement its letterboxed frames); ``None`` keeps nothing.
            size: Size the decoder itself resizes frames to, or ``None`` for the source size.

        Returns:
            The kept items, and the detections: on every ``every``-th frame (`is_detection_frame`), the
            chosen point's frame and the last frame.
        """
        device = str(self.detector.device)
        fps = float(options.fps or info.fps)
        every = detection_stride(options.detect_every, device, fps)
        extra = set() if point is None else {int(point[0])}
        batch_size = self._batch_size()
        expected = _expected_frames(info.duration, fps, options)
        kept: list = []
        detected = _Detected(frames=[], boxes=[], every=every, device=device)
        waiting: list[tuple[int, torch.Tensor]] = []  # detection frames, run a batch at a time

        def detect(frames: list[tuple[int, torch.Tensor]]) -> None:
            batch = torch.stack([frame for _, frame in frames])
            detected.boxes += self.detector.detect(batch, score_threshold=options.detection_threshold)
            detected.frames += [index for index, _ in frames]

        for batch in self._decode(video, options, size):
            first = detected.count
            analysed = analysis(batch)
            if keep is not None:
                kept += keep(batch, analysed)
            detected.count += len(batch)
            rows = [row for row in range(len(batch)) if is_detection_frame(first + row, every, extra)]
            waiting += [(first + row, analysed[row]) for row in rows]
            if len(waiting) >= batch_size:
                detect(waiting)
                waiting = []
            stages.notify(detected.count, max(expected, detected.count))
        if not rows or rows[-1] != len(batch) - 1:
            waiting.append((detected.count - 1, analysed[-1]))  # the last frame is always detected
        if waiting:
            detect(waiting)
        logger.info(
            "Person detector on %s, stride %d: ran on %d of %d frames.", device, every, len(detected.frames), detected.count
        )
        return kept, detected

    def _track(
        self,
        detected: _Detected,
        analysis_batches: Iterable[np.ndarray],
        point: tuple[int, float, float] | None,
        stages: _Stages,
    ) -> _Tracked:
        """Follow one person through the detections and estimate their whole-body pose in every frame.

        Args:
            detected: The detections of `_decode_and_detect`.
            analysis_batches: The clip's frames as the detector saw them, in order, in (N, H, W, 3) uint8 batches
                of `_batch_size` frames (the last may be shorter); made as they are asked for.
            point: The chosen person's ``(frame, x, y)`` in analysis pixels, or ``None``.
            stages: The job's stages.
        """
        count = detected.count
        with stages("Estimating pose", count):
            track = follow_person(detected.boxes, detected.frames, count, point=point)
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
            done = 0
            for frames in analysis_batches:
                boxes = track.boxes[done : done + len(frames)]
                keypoints.append(self.pose_estimator.estimate(list(frames), boxes, batch_size=len(frames)))
                done += len(frames)
                stages.notify(done, count)
            if done != count:  # a second decode gives the first one's frames (`video.iter_video`)
                raise RuntimeError(f"the pose model saw {done} frames, the person detector {count}")
            poses = split_wholebody(np.concatenate(keypoints))
            poses = _with_body(poses, fill_missing_bodies(poses.body))
        warnings = []
        if track.persons_seen > 1 and point is None:
            warnings.append(
                f"{track.persons_seen} people are in the video; the largest one was followed. "
                "Choose the person by clicking on them if it's the wrong one."
            )
        if found.mean() < WARN_PERSON_RATIO:
            warnings.append(f"The person is missing in {(~found).sum()} frames; the pose there is carried over.")
        return _Tracked(poses=poses, track=track, detect_every=detected.every, detect_device=detected.device, warnings=warnings)

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

    def _faces(self, tracked: _Tracked, face: np.ndarray, frame_size: tuple[int, int]) -> tuple[np.ndarray, float]:
        """Face boxes of the clip from its (T, 68, 3) ``face`` landmarks in pixels of frames of ``frame_size``."""
        boxes, found = track_face_boxes(face, frame_size)
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
        self, image_path: Path, video_path: Path, workdir: Path, options: PreprocessOptions, stages: _Stages
    ) -> Preprocessed:
        """Animation: the output takes the photo's aspect; the skeleton is drawn on the driving frame's own
        canvas and letterboxed into the output (or, with retargeting, drawn on the output canvas)."""
        with stages("Reading the inputs"):
            reference = read_image(image_path)
            validation.check_photo_size(*reference.shape[:2], image_path.name)
            size = output_size(reference.shape[0], reference.shape[1], options.resolution)
            reference = letterbox(reference, size, interpolation="auto")
            info = probe_video(video_path)
            validation.check_video_size(info.height, info.width, video_path.name)
        source_size = (info.height, info.width)
        held_size = fit_within(source_size, HELD_MAX_SIDE)
        analysis_size = fit_within(source_size, ANALYSIS_MAX_SIDE)
        point = _scale_point(options.person_point, size, analysis_size)
        fps = float(options.fps or info.fps)
        decoded_size = None if held_size == source_size else held_size
        keep_clip = self._keeps_decoded_clip()
        with stages("Detecting people", _expected_frames(info.duration, fps, options)):
            held, detected = self._decode_and_detect(
                video_path,
                info,
                options,
                point,
                stages,
                analysis=lambda frames: resize_frames(frames, analysis_size),
                keep=(lambda decoded, _: [decoded]) if keep_clip else None,
                size=decoded_size,
            )
        decoded_batches = held if keep_clip else self._decode(video_path, options, decoded_size)
        analysis_batches = (resize_frames(batch, analysis_size).cpu().numpy() for batch in decoded_batches)
        tracked = self._track(detected, analysis_batches, point, stages)
        self._check_person_size(tracked, source_size[0] / analysis_size[0], video_path.name)
        skeleton = np.empty((detected.count, *size, 3), np.uint8)
        with VideoWriters(workdir / ".encoding", fps) as writers:
            with stages("Cropping faces"):
                # Keypoints into the driving video's own pixels (the canvas the contract draws on) and the decoded
                # frames' (for the face crops).
                tracked.poses = tracked.poses.scaled(source_size[1] / analysis_size[1], source_size[0] / analysis_size[0])
                if options.retarget:
                    reference_pose = self._reference_pose(reference)
                    poses, canvas = retarget_poses(reference_pose, tracked.poses), size
                else:
                    poses, canvas = tracked.poses, source_size
                writers.start(POSE_FILE, _drawn_skeleton(poses, canvas, skeleton))
                face = tracked.poses.face * [held_size[1] / source_size[1], held_size[0] / source_size[0], 1.0]
                face_boxes, face_ratio = self._faces(tracked, face, held_size)
                decoded = itertools.chain.from_iterable(held if keep_clip else self._decode(video_path, options, decoded_size))
                faces = crop_faces(decoded, face_boxes)
                del held, decoded  # the decoded clip, possibly on the GPU
                writers.start(FACE_FILE, faces)
                # The skeleton frames are still being drawn on a writer thread; `_finish` waits for them.
                conditioning = Conditioning(
                    mode="animate",
                    reference_image=reference,
                    pose_frames=skeleton,
                    face_frames=faces,
                    fps=fps,
                    audio_source=video_path if info.has_audio else None,
                    audio_start=options.start,
                )
            return self._finish(workdir, conditioning, self._report(tracked, face_ratio), writers, stages)

    def _reference_pose(self, reference: np.ndarray) -> WholeBodyPose:
        """The character's own pose, for retargeting (the photo as letterboxed into the output)."""
        detections = self.detector.detect([reference])
        track = track_person(detections)
        keypoints = self.pose_estimator.estimate([reference], track.boxes)
        return split_wholebody(keypoints).frame(0)

    def _replacement(
        self, image_path: Path, video_path: Path, workdir: Path, options: PreprocessOptions, stages: _Stages
    ) -> Preprocessed:
        """Replacement: the output takes the video's aspect; frames are resized to the output size first and
        everything is computed at that size."""
        with stages("Reading the inputs"):
            info = probe_video(video_path)
            validation.check_video_size(info.height, info.width, video_path.name)
            size = output_size(info.height, info.width, options.resolution)
            # Upstream's padding_resize: a bilinear letterbox (cv2.INTER_LINEAR), also when shrinking the photo.
            photo = read_image(image_path)
            validation.check_photo_size(*photo.shape[:2], image_path.name)
            reference = letterbox(photo, size, interpolation="bilinear")
        fps = float(options.fps or info.fps)
        with stages("Detecting people", _expected_frames(info.duration, fps, options)):
            # Each decoded frame is letterboxed into the output size at once (as upstream's padding resize), so
            # only output-size frames are kept (on the CPU: SAM2 and the background need them there).
            kept, detected = self._decode_and_detect(
                video_path,
                info,
                options,
                options.person_point,
                stages,
                analysis=lambda frames: letterbox_frames(frames, size, interpolation="auto"),
                keep=lambda _, letterboxed: list(letterboxed.cpu().numpy()),
            )
            frames = np.stack(kept)
            del kept
        tracked = self._track(detected, _batches(frames, self._batch_size()), options.person_point, stages)
        self._check_person_size(tracked, info.height / size[0], video_path.name)
        skeleton = np.empty((len(frames), *size, 3), np.uint8)
        with VideoWriters(workdir / ".encoding", fps) as writers:
            with stages("Cropping faces"):
                writers.start(POSE_FILE, _drawn_skeleton(tracked.poses, size, skeleton))
                face_boxes, face_ratio = self._faces(tracked, tracked.poses.face, size)
                faces = crop_faces(frames, face_boxes)
                writers.start(FACE_FILE, faces)
            with stages("Segmenting the person", len(frames)):
                clicks = list(options.points)
                # Clicked frames also get the keypoint prompts, so a lone negative click never stands alone.
                prompts = keypoint_prompts(tracked.poses.body, size, click_frames=[p.frame for p in clicks]) + clicks
                masks = self.segmenter.segment(frames, prompts, progress=stages.progress)
            with stages("Making the mask and background", len(frames)):
                masks = refine_masks(masks, options.mask_kernel, options.mask_iterations, *options.blockify)
                coverage = mask_coverage(masks)
                # The background and the previews are made frame by frame on the threads that encode them (by
                # OpenCV, without the GIL), the background into this array (untouched pages of np.zeros cost
                # nothing until written); `_finish` waits for them.
                background = np.zeros(frames.shape, np.uint8)
                writers.start(BACKGROUND_FILE, map(background_frame, frames, masks, background))
                writers.start(MASK_FILE, mask_video_frames(masks))
                writers.start(MASK_PREVIEW_FILE, map(mask_overlay, frames, masks))
                conditioning = Conditioning(
                    mode="replace",
                    reference_image=reference,
                    pose_frames=skeleton,
                    face_frames=faces,
                    fps=fps,
                    background_frames=background,
                    mask_frames=masks,
                    audio_source=video_path if info.has_audio else None,
                    audio_start=options.start,
                )
            return self._finish(workdir, conditioning, self._report(tracked, face_ratio, coverage), writers, stages)

    def _finish(
        self,
        workdir: Path,
        conditioning: Conditioning,
        report: QualityReport,
        writers: VideoWriters,
        stages: _Stages,
    ) -> Preprocessed:
        """Wait for the videos, then save the conditioning (upstream layout) beside the previews a person looks at.

        The skeleton, face and background previews are the conditioning's own videos (what the model will be fed,
        encoded once); only the mask overlay is a video of its own.
        """
        with stages("Writing videos", len(writers)):
            encoded = writers.wait(stages.progress, "Writing videos")
            mask_preview = encoded.pop(MASK_PREVIEW_FILE, None)
            folder = conditioning.save(workdir / "conditioning", encoded=encoded)
            result = Preprocessed(
                conditioning=conditioning,
                report=report,
                folder=workdir,
                skeleton_video=folder / POSE_FILE,
                face_video=folder / FACE_FILE,
            )
            if mask_preview is not None:
                result.mask_video = Path(shutil.move(mask_preview, workdir / MASK_PREVIEW_FILE))
                result.background_video = folder / BACKGROUND_FILE
        result.timings = dict(stages.seconds)
        logger.info(
            "Preprocessed %d frames (%s) in %.1f s %s: %s",
            conditioning.num_frames,
            conditioning.mode,
            sum(stages.seconds.values()),
            {name: round(seconds, 2) for name, seconds in stages.seconds.items()},
            report.to_dict(),
        )
        return result


class _Stages:
    """A job's stages, one after another: each tells the progress callback it has started and is timed.

    The times are the wall time the job spends in each stage, so they add up to the job's time (what worker
    threads do counts in the stage that waits for it).
    """

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._current = ""
        self._running = False

    @contextmanager
    def __call__(self, name: str, total: int = 1) -> Iterator[None]:
        if self._running:  # a stage inside another would be counted twice
            raise RuntimeError(f"stage {name!r} started inside {self._current!r}")
        self._current, self._running = name, True
        self.notify(0, total)
        started = time.perf_counter()
        try:
            yield
        finally:
            self._running = False
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def notify(self, done: int, total: int) -> None:
        """Report progress within the current stage."""
        if self.progress is not None:
            self.progress(min(done, total), total, self._current)


def _expected_frames(duration: float, fps: float, options: PreprocessOptions) -> int:
    """Frames the clip will have, from its header (for progress before decoding has counted them)."""
    end = duration if options.end is None else min(options.end, duration)
    return max(1, round((end - options.start) * fps))


def _drawn_skeleton(poses: WholeBodyPose, canvas: tuple[int, int], skeleton: np.ndarray) -> Iterator[np.ndarray]:
    """Draw each frame's skeleton on a ``canvas``-sized image, letterbox it into ``skeleton``'s frames (bilinear,
    contract "Skeleton video") and yield it: drawn on the thread that encodes it."""
    size = skeleton.shape[1:3]
    for index in range(len(skeleton)):
        drawn = draw_skeleton(poses.frame(index), canvas)
        skeleton[index] = drawn if canvas == size else letterbox(drawn, size)
        yield skeleton[index]


def _batches(frames: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``frames`` in consecutive slices of ``size`` (the last may be shorter)."""
    return (frames[start : start + size] for start in range(0, len(frames), size))


def _with_body(poses: WholeBodyPose, body: np.ndarray) -> WholeBodyPose:
    return WholeBodyPose(body=body, left_hand=poses.left_hand, right_hand=poses.right_hand, face=poses.face)


def _scale_point(
    point: tuple[int, float, float] | None, from_size: tuple[int, int], to_size: tuple[int, int]
) -> tuple[int, float, float] | None:
    if point is None:
        return None
    frame, x, y = point
    return frame, x * to_size[1] / from_size[1], y * to_size[0] / from_size[0]
