"""Replacement mode: the person mask (SAM2), its dilation and "blockify", and the background video.

Contract (``WAN_ANIMATE_CONTRACT.md``, "Replacement mode: mask and background"): SAM2 segments the person,
prompted with positive points at body keypoints; the mask is dilated, then "blockified"; the background is the
frame with the mask blacked out. Mask convention: 1 (white) = the region the model regenerates, 0 = kept.

Where we deliberately differ from upstream (the contract's fixes):

- Keypoint prompts drop points with a low score or outside the frame; a clip with no usable point, or a mask
  that is empty in every frame, is refused with a message instead of crashing.
- The whole clip is tracked in one SAM2 session, in bounded memory (see `PersonSegmenter.segment`), instead of
  restarting every 400 frames.
- Blockify uses exactly ``w_len`` x ``h_len`` cells over the inclusive bounding box (upstream's integer cell
  width can leave the box's last row and column unfilled, or crash when the box is narrower than the grid).

Upstream uses SAM 2.0 Hiera-L through the ``sam2`` package; we use SAM 2.1 Hiera-L (same size, better tracking)
through ``transformers``.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from ..errors import WanAnimateError
from ..hub import default_device, resolve_model_folder
from ..progress import ProgressCallback
from .keypoints import BODY_INDEX, present_points

logger = logging.getLogger("wan_animate")

DEFAULT_SAM2 = "facebook/sam2.1-hiera-large"
"""SAM 2.1 Hiera-L in the `transformers` format (Apache-2.0); upstream uses the same size (SAM 2.0 Hiera-L)."""

SAM2_FILES = ["config.json", "*processor_config.json", "*.safetensors"]
"""The files loading needs: model config, the (pre/video) processor configs, safetensors weights. The hub repo
also holds the original ``.pt`` checkpoint, which is skipped."""

PROMPT_KEYPOINTS: tuple[str, ...] = ("Nose", "Neck", "RShoulder", "LShoulder", "RHip", "LHip", "RAnkle", "LAnkle")
"""Body points that become positive SAM2 prompts (contract: nose, neck, shoulders, hips, ankles)."""

PROMPT_INDICES: tuple[int, ...] = tuple(BODY_INDEX[name] for name in PROMPT_KEYPOINTS)
"""`PROMPT_KEYPOINTS` as indices into the contract's 20-point body: 0, 1, 2, 5, 8, 11, 10, 13."""

OBJECT_ID = 1
"""SAM2's id of the one object tracked (the person)."""

EMPTY_MASK_MESSAGE = (
    "No person could be segmented in the driving video: the mask is empty in every frame. Add a positive point "
    "on the person (click on them in a frame where they are clearly visible)."
)


@dataclass(frozen=True)
class PointPrompt:
    """One SAM2 point prompt.

    Attributes:
        frame: Index of the frame the point is on (0 = first frame of the clip being segmented).
        x: Horizontal pixel coordinate in that frame.
        y: Vertical pixel coordinate in that frame.
        positive: ``True`` = the point is on the person, ``False`` = it is not.
    """

    frame: int
    x: float
    y: float
    positive: bool = True


