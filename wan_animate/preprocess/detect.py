"""Person boxes per frame, and which person to follow through the clip.

The contract (``WAN_ANIMATE_CONTRACT.md``, Keypoints) asks for a person detector before the whole-body pose
model, the largest person by default, and an Apache/MIT detector instead of upstream's AGPL YOLOv10. We use
RT-DETRv2 (Apache-2.0) through `transformers`. On the CPU the detector runs on every few frames only and the
boxes in between are interpolated (`detection_stride`, `interpolate_boxes`, `follow_person`).
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import WanAnimateError
from ..hub import default_device, resolve_model_folder

logger = logging.getLogger("wan_animate")

DEFAULT_DETECTOR = "PekingU/rtdetr_v2_r50vd"
"""RT-DETRv2 ResNet-50, COCO, Apache-2.0 (53.4 AP; the person is the one class we need to be reliable)."""

DETECTOR_FILES = ["config.json", "preprocessor_config.json", "*.safetensors"]
"""The only files of a detector repository that loading needs."""

PERSON_LABEL = "person"

CPU_DETECT_SECONDS = 1 / 6
"""On the CPU the detector runs once per this many seconds of clip (every 5th frame at 30 fps), see
`detection_stride`: RT-DETRv2 R50 costs about as much per frame as ViTPose-H there (~5.6 s each on 2 cores,
``benchmarks/RESULTS_preprocess.md``), so detecting on every frame doubles the preprocessing time."""

DUPLICATE_IOU = 0.7
"""Person boxes overlapping more than this are one person seen twice by two queries: keep the higher score.
DETR-style detectors need no NMS in general, but a duplicate would inflate ``persons_seen``."""


GPU_BATCH = 32
"""Frames per forward pass on a GPU (RT-DETRv2 R50 at 640 x 640 in bf16 needs well under 1 GiB per 8 frames)."""
CPU_BATCH = 8
"""Frames per forward pass on the CPU."""


class PersonDetector:
    """COCO object detector of which only the person class is kept.

    On a GPU the model runs in bfloat16 autocast (weights stay float32): the backbone, encoder and decoder
    compute in bf16, while the boxes' reference points, which RT-DETR refines through ``log`` and ``sigmoid``
    (float32 under autocast), keep float32 precision; the outputs are read as float32. On the CPU everything
    stays float32.

    Attributes:
        device: Where the model runs (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
        person_id: The model's label id of the COCO person class.
        autocast_dtype: ``torch.bfloat16`` on a GPU, ``None`` (plain float32) on the CPU.
    """

    def __init__(self, model: torch.nn.Module, processor, device: str) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.person_id = _person_label_id(model.config.id2label)
        self.autocast_dtype = torch.bfloat16 if torch.device(device).type == "cuda" else None
        self.batch_size = GPU_BATCH if self.autocast_dtype is not None else CPU_BATCH

    @classmethod
    def from_pretrained(cls, source: str | Path = DEFAULT_DETECTOR, *, device: str | None = None) -> "PersonDetector":
        """Load a `transformers` object detector and its image processor.

        Args:
            source: Hugging Face repo id (only config, preprocessor config and safetensors weights are
                downloaded) or a local folder saved with ``save_pretrained``.
            device: Torch device; ``None`` picks CUDA when available, else CPU.

        Returns:
            The detector, in eval mode on ``device``.
        """
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        folder = resolve_model_folder(source, DETECTOR_FILES, "person detector")
        device = device or default_device()
        try:
            processor = AutoImageProcessor.from_pretrained(folder)
            model = AutoModelForObjectDetection.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise WanAnimateError(
                f"The folder {folder} does not hold a transformers object detector ({error})."
            ) from error
        model = model.to(device).eval()
        logger.info("Person detector %s loaded on %s.", source, device)
        return cls(model, processor, device)

    @torch.inference_mode()
    def detect(
        self,
        frames: Sequence[np.ndarray] | torch.Tensor,
        *,
        score_threshold: float = 0.5,
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """Person boxes in each frame.

        Args:
            frames: RGB uint8 images (H, W, 3), sizes may differ; or a (B, H, W, 3) uint8 tensor, which the
                image processor resizes on the tensor's device.
            score_threshold: Minimum detector score of a kept box.
            batch_size: Frames per forward pass; ``None`` = ``self.batch_size`` (`GPU_BATCH` on a GPU, `CPU_BATCH`).

        Returns:
            Per frame an (N, 5) float32 array ``x1, y1, x2, y2, score`` in the frame's pixels, highest score
            first; N may be 0.
        """
        batch_size = batch_size or self.batch_size
        boxes: list[np.ndarray] = []
        for start in range(0, len(frames), batch_size):
            batch = [
                frame if isinstance(frame, torch.Tensor) else np.ascontiguousarray(frame)
                for frame in frames[start : start + batch_size]
            ]
            inputs = self.processor(
                images=batch, return_tensors="pt", input_data_format="channels_last", device=self.device
            )
            pixel_values = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
            with torch.autocast(
                torch.device(self.device).type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
            ):
                outputs = self.model(pixel_values=pixel_values)
            outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
            sizes = [tuple(frame.shape[:2]) for frame in batch]
            results = self.processor.post_process_object_detection(outputs, threshold=score_threshold, target_sizes=sizes)
            for size, result in zip(sizes, results):
                boxes.append(self._person_boxes(result, size))
        return boxes

    def _person_boxes(self, result: dict, frame_size: tuple[int, int]) -> np.ndarray:
        """The person rows of one post-processed result, clipped to the frame, duplicates removed."""
        from torchvision.ops import nms

        keep = result["labels"] == self.person_id
        xyxy = result["boxes"][keep].float()
        scores = result["scores"][keep].float()
        height, width = frame_size
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        order = nms(xyxy, scores, DUPLICATE_IOU)  # sorted by decreasing score
        rows = torch.cat([xyxy[order], scores[order, None]], dim=1)
        return rows.cpu().numpy().astype(np.float32).reshape(-1, 5)


def _person_label_id(id2label: dict) -> int:
    """The label id whose name is "person" (COCO); a detector without it can't be used here."""
    for label_id, name in id2label.items():
        if str(name).strip().lower() == PERSON_LABEL:
            return int(label_id)
    raise WanAnimateError(
        "The person detector has no 'person' class in its labels. Use a COCO-trained detector such as "
        f"{DEFAULT_DETECTOR}."
    )


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of ``x1, y1, x2, y2`` boxes: (N, 4), (M, 4) -> (N, M)."""
    a = np.asarray(boxes_a, dtype=np.float64)[:, None, :4]
    b = np.asarray(boxes_b, dtype=np.float64)[None, :, :4]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    intersection = width * height
    union = _area(a) + _area(b) - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def _rows(boxes: np.ndarray) -> np.ndarray:
    """Boxes as a float64 (N, >=4) array, also when a frame has none."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return boxes.reshape(0, 5) if boxes.size == 0 else boxes


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


@dataclass
class PersonTrack:
    """The one person followed through the clip.

    Attributes:
        boxes: (T, 4) float32 ``x1, y1, x2, y2`` per frame; NaN rows where the person was not found (the pose
            stage then uses the whole frame, as upstream does).
        persons_seen: Most people detected at once in any frame.
        chosen_by: ``"largest"`` (default) or ``"point"`` (the caller picked the person).
    """

    boxes: np.ndarray
    persons_seen: int
    chosen_by: str


def link_tracks(detections: Sequence[np.ndarray], iou_threshold: float = 0.3) -> list[dict[int, int]]:
    """Chain each frame's boxes into per-person tracks by overlap with each track's last seen box.

    Matching is greedy by decreasing IoU, so when two people cross, each box goes to the track it overlaps
    most; a box overlapping no track by ``iou_threshold`` starts a new track. A track that is lost keeps its
    last box and is picked up again when a box overlaps it.

    Args:
        detections: Per frame (N, >=4) boxes.
        iou_threshold: Minimum IoU for a box to continue a track.

    Returns:
        One dict per track, frame index -> row index in that frame's detections.
    """
    tracks: list[dict[int, int]] = []
    last_boxes: list[np.ndarray] = []
    for frame_index, boxes in enumerate(detections):
        boxes = _rows(boxes)
        unmatched = set(range(len(boxes)))
        if tracks and len(boxes):
            iou = box_iou(np.stack(last_boxes), boxes[:, :4])
            free_tracks = set(range(len(tracks)))
            for track_index, row in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape)):
                if iou[track_index, row] < iou_threshold:
                    break
                if track_index in free_tracks and row in unmatched:
                    tracks[track_index][frame_index] = int(row)
                    last_boxes[track_index] = boxes[row, :4]
                    free_tracks.discard(track_index)
                    unmatched.discard(row)
        for row in sorted(unmatched):
            tracks.append({frame_index: row})
            last_boxes.append(boxes[row, :4])
    return tracks


