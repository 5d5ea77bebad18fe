"""One rule per setting (wan_animate.validation): ranges, finite checks, argparse types, the input-size limits."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from wan_animate import validation
from wan_animate.errors import WanAnimateError
from wan_animate.generate import GenerationSettings
from wan_animate.preprocess import PreprocessOptions
from wan_animate.preprocess.mask import PointPrompt


@pytest.mark.parametrize("value,expected", [(20, 20), (np.int64(7), 7), (20.0, 20), (np.float32(3.0), 3), (100, 100), (1, 1)])
def test_check_int_accepts_whole_numbers_in_range(value, expected):
    assert validation.STEPS.check(value) == expected and type(validation.STEPS.check(value)) is int


@pytest.mark.parametrize("value", [0, 101, 2.5, math.nan, math.inf, -math.inf, True, "20", None, 10**400, [3]])
def test_bad_int_values_are_refused_naming_the_field_and_range(value):
    with pytest.raises(WanAnimateError, match=r"^Steps must be a whole number from 1 to 100; got "):
        validation.STEPS.check(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.5, 10.5, 10**400, False, "2", None])
def test_bad_float_values_are_refused_naming_the_field_and_range(value):
    with pytest.raises(WanAnimateError, match=r"^Guidance must be a number from 1 to 10; got "):
        validation.GUIDANCE.check(value)


def test_open_lower_bounds_and_unbounded_fields():
    assert validation.FLOW_SHIFT.check(1e-3) == 1e-3
    with pytest.raises(WanAnimateError, match="Flow shift must be a number greater than 0 and at most 50; got 0"):
        validation.FLOW_SHIFT.check(0)
    assert validation.START.check(3600) == 3600.0
    with pytest.raises(WanAnimateError, match="Start must be a number of at least 0; got inf"):
        validation.START.check(math.inf)


def test_seed_covers_the_signed_64_bit_range_only():
    assert validation.SEED.check(2**63 - 1) == 2**63 - 1 and validation.SEED.check(0) == 0
    for value, shown in ((2**63, "9223372036854775808"), (1e30, "1e+30"), (-1, "-1"), (10**400, "a number of about 401 digits"), (10**5000, "a number of about 5001 digits")):
        with pytest.raises(WanAnimateError) as error:
            validation.SEED.check(value)
        assert str(error.value) == f"Seed must be a whole number from 0 to 9223372036854775807; got {shown}."


def test_argparse_types_give_the_same_sentence():
    assert validation.STEPS.parse("20") == 20 and validation.STEPS.parse("2e1") == 20 and validation.GUIDANCE.parse("1.5") == 1.5
    for field, text, message in (
        (validation.STEPS, "10000", "Steps must be a whole number from 1 to 100; got 10000."),
        (validation.STEPS, "many", "Steps must be a whole number from 1 to 100; got 'many'."),
        (validation.SEED, "1e30", "Seed must be a whole number from 0 to 9223372036854775807; got 1e+30."),
        (validation.START, "nan", "Start must be a number of at least 0; got nan."),
        (validation.GUIDANCE, "fast", "Guidance must be a number from 1 to 10; got 'fast'."),
    ):
        with pytest.raises(argparse.ArgumentTypeError) as error:
            field.parse(text)
        assert str(error.value) == message


def test_trim_must_be_finite_and_end_after_start():
    assert validation.check_trim(0, None) == (0.0, None) and validation.check_trim(1, 2.5) == (1.0, 2.5)
    for start, end, message in ((math.nan, None, "Start"), (0, math.nan, "End"), (2, 1, r"End \(1 s\) must come after Start \(2 s\)")):
        with pytest.raises(WanAnimateError, match=message):
            validation.check_trim(start, end)


def test_refuse_inputs_under_the_minimum_sizes_with_the_number():
    validation.check_photo_size(validation.MIN_PHOTO_SIDE, 4000, "me.png")
    with pytest.raises(WanAnimateError, match=f"The photo me.png is 4000x127 px; its shorter side must be at least {validation.MIN_PHOTO_SIDE} px"):
        validation.check_photo_size(127, 4000, "me.png")
    validation.check_video_size(validation.MIN_VIDEO_SIDE, validation.MIN_VIDEO_SIDE, "clip.mp4")
    with pytest.raises(WanAnimateError, match=f"The video clip.mp4 is 120x1920 px; its shorter side must be at least {validation.MIN_VIDEO_SIDE} px"):
        validation.check_video_size(1920, 120, "clip.mp4")


def test_refuse_a_small_person_and_warn_in_the_band_above():
    assert (validation.MIN_PERSON_HEIGHT, validation.WARN_PERSON_HEIGHT) == (64, 205)  # ViTPose's crop: 256 / 1.25 = 205
    with pytest.raises(WanAnimateError, match="The person in clip.mp4 is only about 63 px tall; at least 64 px is needed"):
        validation.check_person_height(63.4, "clip.mp4")
    assert "about 64 px tall" in validation.check_person_height(64.0, "clip.mp4")
    assert "under 205 px" in validation.check_person_height(204.9, "clip.mp4")
    assert validation.check_person_height(205.0, "clip.mp4") is None


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(seed=2**64), "Seed must be a whole number"),
        (dict(seed=-1), "Seed must be a whole number"),
        (dict(num_inference_steps=10000), "Steps must be a whole number from 1 to 100"),
        (dict(guidance_scale=math.nan), "Guidance must be a number from 1 to 10; got nan"),
        (dict(flow_shift=math.inf), "Flow shift must be"),
        (dict(relight_weight=-0.5), "Relighting weight must be"),
        (dict(lora_weights={"style": math.nan}), "LoRA weight of style must be"),
        (dict(segment_frames=1e9), "Segment length must be"),
    ],
)
def test_bad_generation_settings_are_refused_by_check(overrides, message):
    with pytest.raises(WanAnimateError, match=message):
        GenerationSettings(**overrides).check()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(fps=0), "Frame rate must be a number from 1 to 60; got 0"),
        (dict(fps=math.inf), "Frame rate"),
        (dict(start=math.nan), "Start"),
        (dict(end=-math.inf), "End"),
        (dict(max_seconds=0), "Longest clip"),
        (dict(mask_kernel=0), "Mask dilation kernel must be a whole number from 1 to 31; got 0"),
        (dict(mask_iterations=1.5), "Mask dilation iterations"),
        (dict(blockify=(0, 0)), "Blockify grid must be a whole number from 1 to 32; got 0"),
        (dict(blockify=(4,)), "Blockify grid must be two whole numbers"),
        (dict(detection_threshold=math.nan), "Detection threshold"),
        (dict(detect_every=0), "Detect every"),
        (dict(person_point=(1e400, 3.0, 4.0)), "Point frame"),
        (dict(points=[PointPrompt(frame=0, x=math.nan, y=1.0)]), "Point x"),
        (dict(resolution="4k"), "Unknown resolution"),
    ],
)
def test_bad_preprocess_options_are_refused_by_check(overrides, message):
    with pytest.raises(WanAnimateError, match=message):
        PreprocessOptions(**overrides).check()
    PreprocessOptions().check()
