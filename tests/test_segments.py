"""The segment loop (wan_animate.segments) against `WanAnimatePipeline.__call__`: same frames for the same seed.

The reference is the pipeline called the way the package called it before it had its own loop: PIL lists
(clips of no more than the overlap held to ``overlap + 1`` frames), the cached prompt embeddings, the job's
generator, ``output_type="np"`` rounded to 8 bits.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import WanAnimatePipeline
from PIL import Image

from tests.test_generate import make_conditioning
from wan_animate.demo.checkpoint import build_tiny_pipeline
from wan_animate.conditioning import Conditioning
from wan_animate.generate import GenerationSettings, generate, prompt_embeddings
from wan_animate.segments import SegmentPlan, match_colors


def pipeline_call(pipeline, conditioning: Conditioning, settings: GenerationSettings, scheduler=None) -> np.ndarray:
    """The clip from one `WanAnimatePipeline.__call__` (``scheduler``: builds the job's scheduler from the generator)."""
    needed = settings.overlap_frames + 1

    def images(frames) -> list[Image.Image]:
        frames = np.asarray(frames)
        if len(frames) < needed:
            frames = np.concatenate([frames, np.repeat(frames[-1:], needed - len(frames), axis=0)])
        return [Image.fromarray(frame) for frame in frames]

    extra = {}
    if conditioning.mode == "replace":
        extra = dict(background_video=images(conditioning.background_frames), mask_video=images(np.asarray(conditioning.mask_frames) * 255))
    embeds, negative = prompt_embeddings(pipeline, settings.prompt, settings.negative_prompt if settings.guidance_scale > 1 else None)
    generator = torch.Generator().manual_seed(settings.seed)
    own = pipeline.scheduler
    if scheduler is not None:
        pipeline.scheduler = scheduler.build(generator)
    try:
        output = pipeline(
            image=Image.fromarray(conditioning.reference_image),
            pose_video=images(conditioning.pose_frames),
            face_video=images(conditioning.face_frames),
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
            height=conditioning.height,
            width=conditioning.width,
            segment_frame_length=settings.segment_frames,
            num_inference_steps=settings.num_inference_steps,
            mode=conditioning.mode,
            prev_segment_conditioning_frames=settings.overlap_frames,
            guidance_scale=settings.guidance_scale,
            generator=generator,
            output_type="np",
            **extra,
        )
    finally:
        pipeline.scheduler = own
    frames = np.asarray(output.frames[0])[: conditioning.num_frames]
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pipeline():
    return build_tiny_pipeline(seed=0)


# -- the plan ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_frames,segment_frames,overlap,segments",
    [(1, 77, 1, 1), (77, 77, 1, 1), (78, 77, 1, 2), (300, 77, 1, 4), (300, 77, 5, 5), (900, 77, 1, 12), (10, 5, 1, 3), (3, 13, 5, 1), (30, 13, 5, 4)],
)
def test_plan_reads_the_frames_the_pipeline_pads_to(num_frames, segment_frames, overlap, segments):
    plan = SegmentPlan(num_frames, segment_frames, overlap)
    assert plan.num_segments == segments
    # The pipeline: hold a short clip's last frame to overlap + 1 frames, then pad by reflection.
    held = list(range(num_frames)) + [num_frames - 1] * max(0, overlap + 1 - num_frames)
    padded = WanAnimatePipeline.pad_video_frames(None, held, overlap + segments * plan.stride)
    for index in range(segments):
        start = index * plan.stride
        assert plan.source_indices(index).tolist() == padded[start : start + segment_frames]
    # Every output frame comes from exactly one segment, in order.
    ranges = [plan.output_range(index) for index in range(segments)]
    assert ranges[0][0] == 0 and ranges[-1][1] == num_frames
    assert all(end == start for (_, end), (start, _) in zip(ranges, ranges[1:]))
    assert all(start < end for start, end in ranges)
    assert plan.frames_done(0) == 0 and plan.frames_done(segments) == num_frames


# -- colour matching ----------------------------------------------------------------------------------------