def track_person(
    detections: Sequence[np.ndarray],
    *,
    point: tuple[int, float, float] | None = None,
    iou_threshold: float = 0.3,
) -> PersonTrack:
    """Follow one person through the clip (contract, Keypoints: the largest person; a click may choose).

    Every detected person is tracked by overlap (`link_tracks`), so the followed box never jumps to another
    person who comes close or gets bigger. The default person is the track with the largest box area summed
    over the clip (upstream takes the largest box of each frame, which jumps between people); a point
    ``(frame, x, y)`` picks the track of the smallest box containing it on that frame. When no more than one
    person is ever in view, all of the clip's boxes are that person, as upstream has it.

    Args:
        detections: Per frame (N, 5) ``x1, y1, x2, y2, score`` person boxes, as from `PersonDetector.detect`.
        point: ``(frame index, x, y)`` in the frames' pixels on the chosen person, or ``None``.
        iou_threshold: Minimum IoU between consecutive boxes of one person.

    Returns:
        The followed person's boxes, with NaN rows where they were not found.

    Raises:
        WanAnimateError: When ``point`` is on no detected person or names a frame outside the clip.
    """
    chosen = None
    if point is not None:
        frame_index = _point_frame(point, len(detections))
        chosen = frame_index, _box_at_point(detections[frame_index], frame_index, point)
    return _track_chosen(detections, chosen, iou_threshold)


