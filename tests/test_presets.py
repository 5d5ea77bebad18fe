"""Presets, the draft span and GPU-time estimates (wan_animate.presets)."""

from __future__ import annotations

import math

import pytest

from tests.media import counter_frames, write_test_video
from wan_animate.errors import WanAnimateError
from wan_animate.generate import GenerationSettings
from wan_animate.presets import (
    FAST_ADAPTER,
    MODEL_LOAD_SECONDS,
    available_presets,
    draft_settings,
    draft_span,
    estimate_frames,
    estimate_generation_seconds,
    estimate_preprocess_seconds,
    format_minutes,
    get_preset,
    gpu_duration,
    parse_lora_source,
    preset_lora_weights,
)
from wan_animate.video import read_video


def test_fast_preset_only_with_a_few_step_lora():
    assert [p.name for p in available_presets(fast_lora=False)] == ["quality"]
    assert [p.name for p in available_presets(fast_lora=True)] == ["quality", "fast"]
    assert get_preset("fast", fast_lora=True).steps == 4
    assert get_preset("quality", fast_lora=False).steps == 20
    with pytest.raises(WanAnimateError, match="--fast-lora"):
        get_preset("fast", fast_lora=False)
    with pytest.raises(WanAnimateError, match="Unknown preset"):
        get_preset("turbo", fast_lora=True)


def test_preset_switches_the_fast_adapter():
    assert preset_lora_weights(get_preset("fast", True), fast_lora_loaded=True) == {FAST_ADAPTER: 1.0}
    assert preset_lora_weights(get_preset("quality", True), fast_lora_loaded=True) == {FAST_ADAPTER: 0.0}
    assert preset_lora_weights(get_preset("quality", False), fast_lora_loaded=False) == {}


def test_parse_lora_source():
    assert parse_lora_source("org/repo::lora.safetensors") == ("org/repo", "lora.safetensors")
    assert parse_lora_source("/models/fast.safetensors") == ("/models/fast.safetensors", None)
    with pytest.raises(WanAnimateError):
        parse_lora_source("::file.safetensors")


def test_draft_settings_use_the_fast_preset_when_there_is_one():
    settings = GenerationSettings(num_inference_steps=20, guidance_scale=3.0, seed=7)
    fast = draft_settings(settings, fast_lora=True)
    assert (fast.num_inference_steps, fast.guidance_scale, fast.seed) == (4, 1.0, 7)
    assert fast.lora_weights == {FAST_ADAPTER: 1.0}
    plain = draft_settings(settings, fast_lora=False)
    assert (plain.num_inference_steps, plain.guidance_scale, plain.lora_weights) == (20, 3.0, {})
    assert settings.num_inference_steps == 20  # the job's own settings are not changed


def test_draft_span_is_the_first_segment():
    assert draft_span(1.0, None, 30.0) == (1.0, pytest.approx(1.0 + 77 / 30))
    assert draft_span(1.0, 2.0, 30.0) == (1.0, 2.0)  # a shorter trim stays
    with pytest.raises(WanAnimateError):
        draft_span(0.0, None, 0.0)


@pytest.mark.parametrize("source_fps", [30, 60, 24])
def test_draft_span_decodes_to_at_most_one_segment(tmp_path, source_fps):
    """Decoded with the real decoder at 30 fps, the draft span gives 77 frames (a little fewer from 24 fps)."""
    video = write_test_video(tmp_path / "clip.mp4", counter_frames(5 * source_fps, 32, 32), source_fps)
    start, end = draft_span(0.5, None, 30.0)
    frames = read_video(video, fps=30.0, start=start, end=end).frames
    assert 75 <= len(frames) <= 77
    assert len(frames) == 77 or source_fps == 24


def test_generation_estimate_counts_segments_steps_and_guidance():
    quality = GenerationSettings(num_inference_steps=20)
    # 77 frames: one segment of 20 steps at 12.9 s, plus 19.9 s around it and 77 frames written at 0.052 s,
    # plus the load margin (benchmarks/RESULTS.md).
    assert estimate_generation_seconds(77, "720p", quality) == pytest.approx(20 * 12.9 + 19.9 + 77 * 0.052 + MODEL_LOAD_SECONDS)
    # 150 frames with overlap 1: segments cover 77 + 76 frames, so two segments.
    assert estimate_generation_seconds(150, "720p", quality, include_load=False) == pytest.approx(2 * (20 * 12.9 + 19.9 + 77 * 0.052))
    assert estimate_generation_seconds(77, "480p", quality, include_load=False) == pytest.approx(20 * 3.6 + 10.8 + 77 * 0.033)
    cfg = GenerationSettings(num_inference_steps=20, guidance_scale=2.0)
    assert estimate_generation_seconds(77, "480p", cfg, include_load=False) == pytest.approx(20 * 3.6 * 2 + 10.8 + 77 * 0.033)
    with pytest.raises(WanAnimateError):
        estimate_generation_seconds(77, "1080p", quality)


def test_preprocess_estimate_grows_with_frames_and_mask():
    assert estimate_preprocess_seconds(300, "replace") > estimate_preprocess_seconds(300, "animate")
    assert estimate_preprocess_seconds(600, "animate") > estimate_preprocess_seconds(300, "animate")


def test_estimate_frames_after_trim_and_resampling():
    assert estimate_frames(4.0, 25.0, 30.0, start=1.0) == 90
    assert estimate_frames(4.0, 25.0, None) == 100
    assert estimate_frames(4.0, 25.0, 30.0, start=1.0, end=2.5) == 45
    assert estimate_frames(4.0, 25.0, 30.0, start=5.0) == 1


def test_gpu_duration_has_headroom_and_a_floor():
    assert gpu_duration(10) == 60
    assert gpu_duration(1000) == math.ceil(1200)


def test_format_minutes():
    assert format_minutes(42) == "about 40 s"
    assert format_minutes(600) == "about 10 min"
