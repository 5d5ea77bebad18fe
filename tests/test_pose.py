"""Contract "Keypoints": ViTPose crop (1.25x, 192:256), RGB + ImageNet normalisation, DARK decoding, loading.

The model is a tiny random ViTPose exported like upstream's ONNX file (TorchScript exporter, one external data
file per tensor), loaded through the same `PoseEstimator.from_pretrained` as the real weights.
"""

import logging
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest

from wan_animate.demo.preprocess_models import build_foreign_pose_onnx, build_tiny_pose_onnx
from wan_animate.errors import WanAnimateError
from wan_animate.preprocess.pose import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    POSE_FILE,
    POSE_FILES,
    PoseEstimator,
    crop_person,
    crop_region,
    dark_decode,
    heatmap_to_frame,
    normalize_crops,
)
from wan_animate.preprocess.vitpose_onnx import UnsupportedPoseGraph, vitpose_from_onnx

HEATMAP_TOLERANCE = 1e-4
"""Torch backend vs onnxruntime on CPU, max abs heatmap difference (observed ~8e-7; heatmaps are O(1))."""


@pytest.fixture(scope="module")
def pose_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pose")
    build_tiny_pose_onnx(folder)
    return folder


def _gaussian_heatmap(x: float, y: float, size=(64, 48), sigma: float = 2.0) -> np.ndarray:
    """ViTPose's training target: a unit Gaussian of sigma 2 centred at (x, y) in heatmap pixels."""
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]]
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)).astype(np.float32)


class _FakeRunner:
    """Stands in for the network: records what it is fed, answers with given heatmaps."""

    device = "cpu"

    def __init__(self, heatmap: np.ndarray | None = None) -> None:
        self.heatmap = heatmap if heatmap is not None else _gaussian_heatmap(24, 32)
        self.inputs: list[np.ndarray] = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.inputs.append(pixels)
        return np.broadcast_to(self.heatmap, (len(pixels), 133, *self.heatmap.shape)).copy()


# -- loading ------------------------------------------------------------------------------------------


def test_loads_from_folder_pose_folder_and_file(pose_folder):
    onnx_path = pose_folder / POSE_FILE
    pixels = np.random.default_rng(0).normal(size=(2, 3, 256, 192)).astype(np.float32)
    reference = PoseEstimator.from_pretrained(pose_folder, backend="onnxruntime", device="cpu").runner(pixels)
    for source in (pose_folder, onnx_path.parent, onnx_path, str(onnx_path)):
        estimator = PoseEstimator.from_pretrained(source, backend="torch", device="cpu")
        assert estimator.device == "cpu"
        np.testing.assert_allclose(estimator.runner(pixels), reference, atol=HEATMAP_TOLERANCE)