def _track_chosen(
    detections: Sequence[np.ndarray], chosen: tuple[int, int] | None, iou_threshold: float
) -> PersonTrack:
    """`track_person` once the chosen person, if any, is known as ``(detection index, row)``."""
    count = len(detections)
    boxes = np.full((count, 4), np.nan, dtype=np.float32)
    persons_seen = max((len(frame_boxes) for frame_boxes in detections), default=0)
    chosen_by = "largest" if chosen is None else "point"
    if persons_seen == 0:
        return PersonTrack(boxes=boxes, persons_seen=0, chosen_by=chosen_by)
    if persons_seen == 1:
        for frame_index, frame_boxes in enumerate(detections):
            if len(frame_boxes):
                boxes[frame_index] = np.asarray(frame_boxes)[0, :4]
        return PersonTrack(boxes=boxes, persons_seen=1, chosen_by=chosen_by)

    tracks = link_tracks(detections, iou_threshold)
    if chosen is None:
        followed = max(tracks, key=lambda track: _track_area(track, detections))
    else:
        followed = next(track for track in tracks if track.get(chosen[0]) == chosen[1])
    for frame_index, row in followed.items():
        boxes[frame_index] = np.asarray(detections[frame_index])[row, :4]
    return PersonTrack(boxes=boxes, persons_seen=persons_seen, chosen_by=chosen_by)


def _track_area(track: dict[int, int], detections: Sequence[np.ndarray]) -> float:
    return float(sum(_area(np.asarray(detections[frame])[row, :4]) for frame, row in track.items()))