def keypoint_prompts(
    body: np.ndarray,
    frame_size: tuple[int, int],
    *,
    key_frames: int = 4,
    min_score: float = 0.5,
    click_frames: Sequence[int] = (),
) -> list[PointPrompt]:
    """Positive prompts at the person's body keypoints on a few key frames spread over the clip.

    Contract ("Replacement mode"): positive points at Nose, Neck, shoulders, hips and ankles (upstream: 4 key
    frames, no score filter). Fix: points with ``score < min_score``, not finite, or outside the frame
    (``0 <= x < W``, ``0 <= y < H``) are dropped. The clip is split into ``key_frames`` equal spans (as
    upstream's 4 key frames are one per quarter); in each span the frame with the most usable points is taken
    (ties: the higher score sum, then the earlier frame); a span without any usable point gives no key frame.

    SAM2 segments every prompted frame from that frame's points alone, so a user's click on a frame without
    body points would stand alone (a lone negative click leaves SAM2 nothing to segment). Pass the clicked
    frames as ``click_frames``: they get their usable body points too, and the clicks refine the body's mask.

    Args:
        body: (T, 20, 3) ``x, y, score`` per frame in the contract's body order, in pixels of the frames SAM2
            segments.
        frame_size: ``(H, W)`` of those frames.
        key_frames: Number of spans, so at most this many prompted frames.
        min_score: Lowest keypoint score kept.
        click_frames: Frames to prompt as well (where the user clicked); out-of-range frames are ignored.

    Returns:
        The prompts, ordered by frame.

    Raises:
        WanAnimateError: No frame has a single usable point.
    """
    body = np.asarray(body, dtype=np.float64)
    if body.ndim != 3 or body.shape[1:] != (20, 3):
        raise ValueError(f"body must be (T, 20, 3), got {body.shape}")
    if key_frames < 1:
        raise ValueError(f"key_frames must be >= 1, got {key_frames}")
    points = body[:, PROMPT_INDICES]  # (T, 8, 3)
    usable = usable_prompt_points(points, frame_size, min_score)
    counts = usable.sum(axis=1)
    if len(body) == 0 or counts.max() == 0:
        raise WanAnimateError(
            "No person found to segment: no frame has a confidently detected nose, neck, shoulder, hip or ankle "
            "inside the frame. Use a clip where the person is clearly visible, or add a positive point on them."
        )
    score_sums = np.where(usable, points[..., 2], 0.0).sum(axis=1)
    chosen = {int(frame) for frame in click_frames if 0 <= frame < len(body)}
    for span in np.array_split(np.arange(len(body)), min(key_frames, len(body))):
        if counts[span].max() > 0:
            # lexsort sorts by the last key first: most usable points, then the highest score sum, then earliest.
            chosen.add(int(span[np.lexsort((span, -score_sums[span], -counts[span]))[0]]))
    return [
        PointPrompt(frame=frame, x=float(x), y=float(y), positive=True)
        for frame in sorted(chosen)
        for x, y, _ in points[frame][usable[frame]]
    ]


def usable_prompt_points(points: np.ndarray, frame_size: tuple[int, int], min_score: float) -> np.ndarray:
    """Which keypoints may be SAM2 prompts.

    Contract fix ("Replacement mode"): drop points with a low score or outside the frame. A point is usable when
    its score is ``>= min_score`` and ``0 <= x < W`` and ``0 <= y < H`` (all finite).

    Args:
        points: (..., 3) ``x, y, score``.
        frame_size: ``(H, W)``.
        min_score: Lowest score kept.

    Returns:
        Boolean array of shape ``points.shape[:-1]``.
    """
    height, width = frame_size
    with np.errstate(invalid="ignore"):
        return present_points(points, min_score) & (points[..., 0] < width) & (points[..., 1] < height)


GPU_ENCODER_BATCH = 8
"""Frames per pass of SAM2's image encoder on a GPU (Hiera-L at 1024 x 1024 in bf16: a few GiB of activations).
On the CPU frames are encoded one at a time, as SAM2 itself does."""


