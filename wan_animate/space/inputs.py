"""The page's and the API's input values read as the package's arguments (shared by the actions and `gpu_time`).

Values arrive as a client sent them (`wan_animate.space.components` skips Gradio's own checks): any JSON value,
NaN and infinities included. Each is checked here by `wan_animate.validation`'s field for it, so a bad value gets
the sentence the package and the CLI give, naming the setting.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .. import validation
from ..caching import STEP_CACHES
from ..errors import WanAnimateError
from ..generate import GenerationSettings
from ..preprocess.sizing import RESOLUTION_AREAS
from ..presets import PRESETS, apply_preset, get_preset

RANDOM_SEED = -1
"""The seed the page shows for "pick one"."""


def frame_rate(fps: Any) -> float | None:
    """The frame-rate choice: ``"30"`` (or a number) resamples to that rate, ``"source"`` (or empty) keeps the
    video's rate.

    Raises:
        WanAnimateError: Neither a rate in `validation.FPS`'s range nor ``"source"``.
    """
    if fps is None or str(fps).strip().lower() in ("source", "none", ""):
        return None
    if isinstance(fps, str):
        try:
            fps = float(fps)
        except ValueError:
            raise WanAnimateError(f"Frame rate must be a number or 'source', got {fps[:40]!r}.") from None
    return validation.FPS.check(fps)


def start_time(start: Any) -> float:
    """The trim's start in seconds; empty means 0."""
    return validation.START.check(0.0 if start is None or start == "" else start)


def optional_end(end: Any) -> float | None:
    """The trim's end in seconds; empty or 0 means "to the end of the video"."""
    if end is None or end == "" or _is_number(end, 0):
        return None
    return validation.END.check(end)


def choice(name: str, value: Any, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``, else `WanAnimateError` naming the setting and the choices."""
    if not isinstance(value, str) or value not in choices:
        shown = repr(value)[:40]
        raise WanAnimateError(f"{name} must be one of {', '.join(map(repr, choices))}; got {shown}.")
    return value


def flag(name: str, value: Any) -> bool:
    """A checkbox's value: ``True`` or ``False`` (not a string such as ``"no"``, which Python reads as true)."""
    if not isinstance(value, bool):
        raise WanAnimateError(f"{name} must be true or false; got {repr(value)[:40]}.")
    return value


def output_resolution(value: Any) -> str:
    """``"720p"`` or ``"480p"``."""
    return choice("Resolution", value, RESOLUTION_AREAS)


def seed_or_random(value: Any) -> int | None:
    """A seed in `validation.SEED`'s range, or ``None`` (draw one) for empty or `RANDOM_SEED`."""
    if value is None or value == "" or _is_number(value, RANDOM_SEED):
        return None
    try:
        return validation.SEED.check(value)
    except WanAnimateError as error:
        raise WanAnimateError(f"{error} Use {RANDOM_SEED} for a random seed.") from None


def _is_number(value: Any, number: int) -> bool:
    """``value`` is ``number`` sent as a number (``True == 1`` in Python, but a checkbox value is not a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == number


def generation_settings(
    preset: Any,
    steps: Any,
    seed: Any,
    guidance: Any,
    overlap: Any,
    color_match: Any,
    relight: Any = None,
    relight_weight: Any = 1.0,
    step_cache: Any = "none",
    *,
    fast_available: bool,
) -> GenerationSettings:
    """The settings a generation endpoint's values ask for, with the preset applied (it sets the steps).

    Raises:
        WanAnimateError: A value outside its field's range, an unknown preset, or settings the pipeline cannot run.
    """
    settings = GenerationSettings(
        num_inference_steps=validation.STEPS.check(steps),
        guidance_scale=validation.GUIDANCE.check(guidance),
        seed=seed_or_random(seed),
        overlap_frames=validation.check_int("Overlap frames", overlap, min(validation.OVERLAP_FRAMES), max(validation.OVERLAP_FRAMES)),
        relight=None if relight is None else flag("Relighting", relight),
        relight_weight=validation.RELIGHT_WEIGHT.check(relight_weight),
        color_match=flag("Colour consistency", color_match),
        step_cache=choice("Step cache", step_cache or "none", STEP_CACHES),
    )
    settings = apply_preset(settings, get_preset(choice("Preset", preset, PRESETS), fast_available), fast_available)
    settings.check()
    return settings