def _point_frame(point: tuple[int, float, float], count: int) -> int:
    """The frame index of a chosen point, which must be a frame of the clip."""
    frame_index = int(point[0])
    if not 0 <= frame_index < count:
        raise WanAnimateError(
            f"The chosen point is on frame {frame_index}, but the clip has {count} frames. "
            "Click on a frame of the clip."
        )
    return frame_index


def _box_at_point(boxes: np.ndarray, frame_index: int, point: tuple[int, float, float]) -> int:
    """Row of the smallest of one frame's boxes containing the chosen point: the most specific person under it.

    ``frame_index`` is the clip frame the boxes are on, for the message.
    """
    x, y = float(point[1]), float(point[2])
    frame_boxes = _rows(boxes)[:, :4]
    inside = (frame_boxes[:, 0] <= x) & (x <= frame_boxes[:, 2]) & (frame_boxes[:, 1] <= y) & (y <= frame_boxes[:, 3])
    if not inside.any():
        raise WanAnimateError(
            f"No person was detected under the chosen point ({x:.0f}, {y:.0f}) on frame {frame_index}. "
            "Click on the person to follow, or leave the choice empty to follow the largest person."
        )
    rows = np.flatnonzero(inside)
    return int(rows[np.argmin(_area(frame_boxes[rows]))])


# -- detecting on every N-th frame ----------------------------------------------------------------------


def detection_stride(requested: int | None, device: str, fps: float) -> int:
    """How many frames apart the person detector runs.

    On a GPU the detector is cheap next to everything else, so it runs on every frame. On the CPU it costs
    as much as the pose model, so by default it runs once per `CPU_DETECT_SECONDS` (1/6 s: every 5th frame
    at 30 fps) and the boxes in between are interpolated (`interpolate_boxes`). Why that is safe: ViTPose
    crops the person box enlarged 1.25x (contract, Keypoints), a margin of 12.5 % of the box on each side.
    Linear interpolation follows steady motion exactly; what it misses is the change of velocity over the
    gap, at most ``a * T**2 / 8`` at the middle of a gap of ``T`` seconds. For ``T`` = 1/6 s that stays
    inside the margin of a 0.4 m wide box (5 cm) up to an acceleration of about 14 m/s^2 (1.5 g) of the
    whole box, which walking and dancing mostly stay below; a sudden kick, jump or flung arm may be cut at
    the crop's edge for a frame or two: pass 1 to detect on every frame.

    Args:
        requested: The caller's stride; ``None`` picks the default above.
        device: Torch device the detector runs on (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        fps: Frame rate of the analysed frames.

    Returns:
        The stride, 1 or more.

    Raises:
        WanAnimateError: When ``requested`` is below 1.
    """
    if requested is not None:
        if int(requested) < 1:
            raise WanAnimateError(f"The detection stride must be 1 (every frame) or more, not {requested}.")
        return int(requested)
    if torch.device(device).type != "cpu":
        return 1
    return max(1, round(fps * CPU_DETECT_SECONDS))


def is_detection_frame(index: int, every: int, extra: Container[int] = ()) -> bool:
    """Whether frame ``index`` is one the detector runs on, before knowing where the clip ends.

    Every ``every``-th frame from the first one, and the ``extra`` frames (the frame of a chosen point, so the
    clicked person is found on the very frame they were clicked on). A streaming pass adds the last frame
    once it knows it is the last (see `detection_frames`).
    """
    return index % every == 0 or index in extra


def detection_frames(count: int, every: int, extra: Iterable[int] = ()) -> list[int]:
    """The frames of a clip of ``count`` frames that the detector runs on, in order.

    Every ``every``-th frame from the first, the last frame (so the end of the clip is detected rather than
    extrapolated), and the ``extra`` frames inside the clip.

    Args:
        count: Frames in the clip.
        every: Stride, 1 or more.
        extra: Frames that must be detected as well (e.g. a chosen point's frame); those outside are ignored.

    Returns:
        Sorted unique frame indices.
    """
    extra = set(extra)
    return [index for index in range(count) if is_detection_frame(index, every, extra) or index == count - 1]


