"""The one rule for every number a user can set, and the smallest inputs the model can work from.

Each setting is a `IntField` or `FloatField`: its name as the user sees it and its allowed range. The package
(`GenerationSettings.check`, `PreprocessOptions.check`, the picker), the CLI (``type=FIELD.parse``) and the app
all check through these, so a bad value gets the same sentence everywhere, naming the field and the range.
Floats are checked for NaN and infinity wherever they enter: ``NaN < 1`` is false, so a plain range test lets
NaN through.

The input-size minimums below are read when a check runs, so a test that works on tiny synthetic media can
lower them for its duration (``monkeypatch.setattr(validation, "MIN_PHOTO_SIDE", 16)``).
"""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass

from .errors import WanAnimateError

# -- input sizes -------------------------------------------------------------------------------------------------

MIN_PHOTO_SIDE = 128
"""Shortest accepted side of the character photo, in pixels. The photo is letterboxed into the output, whose
shorter side is at least 480 px at 480p: below 128 px that is an enlargement of more than 3.75x, and the
character's face (about a tenth of a full-body photo's height) would have fewer than 13 px to be kept from."""

MIN_VIDEO_SIDE = 128
"""Shortest accepted side of the driving video, in pixels: twice `MIN_PERSON_HEIGHT`, the smallest frame that holds
the smallest readable person with the 1.25x margin the pose crop reads around them and room to move; in
Replacement the video is also the background, which the same 3.75x enlargement as the photo's makes a blur."""

MIN_PERSON_HEIGHT = 64
"""Smallest accepted median height of the followed person's box, in the driving video's pixels. ViTPose reads the
person in a 256 x 192 crop of the box enlarged 1.25x, so a 64-px person is enlarged 5x and its 64 x 48 heatmap is
finer than the video's pixels; the face (about an eighth of the height, 8 px) then has fewer pixels than the 68
face landmarks that place the 512 x 512 face crop."""

WARN_PERSON_HEIGHT = 205
"""Below this median height (256 / 1.25: where the pose crop stops being a downscale) the report warns that
limbs and expressions will be less precise."""


def check_photo_size(height: int, width: int, name: str) -> None:
    """Refuse a photo whose shorter side is under `MIN_PHOTO_SIDE`, naming the file, its size and the minimum."""
    _check_shorter_side("photo", name, height, width, MIN_PHOTO_SIDE, "for the model to see the character")


def check_video_size(height: int, width: int, name: str) -> None:
    """Refuse a driving video whose shorter side is under `MIN_VIDEO_SIDE`, naming the file, its size and the minimum."""
    _check_shorter_side("video", name, height, width, MIN_VIDEO_SIDE, "for the pose to be read")


def _check_shorter_side(kind: str, name: str, height: int, width: int, minimum: int, purpose: str) -> None:
    if min(height, width) < minimum:
        raise WanAnimateError(
            f"The {kind} {name} is {width}x{height} px; its shorter side must be at least {minimum} px {purpose}. "
            f"Use a larger {kind}."
        )


def check_person_height(height: float, name: str) -> str | None:
    """Refuse a person too small to read, and word a warning for one in the band above that.

    Args:
        height: Median height in pixels of the driving video of the followed person's box.
        name: The video's name, for the message.

    Returns:
        A warning for the quality report when ``height`` is under `WARN_PERSON_HEIGHT`, else ``None``.

    Raises:
        WanAnimateError: ``height`` is under `MIN_PERSON_HEIGHT`.
    """
    if height < MIN_PERSON_HEIGHT:
        raise WanAnimateError(
            f"The person in {name} is only about {height:.0f} px tall; at least {MIN_PERSON_HEIGHT} px is needed to "
            "read their pose and face. Use a clip where the person is closer or larger in the frame."
        )
    if height < WARN_PERSON_HEIGHT:
        return (
            f"The person is about {height:.0f} px tall in the video; under {WARN_PERSON_HEIGHT} px the pose and the "
            "face are read less precisely. A closer or higher-resolution clip helps."
        )
    return None


# -- numbers -----------------------------------------------------------------------------------------------------


def _shown(value: object) -> str:
    """A value for a message; a huge integer (which ``str`` may refuse to print) by its number of digits."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
        if number.bit_length() > 80:
            return f"a number of about {math.floor(number.bit_length() * math.log10(2)) + 1} digits"
        return str(number)
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)[:60]


def _range_text(low: float | None, high: float | None, *, low_open: bool = False, whole: bool = False) -> str:
    kind = "a whole number" if whole else "a number"
    low_text = None if low is None else f"{low:g}"
    high_text = None if high is None else f"{high:g}" if not whole else str(high)
    if low_text is not None and high_text is not None:
        return f"{kind} greater than {low_text} and at most {high_text}" if low_open else f"{kind} from {low_text} to {high_text}"
    if low_text is not None:
        return f"{kind} greater than {low_text}" if low_open else f"{kind} of at least {low_text}"
    if high_text is not None:
        return f"{kind} of at most {high_text}"
    return f"a finite {kind[2:]}"


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (a bound of ``None`` is open).

    Whole floats (``20.0``, as JSON and Gradio send numbers) are accepted; booleans, strings, fractions, NaN and
    infinity are not.

    Raises:
        WanAnimateError: Naming the field and the allowed range.
    """
    expected = _range_text(low, high, whole=True)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and float(value).is_integer():
        number = int(value)
    else:
        raise WanAnimateError(f"{name} must be {expected}; got {_shown(value)}.")
    if (low is not None and number < low) or (high is not None and number > high):
        raise WanAnimateError(f"{name} must be {expected}; got {_shown(value)}.")
    return number


