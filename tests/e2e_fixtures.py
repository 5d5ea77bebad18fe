"""Fixtures of the end-to-end tests (app client, browser, MCP): tiny models, input media, the served app.

"Confident" tiny models
    The tiny random models of `tests.tiny_*` are built the way the real ones are stored and loaded through
    the same loaders. Left random, they may detect nobody, find no face or give an empty mask, which the
    package rightly refuses. For an end-to-end run the set is made confident, and saved again:

    - detector: the class heads' weights are zeroed and their biases set (``class_logits``) so every query
      is a person with score sigmoid(6) and never a bicycle or car;
    - pose model: the final 1x1 convolution's bias is raised (`POSE_BIAS`), so every heatmap's peak, the
      keypoint score, is above the 0.5 the skeleton and face rules need, while the peaks stay where the
      random features put them (so the keypoints are spread over the person box, and the face box is not
      empty);
    - SAM2 is used as built: its random masks already cover about a third of the frame, and a click moves a
      few pixels of them (the browser test compares the mask video's pixels, with dilation and blockify set
      so those pixels survive).

Small frames
    The app's sizes come from the contract's areas (832 x 480 for 480p); on 2 CPU cores the tests shrink
    those areas (`TEST_AREAS`) in the served process, so a "480p" output is 64 x 64. The smallest photo, video
    and person the package accepts (`wan_animate.validation`) are lowered to fit the 48 x 64 test media
    (`TEST_LIMITS`); tests/test_bad_inputs.py checks the real ones.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.media import write_test_video

POSE_BIAS = 0.6
DETECTOR_LOGITS = {"person": 6.0, "bicycle": -20.0, "car": -20.0}
TEST_AREAS = {"720p": 96 * 96, "480p": 64 * 64}
TEST_LIMITS = {"MIN_PHOTO_SIDE": 8, "MIN_VIDEO_SIDE": 8, "MIN_PERSON_HEIGHT": 2, "WARN_PERSON_HEIGHT": 2}
DRIVING_FRAMES = 80
"""More than one 77-frame segment: the generation runs two segments."""


@dataclass(frozen=True)
class TinyModels:
    """Folders (or files) of a confident tiny model set."""

    checkpoint: Path
    detector: Path
    pose: Path
    sam2: Path
    relight_lora: Path
    fast_lora: Path


def _raise_pose_heatmaps(onnx_path: Path, bias: float) -> None:
    """Add ``bias`` to the final convolution's bias of the pose ONNX (the one producing the heatmaps)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    output = model.graph.output[0].name
    final = next(node for node in model.graph.node if output in node.output)
    assert final.op_type == "Conv" and len(final.input) == 3, "the heatmaps should come from a Conv with a bias"
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == final.input[2]:
            raised = numpy_helper.to_array(tensor) + np.float32(bias)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(raised.astype(np.float32), tensor.name))
    for stale in onnx_path.parent.iterdir():  # one external data file per tensor: rewrite them all
        if stale != onnx_path:
            stale.unlink()
    onnx.save_model(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=False)


def build_tiny_relighting_lora(checkpoint: Path, path: Path) -> Path:
    """A random relighting LoRA for the tiny transformer, in upstream's file format (``relighting_lora.ckpt``:
    PEFT factors under original Wan names, rank 128), so Replacement runs without the hub's file."""
    import torch
    from diffusers import WanAnimateTransformer3DModel

    from wan_animate.lora import BLOCK_MODULE_MAP, RELIGHT_RANK

    transformer = WanAnimateTransformer3DModel.from_pretrained(checkpoint / "transformer")
    generator = torch.Generator().manual_seed(3)
    state_dict = {}
    for block in range(len(transformer.blocks)):
        for original, name in BLOCK_MODULE_MAP.items():
            try:
                linear = transformer.get_submodule(f"blocks.{block}.{name}")
            except AttributeError:
                continue
            state_dict[f"blocks.{block}.{original}.lora_A.weight"] = torch.randn(RELIGHT_RANK, linear.in_features, generator=generator) * 0.02
            state_dict[f"blocks.{block}.{original}.lora_B.weight"] = torch.randn(linear.out_features, RELIGHT_RANK, generator=generator) * 0.02
    torch.save({"state_dict": state_dict}, path)
    return path