def interpolate_boxes(frames: Sequence[int], boxes: np.ndarray, count: int) -> np.ndarray:
    """Boxes of every frame from the boxes of the detected frames.

    Between two neighbouring detected frames where the person was found on both, the box moves linearly
    (see `detection_stride` for why that stays inside ViTPose's crop margin). Where the person was missing
    on either of the two, the frames between stay missing, so the person-found count and the "person in too
    few frames" check see every gap. Before the first and after the last detected frame, that frame's box is
    held (missing if it is).

    Args:
        frames: Detected frame indices, strictly increasing, inside ``0 .. count - 1``.
        boxes: (len(frames), 4) ``x1, y1, x2, y2`` per detected frame, NaN rows where the person was missing.
        count: Frames in the clip.

    Returns:
        (count, 4) float32 boxes, NaN rows where the person is missing.
    """
    frames = np.asarray(frames, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(frames) != len(boxes):
        raise ValueError(f"{len(frames)} detected frames but {len(boxes)} boxes")
    if len(frames) and (frames[0] < 0 or frames[-1] >= count or (np.diff(frames) <= 0).any()):
        raise ValueError("detected frames must be strictly increasing and inside the clip")
    result = np.full((count, 4), np.nan, dtype=np.float64)
    if not len(frames):
        return result.astype(np.float32)
    result[frames] = boxes
    for before, after, box_before, box_after in zip(frames[:-1], frames[1:], boxes[:-1], boxes[1:]):
        # NaN in either end makes the whole span NaN, which is the rule for gaps.
        weight = (np.arange(before + 1, after) - before)[:, None] / (after - before)
        result[before + 1 : after] = box_before + weight * (box_after - box_before)
    result[: frames[0]] = boxes[0]
    result[frames[-1] + 1 :] = boxes[-1]
    return result.astype(np.float32)


def follow_person(
    detections: Sequence[np.ndarray],
    frames: Sequence[int],
    count: int,
    *,
    point: tuple[int, float, float] | None = None,
    iou_threshold: float = 0.3,
) -> PersonTrack:
    """Follow one person through a clip detected on some frames only (`track_person`, then `interpolate_boxes`).

    The person is tracked over the detected frames alone, so between two of them a person moves further
    than between two consecutive frames: a box shifted sideways by ``s`` of its width ``w`` keeps an IoU of
    ``(w - s) / (w + s)``, e.g. 0.33 for someone 0.5 m wide walking across at 1.5 m/s over 1/6 s, just above
    the default ``iou_threshold``. With one person in view that does not matter (every box is theirs); with
    several, faster sideways motion can split the track, and the frames of the other pieces are then missing.

    Args:
        detections: Per detected frame (N, 5) person boxes, as from `PersonDetector.detect`.
        frames: The clip frame index of each entry of ``detections``, strictly increasing.
        count: Frames in the clip.
        point: ``(frame index, x, y)`` on the chosen person; its frame must be one of ``frames``.
        iou_threshold: Minimum IoU between a person's boxes on consecutive detected frames.

    Returns:
        The followed person's boxes on every frame of the clip, NaN rows where they are missing.

    Raises:
        WanAnimateError: When ``point`` is on no detected person or names a frame outside the clip.
    """
    frames = [int(frame) for frame in frames]
    if len(frames) != len(detections):
        raise ValueError(f"{len(frames)} frame indices for {len(detections)} detections")
    chosen = None
    if point is not None:
        frame_index = _point_frame(point, count)
        if frame_index not in frames:
            raise ValueError(f"frame {frame_index} of the chosen point was not detected on")
        position = frames.index(frame_index)
        chosen = position, _box_at_point(detections[position], frame_index, point)  # the message names the clip's frame
    track = _track_chosen(detections, chosen, iou_threshold)
    boxes = interpolate_boxes(frames, track.boxes, count)
    return PersonTrack(boxes=boxes, persons_seen=track.persons_seen, chosen_by=track.chosen_by)