def check_float(
    name: str, value: object, low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> float:
    """``value`` as a finite ``float`` in ``[low, high]`` (``(low, high]`` with ``low_open``; ``None`` is open).

    Raises:
        WanAnimateError: Naming the field and the allowed range, also for NaN, infinity and non-numbers.
    """
    expected = _range_text(low, high, low_open=low_open)
    number = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            number = math.inf
    if not math.isfinite(number):
        raise WanAnimateError(f"{name} must be {expected}; got {_shown(value)}.")
    below = low is not None and (number <= low if low_open else number < low)
    if below or (high is not None and number > high):
        raise WanAnimateError(f"{name} must be {expected}; got {_shown(value)}.")
    return number


def _parse_number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


@dataclass(frozen=True)
class IntField:
    """A whole-number setting: its name as the user sees it and its inclusive range.

    Attributes:
        name: The name in messages (and what the app's label and the CLI option say).
        low: Smallest allowed value.
        high: Largest allowed value.
    """

    name: str
    low: int
    high: int

    def check(self, value: object) -> int:
        """``value`` as an ``int`` in range, else `WanAnimateError` naming the field."""
        return check_int(self.name, value, self.low, self.high)

    def parse(self, text: str) -> int:
        """An argparse ``type``: the same rule, as an argparse error."""
        try:
            return self.check(_parse_number(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{self.name} must be {_range_text(self.low, self.high, whole=True)}; got {text!r}.") from error
        except WanAnimateError as error:
            raise argparse.ArgumentTypeError(str(error)) from error


@dataclass(frozen=True)
class FloatField:
    """A real-valued setting: its name, its range, and whether the lower bound itself is excluded.

    Attributes:
        name: The name in messages.
        low: Smallest allowed value (excluded with ``low_open``); ``None`` for no lower bound.
        high: Largest allowed value; ``None`` for no upper bound (the value must still be finite).
        low_open: ``low`` itself is not allowed.
    """

    name: str
    low: float | None
    high: float | None
    low_open: bool = False

    def check(self, value: object) -> float:
        """``value`` as a finite ``float`` in range, else `WanAnimateError` naming the field."""
        return check_float(self.name, value, self.low, self.high, low_open=self.low_open)

    def parse(self, text: str) -> float:
        """An argparse ``type``: the same rule, as an argparse error."""
        try:
            return self.check(float(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{self.name} must be {_range_text(self.low, self.high, low_open=self.low_open)}; got {text!r}.") from error
        except WanAnimateError as error:
            raise argparse.ArgumentTypeError(str(error)) from error


# -- the settings ------------------------------------------------------------------------------------------------
# Generation.
STEPS = IntField("Steps", 1, 100)
"""5x the model's 20; a 720p segment of 100 steps already takes about 20 minutes on an H100."""
SEED = IntField("Seed", 0, 2**63 - 1)
"""What a signed 64-bit integer holds: the generator, JSON job records and the parallel job broadcast keep it exactly."""
GUIDANCE = FloatField("Guidance", 1.0, 10.0)
"""1 = off (the model's default); Wan's text-to-video default is 5, and far above it the guided prediction saturates."""
FLOW_SHIFT = FloatField("Flow shift", 0.0, 50.0, low_open=True)
"""The schedule's shift must be positive; Wan uses 3 to 12."""
OVERLAP_FRAMES = (1, 5)
"""Frames of the previous segment that condition the next: the two values the model was trained with."""
SEGMENT_FRAMES = IntField("Segment length", 5, 161)
"""4N + 1 frames, up to about twice the 77 the model was trained on."""
RELIGHT_WEIGHT = FloatField("Relighting weight", 0.0, 2.0)
LORA_WEIGHT = FloatField("LoRA weight", -4.0, 4.0)

# Preprocessing.
START = FloatField("Start", 0.0, None)
END = FloatField("End", 0.0, None, low_open=True)
FPS = FloatField("Frame rate", 1.0, 60.0)
"""The model was trained at 30 fps; above 60 a second of video costs twice the frames for motion it cannot show."""
MAX_SECONDS = FloatField("Longest clip", 0.0, None, low_open=True)
MASK_KERNEL = IntField("Mask dilation kernel", 1, 31)
"""Side of the dilation square in output pixels; 31 grows the mask by 15 px per iteration."""
MASK_ITERATIONS = IntField("Mask dilation iterations", 0, 10)
BLOCKIFY = IntField("Blockify grid", 1, 32)
"""Cells along each side of the mask's box: 1 fills the box, 32 is already a fine silhouette."""
DETECTION_THRESHOLD = FloatField("Detection threshold", 0.0, 1.0)
DETECT_EVERY = IntField("Detect every", 1, 30)
"""Frames between person detections; over a second (30 frames) interpolated boxes no longer follow a person."""

# Points clicked on the driving video (fractions of the frame, conditioning frame index).
POINT_FRAME = IntField("Point frame", 0, 1_000_000)
POINT_X = FloatField("Point x", 0.0, 1.0)
POINT_Y = FloatField("Point y", 0.0, 1.0)


def check_trim(start: object, end: object) -> tuple[float, float | None]:
    """``(start, end)`` of a trim as finite seconds, ``end`` ``None`` for the end of the video.

    Raises:
        WanAnimateError: A non-finite or negative value, or an end not after the start.
    """
    first = START.check(start)
    if end is None:
        return first, None
    last = END.check(end)
    if last <= first:
        raise WanAnimateError(f"End ({last:g} s) must come after Start ({first:g} s).")
    return first, last


__all__ = [
    "FloatField",
    "IntField",
    "MIN_PERSON_HEIGHT",
    "MIN_PHOTO_SIDE",
    "MIN_VIDEO_SIDE",
    "WARN_PERSON_HEIGHT",
    "check_float",
    "check_int",
    "check_person_height",
    "check_photo_size",
    "check_trim",
    "check_video_size",
]