def build_tiny_fast_lora(checkpoint: Path, path: Path, rank: int = 4) -> Path:
    """A random rank-4 LoRA in diffusers' format on every attention projection: the tiny stand-in for a
    few-step LoRA, so the fast preset and drafts load and switch a real adapter."""
    import torch
    from diffusers import WanAnimateTransformer3DModel
    from safetensors.torch import save_file

    transformer = WanAnimateTransformer3DModel.from_pretrained(checkpoint / "transformer")
    generator = torch.Generator().manual_seed(4)
    state_dict = {}
    for block in range(len(transformer.blocks)):
        for name in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
            linear = transformer.get_submodule(f"blocks.{block}.{name}")
            prefix = f"transformer.blocks.{block}.{name}"
            state_dict[f"{prefix}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=generator) * 0.05
            state_dict[f"{prefix}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=generator) * 0.05
    save_file(state_dict, str(path))
    return path


def build_confident_models(folder: Path) -> TinyModels:
    """Build the tiny set and make it confident (see the module docstring)."""
    from tests.tiny_checkpoint import build_tiny_checkpoint
    from tests.tiny_preprocess_models import build_tiny_detector, build_tiny_pose_onnx
    from tests.tiny_sam2 import build_tiny_sam2

    folder = Path(folder)
    checkpoint = build_tiny_checkpoint(folder / "checkpoint")
    detector = build_tiny_detector(folder / "detector", class_logits=DETECTOR_LOGITS)
    pose = build_tiny_pose_onnx(folder / "pose")
    _raise_pose_heatmaps(pose, POSE_BIAS)
    sam2 = build_tiny_sam2(folder / "sam2")
    relight = build_tiny_relighting_lora(checkpoint, folder / "relighting_lora.ckpt")
    fast = build_tiny_fast_lora(checkpoint, folder / "fast_lora.safetensors")
    return TinyModels(checkpoint=checkpoint, detector=detector, pose=pose, sam2=sam2, relight_lora=relight, fast_lora=fast)


def dancing_frames(count: int, height: int = 64, width: int = 48) -> np.ndarray:
    """A bright figure-like block that sways over a dark background, one frame per index."""
    frames = np.full((count, height, width, 3), 30, np.uint8)
    for index in range(count):
        x = width // 2 + int(6 * np.sin(index / 5))
        frames[index, 8:56, x - 8 : x + 8] = (220, 180, 150)
        frames[index, 4:16, x - 5 : x + 5] = (240, 200, 170)
    return frames


@contextmanager
def small_media_limits():
    """`TEST_LIMITS` in place of `wan_animate.validation`'s input-size minimums while the block runs."""
    from wan_animate import validation

    saved = {name: getattr(validation, name) for name in TEST_LIMITS}
    for name, value in TEST_LIMITS.items():
        setattr(validation, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(validation, name, value)


@pytest.fixture
def small_media():
    """Lower the input-size minimums to the test media for one test (`small_media_limits`)."""
    with small_media_limits():
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return build_confident_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def e2e_media(tmp_path_factory) -> dict[str, Path]:
    """A photo, a driving video of `DRIVING_FRAMES` frames at 30 fps with sound, and a 20-frame clip."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("media")
    photo = folder / "photo.png"
    Image.fromarray(dancing_frames(1, 64, 48)[0]).save(photo)
    long = write_test_video(folder / "dance.mp4", dancing_frames(DRIVING_FRAMES), 30.0, audio_seconds=DRIVING_FRAMES / 30)
    short = write_test_video(folder / "short.mp4", dancing_frames(20), 30.0, audio_seconds=20 / 30)
    return {"photo": photo, "video": long, "short_video": short}


def _serve(config):
    """Build and launch the app in this process on a free localhost port; returns (demo, url)."""
    import app

    demo = app.build_demo(config)
    demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        mcp_server=True,
        quiet=True,
        show_error=True,
        allowed_paths=[str(demo.studio.work_root)],
    )
    return demo, demo.local_url


# Module scope: the shrunk frame areas must not leak into other test modules (test_sizing checks the real ones).
@pytest.fixture(scope="module")
def served_demo(tiny_models, tmp_path_factory):
    """The app served on localhost with the confident tiny models, CPU allowed, small frames (the Blocks; its
    actions are ``demo.studio``)."""
    from wan_animate.preprocess import sizing

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    saved = dict(sizing.RESOLUTION_AREAS)
    sizing.RESOLUTION_AREAS.update(TEST_AREAS)
    import app

    config = app.AppConfig(
        model=str(tiny_models.checkpoint),
        detector=str(tiny_models.detector),
        pose_model=str(tiny_models.pose),
        sam2=str(tiny_models.sam2),
        relight_lora=str(tiny_models.relight_lora),
        fast_lora=str(tiny_models.fast_lora),
        allow_cpu=True,
        memory_mode="none",
        dtype="float32",
        work_dir=tmp_path_factory.mktemp("jobs"),
    )
    with small_media_limits():
        demo, _ = _serve(config)
        try:
            yield demo
        finally:
            demo.close()
            sizing.RESOLUTION_AREAS.clear()
            sizing.RESOLUTION_AREAS.update(saved)


@pytest.fixture(scope="module")
def served_app(served_demo) -> str:
    """The URL of `served_demo`."""
    return served_demo.local_url


@pytest.fixture(scope="module")
def light_app(tmp_path_factory):
    """The app with model sources that are never loaded (for tests of the page and its API description)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import app

    missing = tmp_path_factory.mktemp("no_models")
    config = app.AppConfig(
        model=str(missing / "checkpoint"), detector=str(missing / "detector"), pose_model=str(missing / "pose"),
        sam2=str(missing / "sam2"), allow_cpu=True, work_dir=tmp_path_factory.mktemp("jobs"),
    )
    demo, url = _serve(config)
    try:
        yield url
    finally:
        demo.close()
