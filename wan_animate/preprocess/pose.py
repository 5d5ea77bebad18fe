"""Whole-body 2D pose: 133 COCO-WholeBody keypoints per frame from ViTPose-H (contract, Keypoints).

The weights are upstream's ONNX export of ViTPose-H whole-body. Two ways to run it:

- ``backend="torch"`` (default): the ONNX graph is read structurally and its weights are copied into
  `transformers`' ``VitPoseForPoseEstimation``, which runs on the GPU beside diffusers with no extra package.
- ``backend="onnxruntime"``: the ONNX file as is, in an onnxruntime session.

A file whose graph the torch reader does not understand (another export of ViTPose) falls back to onnxruntime
by itself: logged, and said in the quality report (`PoseEstimator.fallback`).

Top-down pose, as upstream and mmpose do it: the person box is widened to the model's 192:256 aspect and
padded 1.25x, that region is warped to a 256 x 192 crop, the crop is normalised with ImageNet mean/std (in RGB
order: upstream feeds BGR by accident, the contract's fix), the model gives 64 x 48 heatmaps, and each
heatmap's peak is refined to sub-pixel precision with DARK before it is mapped back into the frame.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Protocol, Sequence

import cv2
import numpy as np
import torch

from ..errors import WanAnimateError
from ..hub import default_device, resolve_model_folder
from ..progress import ProgressCallback
from .vitpose_onnx import INPUT_SIZE, UnsupportedPoseGraph, vitpose_from_onnx

logger = logging.getLogger("wan_animate")

DEFAULT_POSE_REPO = "Wan-AI/Wan2.2-Animate-14B"
POSE_FILE = "process_checkpoint/pose2d/vitpose_h_wholebody.onnx"
POSE_FILES = ["process_checkpoint/pose2d/*"]
"""The whole folder: ViTPose-H is over protobuf's 2 GB limit, so its weights are external files beside the .onnx."""
BOX_PADDING = 1.25
"""The crop region is this many times the (aspect-corrected) person box, so limbs at its edge stay in view."""

MIN_BOX_SIDE = 10.0
"""A box narrower or shorter than this (pixels) is not trusted; the whole frame is used, as upstream does."""

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
"""Per channel, in RGB order, for pixels scaled to [0, 1]."""

DARK_KERNEL = 11
"""Gaussian kernel of the DARK modulation: 11 matches the sigma = 2 heatmaps ViTPose was trained on."""

PoseBackend = Literal["torch", "onnxruntime"]


# -- finding the model --------------------------------------------------------------------------------


def resolve_pose_file(source: str | Path) -> Path:
    """The ViTPose ONNX file for a hub repo id, a folder, or the file itself.

    Args:
        source: A ``.onnx`` file; a folder holding ``POSE_FILE`` (a snapshot of the hub repo) or holding
            ``vitpose_h_wholebody.onnx`` directly; or a hub repo id, of which only the ``pose2d`` folder is
            downloaded.

    Returns:
        Path of the ``.onnx`` file (its external weight files lie beside it).
    """
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".onnx":
            raise WanAnimateError(f"The pose model {path} is not an .onnx file.")
        return path
    if path.is_dir():
        for candidate in (path / POSE_FILE, path / Path(POSE_FILE).name):
            if candidate.is_file():
                return candidate
        raise WanAnimateError(
            f"The folder {path} holds neither {POSE_FILE} nor {Path(POSE_FILE).name}. Pass the folder of a "
            f"download of {DEFAULT_POSE_REPO}, or the .onnx file itself."
        )
    folder = resolve_model_folder(source, POSE_FILES, "pose model")
    if not (folder / POSE_FILE).is_file():
        raise WanAnimateError(f"The Hugging Face repo '{source}' has no {POSE_FILE}.")
    return folder / POSE_FILE


# -- crop: contract, Keypoints ("crop 256x192 (HxW) of the person box expanded 1.25x") ----------------------