def test_loads_hub_id_downloading_only_the_pose_folder(pose_folder, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(pose_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    estimator = PoseEstimator.from_pretrained("someone/animate-weights", device="cpu")
    assert calls == [("someone/animate-weights", POSE_FILES)]
    assert POSE_FILES == ["process_checkpoint/pose2d/*"]
    heatmaps = estimator.runner(np.zeros((1, 3, 256, 192), np.float32))
    assert heatmaps.shape == (1, 133, 64, 48)


def test_missing_sources_are_user_errors(tmp_path):
    with pytest.raises(WanAnimateError, match="holds neither"):
        PoseEstimator.from_pretrained(tmp_path)
    with pytest.raises(WanAnimateError, match="neither a folder nor a Hugging Face repo id"):
        PoseEstimator.from_pretrained(tmp_path / "missing" / "model.onnx")
    build_tiny_pose_onnx(tmp_path)
    with pytest.raises(WanAnimateError, match="Unknown pose backend"):
        PoseEstimator.from_pretrained(tmp_path, backend="tensorrt")


@pytest.mark.parametrize("opset", [11, 17])
def test_torch_backend_matches_onnxruntime(tmp_path, opset):
    """Opset 11 has LayerNorm decomposed into ReduceMean/Sub/Pow/..., opset 17 a LayerNormalization op."""
    build_tiny_pose_onnx(tmp_path, opset_version=opset, seed=opset)
    pixels = np.random.default_rng(opset).normal(size=(3, 3, 256, 192)).astype(np.float32)
    on_torch = PoseEstimator.from_pretrained(tmp_path, backend="torch", device="cpu").runner(pixels)
    on_onnxruntime = PoseEstimator.from_pretrained(tmp_path, backend="onnxruntime", device="cpu").runner(pixels)
    assert on_torch.shape == (3, 133, 64, 48)
    assert on_torch.std() > 0.05  # a real, non-constant output
    assert np.abs(on_torch - on_onnxruntime).max() < HEATMAP_TOLERANCE


def test_a_graph_the_torch_reader_refuses_runs_in_onnxruntime_logged(tmp_path, caplog):
    """A different network with the same input and output shapes: the torch reader refuses it with the reason, and
    the loader runs it in onnxruntime instead, saying so (log and `PoseEstimator.fallback`) rather than failing."""
    path = build_foreign_pose_onnx(tmp_path / "other.onnx")
    with pytest.raises(UnsupportedPoseGraph, match="backend='onnxruntime'"):
        vitpose_from_onnx(path)
    with caplog.at_level(logging.WARNING, logger="wan_animate"):
        estimator = PoseEstimator.from_pretrained(path, backend="torch", device="cpu")
    assert estimator.backend == "onnxruntime" and "position embedding" in estimator.fallback
    assert "running it in onnxruntime" in caplog.text
    pixels = np.random.default_rng(0).normal(size=(2, 3, 256, 192)).astype(np.float32)
    direct = PoseEstimator.from_pretrained(path, backend="onnxruntime", device="cpu")
    assert direct.fallback is None
    np.testing.assert_array_equal(estimator.runner(pixels), direct.runner(pixels))
    assert estimator.runner(pixels).shape == (2, 133, 64, 48)


def test_onnxruntime_without_cuda_provider_warns(pose_folder, monkeypatch, caplog):
    """A CPU-only onnxruntime can't use CUDA: asking for it must not fall back silently."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="wan_animate"):
        estimator = PoseEstimator.from_pretrained(pose_folder, backend="onnxruntime", device="cuda")
    assert estimator.device == "cpu"
    assert any(record.levelno == logging.WARNING and "CPU" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wan_animate"):
        PoseEstimator.from_pretrained(pose_folder, backend="onnxruntime", device="cpu")  # asked for: no warning
    assert not caplog.records


# -- crop -----------------------------------------------------------------------------------------------


def test_crop_region_hand_made():
    # Tall box 120 x 240: already narrower than 192:256, so only the padding applies: 300 high, 225 wide.
    center, size = crop_region(np.array([100, 50, 220, 290]), (480, 640))
    np.testing.assert_allclose(center, [160, 170])
    np.testing.assert_allclose(size, [225, 300])
    # Wide box 400 x 100: widened to 400 x 533.3 (4:3 tall), then x1.25.
    center, size = crop_region(np.array([0, 0, 400, 100]), (480, 640))
    np.testing.assert_allclose(center, [200, 50])
    np.testing.assert_allclose(size, [500, 2000 / 3])
    # No box, or one under 10 pixels: the whole 640 x 480 frame, widened to 640 x 853.3, x1.25.
    for box in (np.full(4, np.nan), np.array([5, 5, 12, 100]), None):
        center, size = crop_region(box, (480, 640))
        np.testing.assert_allclose(center, [320, 240])
        np.testing.assert_allclose(size, [800, 3200 / 3])


def test_crop_and_back_projection_round_trip():
    """Frame point (205, 110), box (100, 50, 220, 290): crop pixel (134.4, 76.8), heatmap pixel (33.6, 19.2)."""
    center, size = crop_region(np.array([100, 50, 220, 290]), (480, 640))
    # frame -> crop: left edge 160 - 112.5 = 47.5, scale 192 / 225; top 170 - 150 = 20, scale 256 / 300.
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[109:112, 204:207] = 255
    crop = crop_person(frame, center, size)
    assert crop.shape == (256, 192, 3)
    ys, xs = np.nonzero(crop[..., 0] > 0)
    weights = crop[ys, xs, 0].astype(np.float64)
    assert abs(np.average(xs, weights=weights) - 134.4) < 0.3
    assert abs(np.average(ys, weights=weights) - 76.8) < 0.3
    # heatmap -> frame: exactly the inverse.
    back = heatmap_to_frame(np.array([[[33.6, 19.2]]]), center[None], size[None], (64, 48))
    np.testing.assert_allclose(back[0, 0], [205, 110], atol=1e-9)
    # Through estimate(): a heatmap peaked at (33.6, 19.2) comes back at (205, 110) in the frame.
    estimator = PoseEstimator(_FakeRunner(_gaussian_heatmap(33.6, 19.2)))
    keypoints = estimator.estimate([frame], np.array([[100, 50, 220, 290]], float))
    assert keypoints.shape == (1, 133, 3)
    np.testing.assert_allclose(keypoints[0, :, :2], np.tile([205, 110], (133, 1)), atol=0.2)
    np.testing.assert_allclose(keypoints[0, :, 2], _gaussian_heatmap(33.6, 19.2).max(), rtol=1e-6)


def test_model_receives_rgb_imagenet_normalised_and_whole_frame_without_box():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 200, 50, 10  # a distinct R, G and B
    runner = _FakeRunner()
    PoseEstimator(runner).estimate([frame], np.full((1, 4), np.nan))
    pixels = runner.inputs[0]
    assert pixels.shape == (1, 3, 256, 192) and pixels.dtype == np.float32
    expected = (np.array([200, 50, 10]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(pixels[0, :, 128, 96], expected, rtol=1e-5)
    # NaN box = whole frame: 640 wide in an 800-wide region, so 80 frame pixels (19.2 crop pixels) of black each side.
    black = -IMAGENET_MEAN / IMAGENET_STD
    np.testing.assert_allclose(pixels[0, :, 128, 5], black, rtol=1e-5)
    np.testing.assert_allclose(pixels[0, :, 128, 186], black, rtol=1e-5)
    np.testing.assert_allclose(pixels[0, :, 128, 30], expected, rtol=1e-5)


def test_normalize_crops_keeps_channel_order():
    crops = np.zeros((1, 2, 2, 3), np.uint8)
    crops[..., 0] = 255
    pixels = normalize_crops(crops)
    np.testing.assert_allclose(pixels[0, :, 0, 0], (np.array([1.0, 0, 0]) - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)


# -- DARK decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("x, y", [(24.0, 32.0), (20.3, 30.7), (10.55, 12.25), (37.8, 51.4), (41.2, 6.8), (6.3, 57.1)])
def test_dark_decode_recovers_subpixel_peak(x, y):
    heatmaps = _gaussian_heatmap(x, y)[None, None]
    coords, scores = dark_decode(heatmaps)
    assert coords.shape == (1, 1, 2) and scores.shape == (1, 1)
    assert np.hypot(coords[0, 0, 0] - x, coords[0, 0, 1] - y) < 0.1
    assert scores[0, 0] == heatmaps.max()


def test_dark_decode_beats_the_integer_peak_and_leaves_border_peaks():
    heatmaps = np.stack([_gaussian_heatmap(20.4, 30.4), _gaussian_heatmap(0.3, 30.0), _gaussian_heatmap(20, 30) * 0])
    coords, scores = dark_decode(heatmaps[None])
    np.testing.assert_allclose(coords[0, 0], [20.4, 30.4], atol=0.05)  # the integer peak is (20, 30)
    np.testing.assert_allclose(coords[0, 1], [0, 30])  # within 2 pixels of the edge: integer peak (as mmpose)
    assert np.isfinite(coords).all() and scores[0, 2] == 0


def test_dark_decode_moves_at_most_one_pixel_on_noise():
    """Noise maps have saddles at their peaks, where an unguarded Newton step flies off; DARK stays put."""
    noise = np.random.default_rng(0).normal(size=(4, 133, 64, 48)).astype(np.float32)
    coords, scores = dark_decode(noise)
    flat = noise.reshape(4, 133, -1)
    peak = flat.argmax(axis=2)
    integer = np.stack([peak % 48, peak // 48], axis=2)
    assert np.abs(coords - integer).max() <= 1.0
    np.testing.assert_array_equal(scores, flat.max(axis=2))


# -- estimate on the tiny model -----------------------------------------------------------------------


def test_estimate_shapes_batches_and_progress(pose_folder):
    estimator = PoseEstimator.from_pretrained(pose_folder, device="cpu")
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(5)]
    boxes = np.array([[10, 10, 90, 110], [np.nan] * 4, [20, 5, 60, 100], [0, 0, 5, 5], [30, 20, 150, 119]], float)
    calls = []
    keypoints = estimator.estimate(frames, boxes, batch_size=2, progress=lambda *a: calls.append(a))
    assert keypoints.shape == (5, 133, 3) and keypoints.dtype == np.float32
    assert calls == [(2, 5, "Estimating pose"), (4, 5, "Estimating pose"), (5, 5, "Estimating pose")]
    # Every point lies inside its crop region (DARK moves a peak by under a heatmap pixel).
    for keypoint, frame, box in zip(keypoints, frames, boxes):
        center, size = crop_region(box, frame.shape[:2])
        assert (np.abs(keypoint[:, :2] - center) <= size / 2 + size / 48).all()
    # Batching does not change results.
    one_by_one = np.concatenate([estimator.estimate([f], b[None]) for f, b in zip(frames, boxes)])
    np.testing.assert_allclose(keypoints, one_by_one, atol=1e-4)
    assert estimator.estimate([], np.zeros((0, 4))).shape == (0, 133, 3)
    with pytest.raises(ValueError, match="boxes"):
        estimator.estimate(frames, boxes[:2])
