"""Generation through the tiny pipeline: segments, trimming, progress, cancellation, colour matching, mp4 out."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.media import audio_duration, video_facts, write_test_video
from wan_animate.conditioning import Conditioning
from wan_animate.errors import GenerationCancelled, WanAnimateError
from wan_animate.generate import GenerationSettings, estimate_steps, generate, generate_video, match_segment_colors, plan_segments
from wan_animate.models import load_pipeline

HEIGHT, WIDTH = 32, 32
FAST = dict(num_inference_steps=2, segment_frames=5, seed=0, relight=False)


def test_plan_segments_mirror_the_pipeline():
    assert plan_segments(1) == [(0, 1)]
    assert plan_segments(77) == [(0, 77)]
    assert plan_segments(78) == [(0, 77), (77, 78)]
    assert plan_segments(300) == [(0, 77), (77, 153), (153, 229), (229, 300)]
    assert plan_segments(300, overlap_frames=5) == [(0, 77), (77, 149), (149, 221), (221, 293), (293, 300)]
    assert plan_segments(10, segment_frames=5) == [(0, 5), (5, 9), (9, 10)]
    assert estimate_steps(300, GenerationSettings()) == 80


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(num_inference_steps=0), "Steps must be a whole number from 1 to 100; got 0"),
        (dict(overlap_frames=3), "Overlap frames must be 1 or 5"),
        (dict(segment_frames=10), "4N \\+ 1"),
        (dict(guidance_scale=0.5), "Guidance must be a number from 1 to 10; got 0.5"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(WanAnimateError, match=message):
        GenerationSettings(**overrides).check()


def test_colour_matching_shrinks_the_jump_at_a_segment_boundary():
    rng = np.random.default_rng(0)
    # A smooth scene whose second segment drifted: warmer and brighter, as segment-wise generation can do.
    base = rng.normal(110, 25, (1, 24, 24, 3))
    motion = np.linspace(0, 12, 20)[:, None, None, None]  # slow brightening inside the clip
    clip = base + motion
    segments = [(0, 10), (10, 20)]
    drifted = clip.copy()
    drifted[10:] = drifted[10:] * np.array([1.15, 1.0, 0.9]) + np.array([18.0, 6.0, -10.0])
    frames = np.clip(drifted, 0, 255).astype(np.uint8)

    def jump(video):
        return np.abs(video[10].astype(float) - video[9].astype(float)).mean()

    matched = match_segment_colors(frames, segments, reference_frames=1)
    natural = np.abs(clip[10] - clip[9]).mean()
    assert jump(frames) > 10 * natural
    assert jump(matched) < 0.25 * jump(frames)
    assert np.array_equal(matched[:10], frames[:10])  # the first segment is the reference, untouched
    # The brightening inside the second segment is kept, not flattened to one frame's colours.
    inside = matched[19].astype(float).mean() - matched[10].astype(float).mean()
    assert inside == pytest.approx(motion[19, 0, 0, 0] - motion[10, 0, 0, 0], abs=2.5)


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return load_pipeline(tiny_checkpoint, allow_cpu=True)


def make_conditioning(mode: str, frames: int, audio=None) -> Conditioning:
    rng = np.random.default_rng(1)
    fields = dict(
        mode=mode,
        reference_image=rng.integers(0, 255, (40, 40, 3), dtype=np.uint8),
        pose_frames=rng.integers(0, 255, (frames, HEIGHT, WIDTH, 3), dtype=np.uint8),
        face_frames=rng.integers(0, 255, (frames, 512, 512, 3), dtype=np.uint8),
        fps=10.0,
        audio_source=audio,
    )
    if mode == "replace":
        mask = np.zeros((frames, HEIGHT, WIDTH), np.uint8)
        mask[:, 8:24, 8:24] = 1
        fields["mask_frames"] = mask
        fields["background_frames"] = rng.integers(0, 255, (frames, HEIGHT, WIDTH, 3), dtype=np.uint8) * (1 - mask[..., None])
    return Conditioning(**fields)


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_both_modes_write_a_video_with_the_driving_audio(pipeline, tmp_path, mode):
    driving = write_test_video(tmp_path / "driving.mp4", np.zeros((20, 32, 32, 3), np.uint8), 10.0, audio_seconds=2.0)
    conditioning = make_conditioning(mode, frames=11, audio=driving)  # 3 segments of 5 with overlap 1
    calls = []
    result = generate_video(
        pipeline, conditioning, tmp_path / "out.mp4", GenerationSettings(**FAST), progress=lambda *a: calls.append(a)
    )
    assert result.frames.shape == (11, HEIGHT, WIDTH, 3) and result.frames.dtype == np.uint8
    assert result.seed == 0
    facts = video_facts(result.video_path)
    assert facts == {"codec": "h264", "pix_fmt": "yuv420p", "width": WIDTH, "height": HEIGHT, "fps": 10.0, "has_audio": True, "frames": 11}
    assert audio_duration(result.video_path) == pytest.approx(1.1, abs=0.05)
    # Progress counts the steps of all segments together.
    assert [c[:2] for c in calls] == [(i, 6) for i in range(1, 7)]
    assert calls[-1][2] == "Segment 3/3, step 2/2"


def test_a_single_frame_clip_and_seeds(pipeline):
    conditioning = make_conditioning("animate", frames=1)
    first = generate(pipeline, conditioning, GenerationSettings(**FAST))
    again = generate(pipeline, conditioning, GenerationSettings(**FAST))
    other = generate(pipeline, conditioning, GenerationSettings(**{**FAST, "seed": 1}))
    assert first.frames.shape == (1, HEIGHT, WIDTH, 3)
    assert np.array_equal(first.frames, again.frames)
    assert not np.array_equal(first.frames, other.frames)
    drawn = generate(pipeline, conditioning, GenerationSettings(**{**FAST, "seed": None}))
    assert 0 <= drawn.seed < 2**31


def test_cancel_stops_between_steps(pipeline):
    cancel = threading.Event()
    seen = []

    def progress(done, total, description):
        seen.append(done)
        if done == 3:
            cancel.set()

    with pytest.raises(GenerationCancelled):
        generate(pipeline, make_conditioning("animate", frames=11), GenerationSettings(**FAST), progress=progress, cancel=cancel)
    assert seen == [1, 2, 3]
    # The pipeline is still usable afterwards.
    assert generate(pipeline, make_conditioning("animate", frames=2), GenerationSettings(**FAST)).frames.shape[0] == 2


def test_prompt_embeddings_are_computed_once_per_prompt(pipeline):
    """The text encoder runs once per distinct prompt; cached embeddings give the same video as encoding anew."""
    from wan_animate.generate import PROMPT_CACHE_SIZE

    calls = []
    hook = pipeline.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        pipeline.__dict__.pop("wan_prompt_cache", None)
        conditioning = make_conditioning("animate", 5)
        first = generate(pipeline, conditioning, GenerationSettings(**FAST)).frames
        again = generate(pipeline, conditioning, GenerationSettings(**FAST)).frames
        assert len(calls) == 1
        np.testing.assert_array_equal(first, again)
        generate(pipeline, conditioning, GenerationSettings(**FAST, prompt="a person dances"))
        assert len(calls) == 2
        generate(pipeline, conditioning, GenerationSettings(**FAST, guidance_scale=2.0))
        assert len(calls) == 4  # guidance adds the negative prompt: a new entry, encoded with its own pass
        for index in range(PROMPT_CACHE_SIZE + 1):
            generate(pipeline, conditioning, GenerationSettings(**FAST, prompt=f"prompt {index}"))
        assert len(pipeline.wan_prompt_cache) == PROMPT_CACHE_SIZE
    finally:
        hook.remove()