def crop_region(box: np.ndarray | None, frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The frame region the model sees for one person box.

    Contract, Keypoints: the box is widened (never shrunk) to the model's width:height of 192:256 about its
    centre, then enlarged by `BOX_PADDING`. No box (NaN), or one under `MIN_BOX_SIDE`, means the whole frame.

    Args:
        box: ``x1, y1, x2, y2`` in frame pixels, NaN for none.
        frame_size: (height, width) of the frame.

    Returns:
        ``center`` (x, y) and ``size`` (width, height) of the region, in frame pixels.
    """
    height, width = frame_size
    box = None if box is None else np.asarray(box, dtype=np.float64)[:4]
    if box is None or not np.isfinite(box).all() or min(box[2] - box[0], box[3] - box[1]) < MIN_BOX_SIDE:
        box = np.array([0.0, 0.0, width, height])
    x1, y1, x2, y2 = box
    aspect = INPUT_SIZE[0] / INPUT_SIZE[1]
    region_height = max((x2 - x1) * aspect, y2 - y1) * BOX_PADDING
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    return center, np.array([region_height / aspect, region_height])


def crop_transform(center: np.ndarray, size: np.ndarray, output_size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """The 2 x 3 affine map from frame pixels to crop pixels.

    The region's left/top edge goes to crop pixel 0 and its width to the crop's width, the convention of
    mmpose's top-down affine (the region's centre lands on crop pixel (W/2, H/2)) that ViTPose was trained with,
    and the exact inverse of `heatmap_to_frame`. (Upstream instead cuts the region rounded to whole pixels and
    resizes it, which shifts points by up to about a pixel of the frame; decoding is the same.)
    """
    scale_x = output_size[1] / size[0]
    scale_y = output_size[0] / size[1]
    left, top = center[0] - size[0] / 2, center[1] - size[1] / 2
    return np.array([[scale_x, 0.0, -left * scale_x], [0.0, scale_y, -top * scale_y]])


def crop_person(frame: np.ndarray, center: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The region warped to the model's input size (bilinear; outside the frame is black, as upstream)."""
    matrix = crop_transform(center, size)
    return cv2.warpAffine(
        np.ascontiguousarray(frame),
        matrix,
        (INPUT_SIZE[1], INPUT_SIZE[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def normalize_crops(crops: np.ndarray) -> np.ndarray:
    """RGB uint8 crops (N, H, W, 3) -> model input (N, 3, H, W) float32.

    Contract, Keypoints: ImageNet mean/std, and RGB channel order (fix: upstream feeds BGR by accident).
    """
    pixels = (crops.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


# -- decoding: contract, Keypoints ("heatmaps decoded with DARK/unbiased sub-pixel refinement") ------------


def dark_decode(heatmaps: np.ndarray, kernel: int = DARK_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak of every heatmap, with DARK (Zhang et al., CVPR 2020).

    Contract, Keypoints. The integer peak is refined by one Newton step on the log of the heatmap after
    Gaussian modulation: ``offset = -H^-1 g`` with the gradient ``g`` from central differences and the Hessian
    ``H`` from differences two pixels apart. A Gaussian heatmap has a quadratic log, so the step lands on its
    true centre. Peaks within 2 pixels of the border keep their integer position (as mmpose does), and so do
    peaks where the log-heatmap is not locally a maximum (mmpose steps anyway, to anywhere).

    Args:
        heatmaps: (N, K, h, w) model output.
        kernel: Odd size of the modulating Gaussian (sigma follows OpenCV's rule: 2.0 for 11).

    Returns:
        ``coords`` (N, K, 2) as (x, y) in heatmap pixels, and ``scores`` (N, K): each heatmap's maximum.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    count, keypoints, height, width = heatmaps.shape
    maps = heatmaps.reshape(count * keypoints, height, width)
    peak = maps.reshape(len(maps), -1).argmax(axis=1)
    scores = maps.reshape(len(maps), -1)[np.arange(len(maps)), peak]
    px, py = peak % width, peak // width
    coords = np.stack([px, py], axis=1).astype(np.float64)

    log_maps = np.log(np.maximum(_modulate(maps, kernel), 1e-10)).astype(np.float64)
    inner = (px > 1) & (px < width - 2) & (py > 1) & (py < height - 2)
    index, x, y = np.flatnonzero(inner), px[inner], py[inner]

    def at(dx: int, dy: int) -> np.ndarray:
        return log_maps[index, y + dy, x + dx]

    grad_x = 0.5 * (at(1, 0) - at(-1, 0))
    grad_y = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    dyy = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    # Only at a true maximum (negative definite Hessian) does the step point to the peak; elsewhere (a flat
    # or saddle-shaped map, where mmpose's step can fly off) the integer peak is kept. The peak of a
    # Gaussian is within half a pixel of its integer argmax, so a step is also capped at one pixel.
    maximum = (dxx < 0) & (det > 0)
    safe_det = np.where(maximum, det, 1.0)
    newton = np.stack([dyy * grad_x - dxy * grad_y, dxx * grad_y - dxy * grad_x], axis=1)
    offset = -newton / safe_det[:, None]
    coords[index[maximum]] += np.clip(offset[maximum], -1.0, 1.0)
    return coords.reshape(count, keypoints, 2), scores.reshape(count, keypoints)


def _modulate(maps: np.ndarray, kernel: int) -> np.ndarray:
    """Gaussian-blur each map with zero padding, rescaled to keep its maximum (DARK's distribution modulation)."""
    if kernel % 2 != 1:
        raise ValueError(f"The DARK kernel must be odd, got {kernel}.")
    blurred = np.empty_like(maps)
    for index, heatmap in enumerate(maps):
        blurred[index] = cv2.GaussianBlur(heatmap, (kernel, kernel), 0, borderType=cv2.BORDER_CONSTANT)
    original_max = maps.reshape(len(maps), -1).max(axis=1)
    blurred_max = blurred.reshape(len(maps), -1).max(axis=1)
    ratio = np.where(blurred_max != 0, original_max / np.where(blurred_max != 0, blurred_max, 1), 1.0)
    return blurred * ratio[:, None, None].astype(np.float32)


def heatmap_to_frame(
    coords: np.ndarray, center: np.ndarray, size: np.ndarray, heatmap_size: tuple[int, int]
) -> np.ndarray:
    """Heatmap (x, y) -> frame pixels for crops of regions ``center`` (N, 2) and ``size`` (N, 2).

    Heatmap pixel ``p`` is crop pixel ``p * input / heatmap`` (4x), which is frame pixel
    ``left + p * region / heatmap``: the inverse of `crop_transform`, as in mmpose's non-UDP decoding.
    """
    center = np.asarray(center, dtype=np.float64)[:, None, :]
    size = np.asarray(size, dtype=np.float64)[:, None, :]
    heatmap_wh = np.array([heatmap_size[1], heatmap_size[0]], dtype=np.float64)
    return center - size / 2 + coords * size / heatmap_wh


# -- runners ------------------------------------------------------------------------------------------


class HeatmapRunner(Protocol):
    """Runs the network: model input (N, 3, 256, 192) float32 -> heatmaps (N, K, 64, 48) float32."""

    device: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    """The ONNX weights in `transformers`' ``VitPoseForPoseEstimation``, on a torch device."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        self.model = model.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(pixels).to(self.device)
        return self.model(pixel_values=inputs).heatmaps.float().cpu().numpy()


class OnnxRuntimeRunner:
    """The ONNX file in an onnxruntime session: the CUDA provider where it is installed, else CPU."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path, device: str) -> None:
        import onnxruntime

        torch_device = torch.device(device)
        available = onnxruntime.get_available_providers()
        providers: list = ["CPUExecutionProvider"]
        if torch_device.type == "cuda" and "CUDAExecutionProvider" in available:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": torch_device.index or 0}))
        self.session = onnxruntime.InferenceSession(str(onnx_path), providers=providers)
        on_gpu = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = f"cuda:{torch_device.index or 0}" if on_gpu else "cpu"
        if not on_gpu and torch_device.type == "cuda":
            logger.warning(
                "Pose estimation runs on the CPU although %s was asked for: onnxruntime has no CUDA provider here "
                "(install onnxruntime-gpu, or use backend='torch'). It will be slow.",
                device,
            )
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        outputs = self.session.run(None, {self.input_name: pixels.astype(self.input_dtype)})
        return np.asarray(outputs[0], dtype=np.float32)


# -- the estimator ------------------------------------------------------------------------------------


class PoseEstimator:
    """Whole-body keypoints of one person per frame.

    Attributes:
        runner: The network (see `TorchRunner`, `OnnxRuntimeRunner`).
        device: Where the network actually runs.
        fallback: Why the network runs in onnxruntime although torch was asked for, else ``None``.
    """

    def __init__(self, runner: HeatmapRunner, fallback: str | None = None) -> None:
        self.runner = runner
        self.fallback = fallback

    @property
    def backend(self) -> str:
        """``"torch"`` or ``"onnxruntime"``: what the network actually runs in."""
        return getattr(self.runner, "backend", type(self.runner).__name__)

    @property
    def device(self) -> str:
        return self.runner.device

    @classmethod
    def from_pretrained(
        cls, source: str | Path = DEFAULT_POSE_REPO, *, backend: PoseBackend = "torch", device: str | None = None
    ) -> "PoseEstimator":
        """Load ViTPose whole-body from upstream's ONNX file.

        Args:
            source: Hub repo id (only ``process_checkpoint/pose2d/`` is downloaded), a local folder holding
                `POSE_FILE` or the ``.onnx`` directly, or the ``.onnx`` file.
            backend: ``"torch"`` (ONNX weights in transformers' ViTPose, default) or ``"onnxruntime"``. A graph
                the torch reader does not understand runs in onnxruntime instead (``.fallback`` says why).
            device: Torch device; ``None`` picks CUDA when available, else CPU.

        Returns:
            The estimator; ``.backend`` and ``.device`` tell how and where it runs (also logged).
        """
        onnx_path = resolve_pose_file(source)
        device = device or default_device()
        fallback = None
        if backend == "torch":
            try:
                runner: HeatmapRunner = TorchRunner(vitpose_from_onnx(onnx_path, device), device)
            except UnsupportedPoseGraph as error:
                fallback = error.detail
                logger.warning("The pose model's graph can't be read into torch (%s); running it in onnxruntime.", fallback)
                runner = OnnxRuntimeRunner(onnx_path, device)
        elif backend == "onnxruntime":
            runner = OnnxRuntimeRunner(onnx_path, device)
        else:
            raise WanAnimateError(f"Unknown pose backend '{backend}': use 'torch' or 'onnxruntime'.")
        logger.info("Pose model %s loaded with the %s backend on %s.", onnx_path, runner.backend, runner.device)
        return cls(runner, fallback)

    def estimate(
        self,
        frames: Sequence[np.ndarray],
        boxes: np.ndarray,
        *,
        batch_size: int = 16,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Keypoints of the person in each frame's box.

        Args:
            frames: RGB uint8 images (H, W, 3).
            boxes: (T, 4) ``x1, y1, x2, y2`` per frame; a NaN row means the whole frame.
            batch_size: Crops per forward pass.
            progress: Called as ``progress(done, total, "Estimating pose")`` after each batch.

        Returns:
            (T, 133, 3) float32: x, y in the frame's pixels, and the heatmap score.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) != len(frames):
            raise ValueError(f"Got {len(frames)} frames but {len(boxes)} boxes.")
        results = []
        for start in range(0, len(frames), batch_size):
            batch = frames[start : start + batch_size]
            regions = [crop_region(box, frame.shape[:2]) for frame, box in zip(batch, boxes[start:])]
            centers = np.stack([center for center, _ in regions])
            sizes = np.stack([size for _, size in regions])
            crops = np.stack([crop_person(frame, c, s) for frame, c, s in zip(batch, centers, sizes)])
            heatmaps = self.runner(normalize_crops(crops))
            coords, scores = dark_decode(heatmaps)
            points = heatmap_to_frame(coords, centers, sizes, heatmaps.shape[2:])
            results.append(np.concatenate([points, scores[..., None]], axis=2).astype(np.float32))
            if progress is not None:
                progress(start + len(batch), len(frames), "Estimating pose")
        if not results:
            return np.zeros((0, 133, 3), dtype=np.float32)
        return np.concatenate(results)
