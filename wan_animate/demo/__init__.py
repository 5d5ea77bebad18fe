"""Tiny random models: the whole flow on a CPU with no GPU and no downloads (``python app.py --demo``, the tests).

Every model is built the way the real one is stored and is read by the same loader (`checkpoint`,
`preprocess_models`, `sam2`, `loras`); generated videos are noise, but every stage, file and screen is the real one.

"Confident" models
    Left random, the tiny models may detect nobody, find no face or give an empty mask, which the package
    rightly refuses. `build_tiny_models` makes the set confident:

    - detector: the class heads' weights are zeroed and their biases set (`DETECTOR_LOGITS`) so every query is
      a person with score sigmoid(6) and never a bicycle or car;
    - pose model: the final 1x1 convolution's bias is raised (`POSE_BIAS`), so every heatmap's peak, the
      keypoint score, is above the 0.5 the skeleton and face rules need, while the peaks stay where the random
      features put them (so the keypoints are spread over the person box, and the face box is not empty);
    - SAM2 is used as built: its random masks already cover about a third of the frame, and a click moves a
      few pixels of them.

Small frames
    The contract's areas (832 x 480 for 480p) would take minutes per job on a CPU; `demo_sizes` shrinks them
    (`DEMO_AREAS`) so a "480p" output is 64 x 64. The random detector's person boxes are a few pixels tall, so
    `demo_sizes` also lowers the smallest accepted person (`DEMO_LIMITS`); photo and video minimums stay real.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("wan_animate")

POSE_BIAS = 0.6
DETECTOR_LOGITS = {"person": 6.0, "bicycle": -20.0, "car": -20.0}
DEMO_AREAS = {"720p": 96 * 96, "480p": 64 * 64}
"""Output areas in demo mode and the end-to-end tests (the contract's are 1280 x 720 and 832 x 480)."""
DEMO_LIMITS = {"MIN_PERSON_HEIGHT": 2, "WARN_PERSON_HEIGHT": 2}
"""`wan_animate.validation` person-size limits in demo mode (the tiny detector's boxes are a few pixels tall)."""


@dataclass(frozen=True)
class TinyModels:
    """Folders (or files) of a confident tiny model set."""

    checkpoint: Path
    detector: Path
    pose: Path
    sam2: Path
    relight_lora: Path
    fast_lora: Path


def build_tiny_models(folder: str | Path) -> TinyModels:
    """Build the confident tiny set (see the module docstring) in ``folder`` (about 20 s on 2 cores)."""
    from .checkpoint import build_tiny_checkpoint
    from .loras import build_tiny_fast_lora, build_tiny_relighting_lora
    from .preprocess_models import build_tiny_detector, build_tiny_pose_onnx
    from .sam2 import build_tiny_sam2

    folder = Path(folder)
    checkpoint = build_tiny_checkpoint(folder / "checkpoint")
    detector = build_tiny_detector(folder / "detector", class_logits=DETECTOR_LOGITS)
    pose = build_tiny_pose_onnx(folder / "pose")
    _raise_pose_heatmaps(pose, POSE_BIAS)
    sam2 = build_tiny_sam2(folder / "sam2")
    relight = build_tiny_relighting_lora(checkpoint, folder / "relighting_lora.ckpt")
    fast = build_tiny_fast_lora(checkpoint, folder / "fast_lora.safetensors")
    return TinyModels(checkpoint=checkpoint, detector=detector, pose=pose, sam2=sam2, relight_lora=relight, fast_lora=fast)


def demo_models(cache_dir: str | Path | None = None) -> TinyModels:
    """The confident tiny set, built on first use and kept in a user cache folder.

    The folder's name carries a hash of the builders' source and the library versions, so a changed builder or
    a new diffusers/transformers builds a fresh set instead of reading an old one.

    Args:
        cache_dir: Parent folder; default ``$WAN_ANIMATE_CACHE``, else ``$XDG_CACHE_HOME/wan_animate``, else
            ``~/.cache/wan_animate``.
    """
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wan_animate"
    root = Path(cache_dir or os.environ.get("WAN_ANIMATE_CACHE") or user_cache)
    folder = root / f"demo-models-{_builders_key()}"
    if not (folder / "fast_lora.safetensors").is_file():  # the last file built: a complete set
        root.mkdir(parents=True, exist_ok=True)
        logger.info("Building the tiny demo models in %s (once)...", folder)
        staging = Path(tempfile.mkdtemp(prefix=".demo-models-", dir=root))
        try:
            build_tiny_models(staging)
            staging.rename(folder)
        except OSError:
            if not (folder / "fast_lora.safetensors").is_file():  # not just another process finishing first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _tiny_models_in(folder)


@contextmanager
def demo_sizes() -> Iterator[None]:
    """Shrink the output sizes to `DEMO_AREAS` and the person minimums to `DEMO_LIMITS` in this process while the
    block runs (restored afterwards)."""
    from .. import validation
    from ..preprocess import sizing

    saved_areas = dict(sizing.RESOLUTION_AREAS)
    saved_limits = {name: getattr(validation, name) for name in DEMO_LIMITS}
    sizing.RESOLUTION_AREAS.update(DEMO_AREAS)
    for name, value in DEMO_LIMITS.items():
        setattr(validation, name, value)
    try:
        yield
    finally:
        sizing.RESOLUTION_AREAS.clear()
        sizing.RESOLUTION_AREAS.update(saved_areas)
        for name, value in saved_limits.items():
            setattr(validation, name, value)


def _tiny_models_in(folder: Path) -> TinyModels:
    from .preprocess_models import POSE_FILE

    return TinyModels(
        checkpoint=folder / "checkpoint",
        detector=folder / "detector",
        pose=folder / "pose" / POSE_FILE,
        sam2=folder / "sam2",
        relight_lora=folder / "relighting_lora.ckpt",
        fast_lora=folder / "fast_lora.safetensors",
    )


def _builders_key() -> str:
    import diffusers
    import torch
    import transformers

    digest = hashlib.sha256(f"{torch.__version__} {diffusers.__version__} {transformers.__version__}".encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def _raise_pose_heatmaps(onnx_path: Path, bias: float) -> None:
    """Add ``bias`` to the final convolution's bias of the pose ONNX (the one producing the heatmaps)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    output = model.graph.output[0].name
    final = next(node for node in model.graph.node if output in node.output)
    if final.op_type != "Conv" or len(final.input) != 3:
        raise ValueError("The pose model's heatmaps should come from a Conv with a bias.")
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == final.input[2]:
            raised = numpy_helper.to_array(tensor) + np.float32(bias)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(raised.astype(np.float32), tensor.name))
    for stale in onnx_path.parent.iterdir():  # one external data file per tensor: rewrite them all
        if stale != onnx_path:
            stale.unlink()
    onnx.save_model(model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=False)


__all__ = ["DEMO_AREAS", "TinyModels", "build_tiny_models", "demo_models", "demo_sizes"]
