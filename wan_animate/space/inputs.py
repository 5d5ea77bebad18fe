"""The page's and the API's input values read as the package's arguments (shared by the actions and `gpu_time`)."""

from __future__ import annotations

from ..errors import WanAnimateError
from ..generate import GenerationSettings
from ..presets import apply_preset, get_preset


def frame_rate(fps: str | float | None) -> float | None:
    """The frame-rate choice: ``"30"`` resamples to 30 fps, ``"source"`` (or empty) keeps the video's rate.

    Raises:
        WanAnimateError: Neither a number nor ``"source"``.
    """
    if fps is None or str(fps).strip().lower() in ("source", "none", ""):
        return None
    try:
        return float(fps)
    except ValueError as error:
        raise WanAnimateError(f"Frame rate must be a number or 'source', got {fps!r}.") from error


def optional_end(end: float | None) -> float | None:
    """An empty or non-positive end means "to the end of the video"."""
    return None if end is None or end <= 0 else float(end)


def generation_settings(
    preset: str,
    steps: int,
    seed: int,
    guidance: float,
    overlap: int,
    color_match: bool,
    relight: bool | None = None,
    relight_weight: float = 1.0,
    step_cache: str = "none",
    *,
    fast_available: bool,
) -> GenerationSettings:
    """The settings a generation endpoint's values ask for, with the preset applied (it sets the steps).

    Raises:
        WanAnimateError: An unknown preset, or settings the pipeline cannot run.
    """
    settings = GenerationSettings(
        num_inference_steps=int(steps),
        guidance_scale=float(guidance),
        seed=None if seed is None or int(seed) < 0 else int(seed),
        overlap_frames=int(overlap),
        relight=relight,
        relight_weight=float(relight_weight),
        color_match=bool(color_match),
        step_cache=str(step_cache or "none"),
    )
    settings = apply_preset(settings, get_preset(preset, fast_available), fast_available)
    settings.check()
    return settings