def test_colour_matching_removes_the_jump_and_keeps_the_change_inside_a_segment():
    rng = np.random.default_rng(0)
    # A smooth scene that brightens slowly; the new segment drifted (warmer, brighter) from the frame it
    # was conditioned on, which it re-creates as its first frame.
    base = rng.normal(110, 25, (1, 24, 24, 3))
    motion = np.linspace(0, 12, 10)[:, None, None, None]
    clip = base + motion
    drifted = clip * np.array([1.15, 1.0, 0.9]) + np.array([18.0, 6.0, -10.0])

    def tensor(frames: np.ndarray) -> torch.Tensor:  # (T, H, W, 3) in 0..255 -> (1, 3, T, H, W) in [-1, 1]
        return torch.from_numpy(frames / 127.5 - 1).permute(3, 0, 1, 2)[None].float()

    reference = tensor(clip[:1])  # the frame the segment was conditioned on
    corrected = match_colors(tensor(drifted), reference, overlap_frames=1)
    back = (corrected[0].permute(1, 2, 3, 0).double().numpy() + 1) * 127.5
    assert corrected.dtype == torch.float32 and corrected.shape == (1, 3, 10, 24, 24)
    assert np.abs(back[0] - clip[0]).mean() < 0.05 * np.abs(drifted[0] - clip[0]).mean()
    # The brightening inside the segment is kept, not flattened to one frame's colours.
    assert back[9].mean() - back[0].mean() == pytest.approx(motion[9, 0, 0, 0] - motion[0, 0, 0, 0], abs=0.5)


# -- the loop against the pipeline call -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,frames,segment_frames,overlap,guidance",
    [
        ("animate", 1, 5, 1, 1.0),  # one frame, held to two
        ("animate", 11, 5, 1, 1.0),  # three segments, the last padded by reflection
        ("replace", 11, 5, 1, 1.0),
        ("animate", 3, 13, 5, 1.0),  # shorter than the overlap + 1
        ("replace", 30, 13, 5, 2.0),  # overlap 5, four segments, guidance
        ("animate", 77, 77, 1, 1.0),  # one real 77-frame segment
    ],
)
def test_the_loop_gives_the_pipeline_calls_frames(pipeline, mode, frames, segment_frames, overlap, guidance):
    conditioning = make_conditioning(mode, frames)
    settings = GenerationSettings(
        num_inference_steps=2, segment_frames=segment_frames, overlap_frames=overlap, guidance_scale=guidance, seed=7, relight=False
    )
    ours = generate(pipeline, conditioning, settings).frames
    np.testing.assert_array_equal(ours, pipeline_call(pipeline, conditioning, settings))


def test_few_step_schedule_and_lora_give_the_pipeline_calls_frames(tiny_checkpoint, tmp_path):
    """The few-step scheduler re-noises from the job's generator between steps: the draws keep their order."""
    from wan_animate.demo.loras import build_tiny_fast_lora
    from wan_animate.lora import load_lora
    from wan_animate.presets import LIGHTX2V_SCHEDULE

    pipe = build_tiny_pipeline(seed=0)
    load_lora(pipe, str(build_tiny_fast_lora(tiny_checkpoint, tmp_path / "lora.safetensors")), adapter_name="fast", weight=1.0)
    conditioning = make_conditioning("animate", 11)
    settings = GenerationSettings(
        num_inference_steps=4, segment_frames=5, seed=2, relight=False, scheduler=LIGHTX2V_SCHEDULE, lora_weights={"fast": 1.0}
    )
    ours = generate(pipe, conditioning, settings).frames
    np.testing.assert_array_equal(ours, pipeline_call(pipe, conditioning, settings, scheduler=LIGHTX2V_SCHEDULE))
    unscheduled = generate(pipe, conditioning, dataclasses.replace(settings, scheduler=None)).frames
    assert np.abs(unscheduled.astype(int) - ours).max() > 0  # the schedule matters, so the comparison can fail


def test_group_offloading_gives_the_same_frames(pipeline):
    """diffusers' block-level group offloading (CPU to CPU here: the same hooks as on a GPU) runs under the loop."""
    conditioning = make_conditioning("replace", 9)
    settings = GenerationSettings(num_inference_steps=2, segment_frames=5, seed=1, relight=False)
    plain = generate(pipeline, conditioning, settings).frames
    offloaded = build_tiny_pipeline(seed=0)
    cpu = torch.device("cpu")
    offloaded.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
    from diffusers.hooks import HookRegistry

    assert "group_offloading" in HookRegistry.check_if_exists_or_initialize(offloaded.transformer.blocks[0]).hooks
    np.testing.assert_array_equal(generate(offloaded, conditioning, settings).frames, plain)
