"""Generation through the tiny pipeline: progress, cancellation, the streamed mp4, resuming, memory, colour matching."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
import pytest

from tests.media import audio_duration, video_facts, write_test_video
from wan_animate.conditioning import Conditioning
from wan_animate.errors import GenerationCancelled, WanAnimateError
from wan_animate.generate import GenerationSettings, SegmentTimes, estimate_segment_seconds, estimate_steps, generate, generate_video
from wan_animate.models import load_pipeline
from wan_animate.video import read_video

HEIGHT, WIDTH = 32, 32
FAST = dict(num_inference_steps=2, segment_frames=5, seed=0, relight=False)


def test_steps_of_a_job():
    assert estimate_steps(1, GenerationSettings()) == 20
    assert estimate_steps(300, GenerationSettings()) == 80
    assert estimate_steps(300, GenerationSettings(num_inference_steps=4, overlap_frames=5)) == 20


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


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return load_pipeline(tiny_checkpoint, allow_cpu=True)


def make_conditioning(mode: str, frames: int, audio=None, *, height: int = HEIGHT, width: int = WIDTH) -> Conditioning:
    """Random conditioning of ``frames`` frames (Replacement: a square mask, the background outside it)."""
    rng = np.random.default_rng(1)
    fields = dict(
        mode=mode,
        reference_image=rng.integers(0, 255, (40, 40, 3), dtype=np.uint8),
        pose_frames=rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8),
        face_frames=rng.integers(0, 255, (frames, 512, 512, 3), dtype=np.uint8),
        fps=10.0,
        audio_source=audio,
    )
    if mode == "replace":
        mask = np.zeros((frames, height, width), np.uint8)
        mask[:, 8:24, 8:24] = 1
        fields["mask_frames"] = mask
        fields["background_frames"] = rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8) * (1 - mask[..., None])
    return Conditioning(**fields)


@pytest.mark.parametrize("mode", ["animate", "replace"])
def test_both_modes_write_a_video_with_the_driving_audio(pipeline, tmp_path, mode):
    driving = write_test_video(tmp_path / "driving.mp4", np.zeros((20, 32, 32, 3), np.uint8), 10.0, audio_seconds=2.0)
    conditioning = make_conditioning(mode, frames=11, audio=driving)  # 3 segments of 5 with overlap 1
    calls = []
    result = generate_video(
        pipeline, conditioning, tmp_path / "out.mp4", GenerationSettings(**FAST), progress=lambda *a: calls.append(a)
    )
    assert result.frames is None and result.complete and result.seed == 0
    assert (result.num_frames, result.total_frames, result.segments_done, result.segments_total) == (11, 11, 3, 3)
    assert (result.width, result.height, result.fps) == (WIDTH, HEIGHT, 10.0)
    facts = video_facts(result.video_path)
    assert facts == {"codec": "h264", "pix_fmt": "yuv420p", "width": WIDTH, "height": HEIGHT, "fps": 10.0, "has_audio": True, "frames": 11}
    assert audio_duration(result.video_path) == pytest.approx(1.1, abs=0.05)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["driving.mp4", "out.mp4"]  # no segment files left
    # Progress over the whole job: every phase of every segment, in order, never going back.
    phases = [description.split(" · ")[1] for _, _, description in calls]
    assert phases == ["encoding", "step 1/2", "step 2/2", "decoding"] * 3 + ["writing the video", "done"]
    assert [description.split(" · ")[0] for _, _, description in calls] == [f"Segment {k}/3" for k in (1, 2, 3) for _ in range(4)] + ["Segment 3/3"] * 2
    done = [call[0] for call in calls]
    assert done == sorted(done) and done[0] == 0 and done[-2] < 1000 and done[-1] == 1000 and {call[1] for call in calls} == {1000}
    # Once a step was measured, the time left is said.
    assert "left" not in calls[0][2] and calls[-2][2].endswith("left")


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


def test_cancel_stops_within_a_step(pipeline):
    cancel = threading.Event()
    steps = []

    def progress(done, total, description):
        if "step" in description:
            steps.append(description)
            if len(steps) == 3:
                cancel.set()

    with pytest.raises(GenerationCancelled, match="Stopped after step 3 of 6"):
        generate(pipeline, make_conditioning("animate", frames=11), GenerationSettings(**FAST), progress=progress, cancel=cancel)
    assert len(steps) == 3
    # The pipeline is still usable afterwards, with its own scheduler.
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


# -- Resuming, streaming, memory -------------------------------------------------------------------------------


def decoded(path) -> np.ndarray:
    return read_video(path, fps=None, max_seconds=None).frames


@pytest.fixture(scope="module")
def three_segments(pipeline, tmp_path_factory):
    """An uninterrupted 3-segment job with sound: the reference for resumed ones."""
    folder = tmp_path_factory.mktemp("three_segments")
    driving = write_test_video(folder / "driving.mp4", np.zeros((20, 32, 32, 3), np.uint8), 10.0, audio_seconds=2.0)
    conditioning = make_conditioning("replace", frames=11, audio=driving)
    result = generate_video(pipeline, conditioning, folder / "whole.mp4", GenerationSettings(**FAST))
    return conditioning, result.video_path


def test_a_job_stopped_after_one_segment_goes_on_to_the_same_video(pipeline, tmp_path, three_segments):
    conditioning, whole = three_segments
    state = tmp_path / "state"
    first = generate_video(pipeline, conditioning, tmp_path / "out.mp4", GenerationSettings(**FAST), state_dir=state, max_segments=1)
    assert not first.complete and (first.segments_done, first.segments_total, first.num_frames) == (1, 3, 5)
    assert video_facts(first.video_path)["frames"] == 5 and video_facts(first.video_path)["has_audio"]
    assert sorted(p.name for p in state.iterdir()) == ["checkpoint.pt", "segment_0000.mp4"]

    updates = []
    # seed=None: the stored job's seed is used.
    rest = generate_video(
        pipeline, conditioning, tmp_path / "out.mp4", GenerationSettings(**{**FAST, "seed": None}), state_dir=state,
        on_segment=updates.append,
    )
    assert rest.complete and rest.seed == 0 and rest.num_frames == 11
    assert [(u.index, u.frames_done, u.segments_total) for u in updates] == [(1, 9, 3), (2, 11, 3)]
    np.testing.assert_array_equal(decoded(rest.video_path), decoded(whole))
    assert audio_duration(rest.video_path) == pytest.approx(audio_duration(whole))
    assert rest.video_path.read_bytes() == whole.read_bytes()  # even the same file

    # A finished job asked again: the video is assembled from its segments, nothing is generated.
    again = generate_video(pipeline, conditioning, tmp_path / "again.mp4", GenerationSettings(**FAST), state_dir=state)
    assert again.complete and again.video_path.read_bytes() == whole.read_bytes()


def test_a_cancelled_job_goes_on_to_the_same_video(pipeline, tmp_path, three_segments):
    conditioning, whole = three_segments
    cancel = threading.Event()

    def progress(done, total, description):
        if description.startswith("Segment 2/3 · step 1/2"):
            cancel.set()

    with pytest.raises(GenerationCancelled, match="Stopped after step 3 of 6"):
        generate_video(pipeline, conditioning, tmp_path / "out.mp4", GenerationSettings(**FAST), progress=progress, cancel=cancel, state_dir=tmp_path / "state")
    assert video_facts(tmp_path / "out.mp4")["frames"] == 5  # the finished segment is kept
    rest = generate_video(pipeline, conditioning, tmp_path / "out.mp4", GenerationSettings(**FAST), state_dir=tmp_path / "state")
    np.testing.assert_array_equal(decoded(rest.video_path), decoded(whole))
    assert video_facts(rest.video_path) == video_facts(whole)


@pytest.mark.parametrize("change", [dict(seed=1), dict(num_inference_steps=3), dict(color_match=True)])
def test_another_jobs_state_is_refused(pipeline, tmp_path, three_segments, change):
    conditioning, _ = three_segments
    generate_video(pipeline, conditioning, tmp_path / "out.mp4", GenerationSettings(**FAST), state_dir=tmp_path / "state", max_segments=1)
    with pytest.raises(WanAnimateError, match="holds the state of another job"):
        generate_video(pipeline, conditioning, tmp_path / "other.mp4", GenerationSettings(**{**FAST, **change}), state_dir=tmp_path / "state")
    with pytest.raises(WanAnimateError, match="holds the state of another job"):
        other_clip = make_conditioning("replace", frames=12)
        generate_video(pipeline, other_clip, tmp_path / "other.mp4", GenerationSettings(**FAST), state_dir=tmp_path / "state")


def test_a_deadline_stops_before_a_segment_that_would_not_end_in_time(pipeline, tmp_path):
    conditioning = make_conditioning("animate", frames=11)
    # Already passed: the first segment runs (nothing is measured yet), then no other fits.
    result = generate_video(pipeline, conditioning, tmp_path / "out.mp4", GenerationSettings(**FAST), state_dir=tmp_path / "state", deadline=time.monotonic())
    assert (result.segments_done, result.complete) == (1, False)
    # The next call has the first segment's times: it estimates and starts nothing.
    again = generate_video(pipeline, conditioning, tmp_path / "out.mp4", GenerationSettings(**FAST), state_dir=tmp_path / "state", deadline=time.monotonic())
    assert (again.segments_done, again.num_frames) == (1, 5) and video_facts(again.video_path)["frames"] == 5


def test_segment_estimates_come_from_measured_times():
    times = [SegmentTimes(inputs=1.0, encode=2.0, steps=[10.0, 12.0], decode=3.0, write=4.0, total=28.0), SegmentTimes(steps=[11.0, 11.0], write=2.0, total=26.0)]
    # median step 11 x 4 steps + median rest (6 and 4: 5) + median write (3)
    assert estimate_segment_seconds(times, 4) == pytest.approx(44 + 5 + 3)
    assert estimate_segment_seconds([], 4) is None


def test_the_mp4_holds_finished_segments_while_later_ones_are_generated(pipeline, tmp_path):
    output = tmp_path / "out.mp4"
    seen = {}

    def progress(done, total, description):
        if description.startswith("Segment 3/3 · step 1/2"):
            # The first two segments went to the writer thread; wait (not a timing assertion) until it wrote them.
            for _ in range(600):
                if output.exists() and video_facts(output)["frames"] == 9:
                    break
                time.sleep(0.05)
            seen["frames"] = decoded(output)

    result = generate_video(pipeline, make_conditioning("animate", frames=11), output, GenerationSettings(**FAST), progress=progress)
    assert len(seen["frames"]) == 9
    np.testing.assert_array_equal(seen["frames"], decoded(result.video_path)[:9])


def test_host_memory_does_not_grow_with_the_clip(pipeline, tmp_path):
    """tracemalloc (numpy's buffers included) over a job read lazily: 5 segments peak like 2."""
    import tracemalloc

    settings = GenerationSettings(**{**FAST, "num_inference_steps": 1})
    folders = {frames: make_conditioning("replace", frames).save(tmp_path / f"conditioning_{frames}") for frames in (9, 21)}

    def peak(run) -> int:
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    two, five = (
        peak(lambda: generate_video(pipeline, Conditioning.open(folders[frames]), tmp_path / f"out_{frames}.mp4", settings))
        for frames in (9, 21)
    )
    assert five < 1.25 * two
    # What it would cost to hold the 21-frame clip (its 512 x 512 face crops alone are 16 MB): far more.
    assert peak(lambda: Conditioning.load(folders[21])) > 2 * two


def test_colour_matching_happens_before_the_next_segment_is_conditioned(pipeline):
    """The frames that condition segment 3 are segment 2's colour-matched frames, as the video shows them."""
    conditioning = make_conditioning("animate", frames=11)
    conditions = []
    original = pipeline.prepare_prev_segment_cond_latents

    def spy(previous, *args, **kwargs):
        conditions.append(None if previous is None else previous.clone())
        return original(previous, *args, **kwargs)

    pipeline.prepare_prev_segment_cond_latents = spy
    try:
        matched = generate(pipeline, conditioning, GenerationSettings(**FAST, color_match=True)).frames
        plain = generate(pipeline, conditioning, GenerationSettings(**FAST)).frames
    finally:
        del pipeline.prepare_prev_segment_cond_latents
    assert conditions[0] is None and len(conditions) == 6
    as_uint8 = ((conditions[2][0, :, -1].permute(1, 2, 0).float() * 0.5 + 0.5).clamp(0, 1) * 255).round().numpy()
    # Segment 2 was corrected (segment 1 is the reference and the same in both runs) ...
    np.testing.assert_array_equal(matched[:5], plain[:5])
    assert np.abs(matched[5:9].astype(int) - plain[5:9]).mean() > 1
    # ... and segment 3 was conditioned on the corrected last frame of segment 2.
    assert np.abs(as_uint8 - matched[8]).max() <= 1


def test_out_of_memory_mid_job_is_a_sentence_and_the_next_job_runs(pipeline, monkeypatch):
    """The segment loop runs inside the out-of-memory guard: the error names what to change, and nothing stays broken."""
    from wan_animate.out_of_memory import GpuOutOfMemory

    conditioning = make_conditioning("animate", frames=9)
    calls = []
    real_forward = type(pipeline.transformer).forward

    def failing_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # segment 2's first step
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(pipeline.transformer), "forward", failing_forward)
    with pytest.raises(GpuOutOfMemory, match=f"ran out of memory while generating at {WIDTH}x{HEIGHT}"):
        generate(pipeline, conditioning, GenerationSettings(**FAST))
    assert len(calls) == 3
    monkeypatch.setattr(type(pipeline.transformer), "forward", real_forward)
    again = generate(pipeline, conditioning, GenerationSettings(**FAST))
    assert again.complete and again.frames.shape[0] == 9


def test_out_of_memory_inside_the_vae_leaves_no_cached_features(pipeline, monkeypatch):
    """Wan's VAE keeps every causal convolution's last features between chunks; an error mid-encode left them on the
    GPU until the next job (4.9 GiB above the model on the H200, benchmarks/RESULTS.md)."""
    from wan_animate.out_of_memory import GpuOutOfMemory

    conditioning = make_conditioning("animate", frames=9)
    conv_class = type(next(m for m in pipeline.vae.encoder.modules() if type(m).__name__ == "WanCausalConv3d"))
    real_forward = conv_class.forward
    calls = []

    def failing_forward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 40:  # inside the first encode, after some chunks' features were cached
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(conv_class, "forward", failing_forward)
    with pytest.raises(GpuOutOfMemory):
        generate(pipeline, conditioning, GenerationSettings(**FAST))
    assert len(calls) == 40
    assert all(feature is None for feature in pipeline.vae._enc_feat_map)
