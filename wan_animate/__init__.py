"""Wan2.2-Animate-14B inference: photo + driving video -> conditioning -> diffusers pipeline -> video file.

The few public entry points::

    from wan_animate import Conditioning, GenerationSettings, generate_video, load_pipeline

    pipe = load_pipeline()                                  # hub id or local folder, dtype and offload chosen
    cond = Conditioning.load("conditioning/")               # or made by wan_animate.preprocess
    generate_video(pipe, cond, "out.mp4", GenerationSettings(seed=0))
"""

from .conditioning import Conditioning
from .errors import GenerationCancelled, WanAnimateError
from .generate import GenerationResult, GenerationSettings, generate, generate_video
from .models import DEFAULT_MODEL_ID, get_pipeline, load_pipeline

__all__ = [
    "DEFAULT_MODEL_ID",
    "Conditioning",
    "GenerationCancelled",
    "GenerationResult",
    "GenerationSettings",
    "WanAnimateError",
    "generate",
    "generate_video",
    "get_pipeline",
    "load_pipeline",
]