class PersonSegmenter:
    """SAM2 video segmentation of one person through a whole clip.

    Attributes:
        model: The `transformers` ``Sam2VideoModel``, in eval mode.
        processor: Its ``Sam2VideoProcessor``.
        device: Where the model runs (``"cuda:0"``, ``"cpu"``).
        dtype: Compute dtype (bfloat16 on CUDA, float32 on CPU).
        encoder_batch: Frames per pass of the image encoder (see `segment`).
    """

    def __init__(self, model: torch.nn.Module, processor, dtype: torch.dtype, encoder_batch: int | None = None) -> None:
        self.model = model
        self.processor = processor
        self.dtype = dtype
        self.device = str(next(model.parameters()).device)
        self.encoder_batch = encoder_batch or (GPU_ENCODER_BATCH if torch.device(self.device).type == "cuda" else 1)

    @classmethod
    def from_pretrained(
        cls, source: str | Path = DEFAULT_SAM2, *, device: str | None = None, dtype: torch.dtype | None = None
    ) -> "PersonSegmenter":
        """Load SAM2 (model and processor) in the `transformers` format.

        Args:
            source: Hugging Face repo id (only `SAM2_FILES` are downloaded) or a local folder saved with
                ``save_pretrained`` (model and processor).
            device: Torch device; ``None`` picks CUDA when available, else CPU.
            dtype: Compute dtype; ``None`` = bfloat16 on CUDA (as the `transformers` SAM2 video examples),
                float32 elsewhere.

        Returns:
            The segmenter, on ``device``.

        Raises:
            WanAnimateError: The source is neither a folder nor a repo id, the download failed, or the folder
                holds no SAM2 video model.
        """
        from transformers import Sam2VideoModel, Sam2VideoProcessor

        folder = resolve_model_folder(source, SAM2_FILES, "SAM2 model")
        device = device or default_device()
        if dtype is None:
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        try:
            processor = Sam2VideoProcessor.from_pretrained(folder)
            model = Sam2VideoModel.from_pretrained(folder)
        except (OSError, ValueError, TypeError) as error:
            raise WanAnimateError(f"The folder {folder} does not hold a SAM2 video model ({error}).") from error
        model = model.to(device, dtype=dtype).eval()
        segmenter = cls(model, processor, dtype)
        logger.info("SAM2 %s loaded on %s (%s).", source, segmenter.device, dtype)
        return segmenter

    @property
    def memory_frames(self) -> int:
        """How many neighbouring frames' tracking state SAM2 reads: its mask memories (``num_maskmem - 1``
        previous frames) and object pointers (``max_object_pointers_in_encoder - 1`` previous frames)."""
        config = self.model.config
        return max(config.num_maskmem - 1, config.max_object_pointers_in_encoder - 1, 1)

    @torch.inference_mode()
    def segment(
        self,
        frames: np.ndarray,
        prompts: Sequence[PointPrompt],
        *,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Segment the prompted person in every frame.

        Contract ("Replacement mode"): SAM2 prompted with points; tracked across the whole clip (fix: upstream
        restarts every 400 frames). The order is SAM2's own: every prompted frame is first segmented from its
        points alone (as upstream adds all key-frame points before propagating; see ``click_frames`` of
        `keypoint_prompts` for clicked frames), then the memory propagates forward from the earliest prompted
        frame to the end, then backward from it to the first frame. All prompted frames stay in SAM2's memory
        as conditioning frames for every tracked frame.

        The image encoder (Hiera) sees each frame alone, so it runs ahead of the tracking on `encoder_batch`
        frames at a time, in the order they are tracked, and each frame's features are handed to the model's
        session cache just before its step (where SAM2 would otherwise encode the frame itself); the memory
        attention, mask decoder and memory encoder then run frame by frame, as they must.

        Memory is bounded whatever the clip length: frames are preprocessed and encoded a batch at a time and
        fed to the `transformers` streaming session one at a time, each frame's pixels and features are dropped
        after its step, and the per-frame tracking state (mask memories, object pointers, masks) is kept only
        for the `memory_frames` frames that SAM2 reads next, plus those right after the earliest prompted frame
        which the backward pass reads: at most ``2 * memory_frames + 1`` tracked frames' state at any time, plus
        the prompted frames'.

        Args:
            frames: (T, H, W, 3) uint8 RGB frames.
            prompts: Points on any frames (keypoint prompts, user clicks; positive or negative); at least one.
            progress: Called as ``progress(done, T, description)`` after each frame.

        Returns:
            (T, H, W) bool, True = the person.

        Raises:
            WanAnimateError: No prompt, a prompt on a frame the clip doesn't have, or an empty mask in every
                frame.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
        count, height, width = frames.shape[:3]
        by_frame = _group_prompts(prompts, count)
        prompted = sorted(by_frame)
        first = prompted[0]
        logger.info("SAM2: %d frames of %dx%d, prompts on frames %s.", count, width, height, prompted)

        session = self.processor.init_video_session(
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device=self.device,
            dtype=self.dtype,
        )
        masks = np.zeros((count, height, width), dtype=bool)
        done = 0
        # The order of the steps below: the prompted frames, the forward pass, the backward pass.
        forward = [index for index in range(first + 1, count) if index not in by_frame]
        encoded = self._encoded_frames(frames, prompted + forward + list(range(first - 1, -1, -1)))

        def step(index: int, reverse: bool = False) -> None:
            nonlocal done
            encoded_index, pixels, features = next(encoded)
            if encoded_index != index:
                raise AssertionError(f"frame {encoded_index} was encoded for step {index}")
            session.cache.cache_vision_features(index, features)
            output = self.model(inference_session=session, frame=pixels, frame_idx=index, reverse=reverse)
            masks[index] = self._full_size_mask(output.pred_masks, (height, width))
            session.processed_frames.pop(index, None)  # this frame's pixels are never read again
            done += 1
            if progress is not None:
                progress(done, count, "Segmenting the person")

        for index in prompted:
            points, labels = by_frame[index]
            self.processor.add_inputs_to_inference_session(
                session,
                frame_idx=index,
                obj_ids=OBJECT_ID,
                input_points=[[points]],
                input_labels=[[labels]],
                original_size=(height, width),
            )
            step(index)
        window = self.memory_frames
        for index in range(first + 1, count):
            if index not in by_frame:
                step(index)
            # Keep what the next frames read, and the frames right after `first`, which the backward pass reads.
            if index - window > first + window:
                _forget_tracking_state(session, index - window)
        for index in range(first + window + 1, count):  # the forward pass's last frames: not read backward
            _forget_tracking_state(session, index)
        for index in range(first - 1, -1, -1):
            step(index, reverse=True)
            _forget_tracking_state(session, index + window)
        require_mask(masks)
        return masks

    def _encoded_frames(self, frames: np.ndarray, order: Sequence[int]) -> Iterator[tuple[int, torch.Tensor, dict]]:
        """``(index, pixel values, image features)`` of the frames in ``order``, encoded `encoder_batch` at a time.

        The features are what the model's own per-frame encoding caches (``Sam2VideoModel.get_image_features``:
        per level, (H*W, 1, C) maps and position encodings); the position encodings depend on the input size only,
        so one frame's serve the whole batch.
        """
        for start in range(0, len(order), self.encoder_batch):
            chunk = order[start : start + self.encoder_batch]
            images = [frames[index] for index in chunk]
            pixels = self.processor(images=images, device=self.device, return_tensors="pt").pixel_values.to(self.dtype)
            outputs = self.model.get_image_features(pixels, return_dict=True)
            positions = [level[:, :1].contiguous() for level in outputs.fpn_position_encoding]
            # Copies of each frame's slice, so the batch's outputs are freed before its frames are tracked.
            features = [
                {"vision_feats": [level[:, row : row + 1].contiguous() for level in outputs.fpn_hidden_states],
                 "vision_pos_embeds": positions}
                for row in range(len(chunk))
            ]  # fmt: skip
            del outputs
            for row, index in enumerate(chunk):
                yield index, pixels[row], features[row]
                features[row] = None

    def _full_size_mask(self, low_res_logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """SAM2's low-resolution mask logits -> (H, W) bool at the frame size (bilinear, logit > 0)."""
        full = self.processor.post_process_masks([low_res_logits.float()], original_sizes=[size], binarize=True)[0]
        return full[0, 0].cpu().numpy()


def _group_prompts(prompts: Sequence[PointPrompt], count: int) -> dict[int, tuple[list[list[float]], list[int]]]:
    """Prompts per frame as SAM2 wants them: ``{frame: ([[x, y], ...], [1 or 0, ...])}``."""
    if not prompts:
        raise WanAnimateError("SAM2 needs at least one point on the person to segment them; add a positive point.")
    grouped: dict[int, tuple[list[list[float]], list[int]]] = defaultdict(lambda: ([], []))
    for prompt in prompts:
        if not 0 <= prompt.frame < count:
            raise WanAnimateError(
                f"A point is on frame {prompt.frame}, but the clip has frames 0 to {count - 1}. Remove that point "
                "or pick it again on a frame of the clip."
            )
        points, labels = grouped[int(prompt.frame)]
        points.append([float(prompt.x), float(prompt.y)])
        labels.append(1 if prompt.positive else 0)
    return dict(grouped)


def _forget_tracking_state(session, frame: int) -> None:
    """Drop one tracked (non-prompted) frame's stored SAM2 outputs; prompted frames' outputs are always kept."""
    for outputs in session.output_dict_per_obj.values():
        outputs["non_cond_frame_outputs"].pop(frame, None)


def require_mask(masks: np.ndarray) -> None:
    """Refuse a mask that is empty in every frame.

    Contract fix ("Replacement mode"): refuse clearly when no person is found (upstream crashes on an empty
    mask).

    Raises:
        WanAnimateError: No pixel of any frame is in the mask.
    """
    if not np.any(masks):
        raise WanAnimateError(EMPTY_MASK_MESSAGE)


def dilate_mask(mask: np.ndarray, kernel_size: int = 7, iterations: int = 3) -> np.ndarray:
    """Grow the mask.

    Contract ("Replacement mode"): dilate with a ``k x k`` kernel of ones, ``iterations`` times (defaults 7 and
    3), as OpenCV's ``dilate``. Each iteration grows the mask by ``k // 2`` pixels on every side, so a single
    pixel becomes a square of side ``1 + 2 * iterations * (k // 2)`` (19 with the defaults).

    Args:
        mask: (H, W) bool or {0, 1} array.
        kernel_size: Side ``k`` of the square kernel (>= 1).
        iterations: Times the dilation is applied (>= 0; 0 leaves the mask as it is).

    Returns:
        (H, W) uint8 {0, 1}.
    """
    if kernel_size < 1 or iterations < 0:
        raise ValueError(f"kernel_size must be >= 1 and iterations >= 0, got {kernel_size} and {iterations}")
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if iterations == 0 or kernel_size == 1:
        return binary
    return cv2.dilate(binary, np.ones((kernel_size, kernel_size), np.uint8), iterations=iterations)


def blockify_mask(mask: np.ndarray, w_len: int = 1, h_len: int = 1) -> np.ndarray:
    """Turn the mask into blocks of a grid laid over its bounding box.

    Contract ("Replacement mode"): split the mask's bounding box into a ``w_len`` x ``h_len`` grid (``w_len``
    columns along x, ``h_len`` rows along y, as upstream's ``get_aug_mask``) and fill every cell that contains
    mask pixels. ``1 x 1`` gives the filled bounding box; 8 to 32 a blocky silhouette. The box is inclusive
    (its last row and column belong to it); column edges are ``round(linspace(x_min, x_max + 1, w_len + 1))``,
    rows likewise. An empty mask stays empty.

    Args:
        mask: (H, W) bool or {0, 1} array.
        w_len: Number of columns (>= 1).
        h_len: Number of rows (>= 1).

    Returns:
        (H, W) uint8 {0, 1}.
    """
    if w_len < 1 or h_len < 1:
        raise ValueError(f"w_len and h_len must be >= 1, got {w_len} and {h_len}")
    binary = np.asarray(mask) > 0
    result = binary.astype(np.uint8)
    x0, y0, box_w, box_h = cv2.boundingRect(result)  # of the non-zero pixels; a tenth of np.nonzero's time
    if box_w == 0:
        return result
    y1, x1 = y0 + box_h, x0 + box_w
    box = binary[y0:y1, x0:x1]
    # Grid edges relative to the box; a grid finer than the box gives zero-size cells, which are dropped.
    row_edges = np.unique(np.round(np.linspace(0, y1 - y0, h_len + 1)).astype(int))
    col_edges = np.unique(np.round(np.linspace(0, x1 - x0, w_len + 1)).astype(int))
    rows_any = np.logical_or.reduceat(box, row_edges[:-1], axis=0)
    cells = np.logical_or.reduceat(rows_any, col_edges[:-1], axis=1)  # (rows, cols): cell has mask pixels
    filled = np.repeat(np.repeat(cells, np.diff(row_edges), axis=0), np.diff(col_edges), axis=1)
    result[y0:y1, x0:x1] = filled
    return result


def refine_masks(
    masks: np.ndarray, kernel_size: int = 7, iterations: int = 3, w_len: int = 1, h_len: int = 1
) -> np.ndarray:
    """Dilate, then blockify, every frame's mask (upstream's order).

    Contract ("Replacement mode"): `dilate_mask` with ``k x k`` ones ``iterations`` times, then `blockify_mask`
    with a ``w_len`` x ``h_len`` grid. Unlike upstream, ``iterations = 0`` skips only the dilation, not the
    blockify.

    Args:
        masks: (T, H, W) bool or {0, 1}.
        kernel_size: Dilation kernel side.
        iterations: Dilation iterations.
        w_len: Blockify columns.
        h_len: Blockify rows.

    Returns:
        (T, H, W) uint8 {0, 1}: 1 = region the model regenerates, 0 = kept.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (T, H, W), got {masks.shape}")
    refined = np.empty(masks.shape, dtype=np.uint8)
    for index, mask in enumerate(masks):
        refined[index] = blockify_mask(dilate_mask(mask, kernel_size, iterations), w_len, h_len)
    return refined


def background_frames(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The background video: each frame with the mask blacked out.

    Contract ("Replacement mode"): background = frame x (1 - mask); mask 1 = regenerated.

    Args:
        frames: (T, H, W, 3) uint8.
        masks: (T, H, W) bool or {0, 1}.

    Returns:
        (T, H, W, 3) uint8.
    """
    frames, masks = _checked_pair(frames, masks)
    background = np.zeros(frames.shape, np.uint8)
    for frame, mask, out in zip(frames, masks, background):
        background_frame(frame, mask, out)
    return background


def background_frame(frame: np.ndarray, mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    """One frame of `background_frames`, written into ``out``, which must be black (zeros) where ``mask`` is set.

    The frame's kept pixels are copied by OpenCV, which releases the GIL: preprocessing makes these frames on
    the threads that encode them, beside the encoders of the other videos.

    Args:
        frame: (H, W, 3) uint8.
        mask: (H, W) bool or {0, 1}.
        out: (H, W, 3) uint8, zeros where the mask is set (e.g. a slice of ``np.zeros``).

    Returns:
        ``out``.
    """
    kept = np.less_equal(mask, 0).view(np.uint8)
    cv2.copyTo(frame, kept, out)
    return out


def mask_overlay_frames(
    frames: np.ndarray, masks: np.ndarray, color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.5
) -> np.ndarray:
    """The mask drawn over the frames, for a person to check it (`mask_overlay`, frame by frame).

    Args:
        frames: (T, H, W, 3) uint8 RGB.
        masks: (T, H, W) bool or {0, 1}.
        color: RGB colour of the regenerated region.
        alpha: Weight of the colour in masked pixels (0 = invisible, 1 = solid).

    Returns:
        (T, H, W, 3) uint8.
    """
    frames, masks = _checked_pair(frames, masks)
    overlay = np.empty_like(frames)
    for index in range(len(frames)):
        overlay[index] = mask_overlay(frames[index], masks[index], color, alpha)
    return overlay


def mask_overlay(
    frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.5
) -> np.ndarray:
    """One frame with the mask drawn over it: masked pixels blend toward ``color``.

    Every channel value maps to one blended value, so the blend is a lookup table (`_tint_table`) applied by
    OpenCV, as is the copy into the masked pixels: no per-pixel work in Python, and the GIL is released (the
    mask preview is made on the thread that encodes it).

    Args:
        frame: (H, W, 3) uint8 RGB.
        mask: (H, W) bool or {0, 1}.
        color: RGB colour of the regenerated region.
        alpha: Weight of the colour in masked pixels (0 = invisible, 1 = solid).

    Returns:
        (H, W, 3) uint8: ``round((1 - alpha) * frame + alpha * color)`` (in float32, halves to even) where
        masked, the frame elsewhere.
    """
    overlay = frame.copy()
    cv2.copyTo(cv2.LUT(frame, _tint_table(tuple(color), float(alpha))), np.greater(mask, 0).view(np.uint8), overlay)
    return overlay


@functools.lru_cache(maxsize=8)
def _tint_table(color: tuple[int, int, int], alpha: float) -> np.ndarray:
    """`mask_overlay`'s blend of every channel value: (256, 1, 3) uint8, OpenCV's per-channel lookup table."""
    values = np.arange(256, dtype=np.float32)[:, None]
    blended = values * (1 - alpha) + np.asarray(color, dtype=np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8).reshape(256, 1, 3)


def mask_coverage(masks: np.ndarray) -> float:
    """Mean fraction of the frame area the mask regenerates (0 for no frames)."""
    masks = np.asarray(masks)
    if not masks.size:
        return 0.0
    # 0/1 or bool masks are counted in place: a (T, H, W) comparison would be a clip-sized array to fill.
    regenerated = masks if masks.dtype in (np.bool_, np.uint8) else masks > 0
    return np.count_nonzero(regenerated) / masks.size


def _checked_pair(frames: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames and masks as arrays, after checking their shapes agree and the frames are uint8."""
    frames, masks = np.asarray(frames), np.asarray(masks)
    if frames.ndim != 4 or frames.shape[-1] != 3 or masks.shape != frames.shape[:3]:
        raise ValueError(f"frames (T, H, W, 3) and masks (T, H, W) don't match: {frames.shape}, {masks.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return frames, masks
