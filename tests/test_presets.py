"""Presets, the fast preset's LoRA and schedule, the draft span and GPU-time estimates (wan_animate.presets).

The fast preset's LoRA is loaded by hub repo id and file name through the real loader, from a Hugging Face cache
folder written here in the hub's layout, with the hub offline; its schedule is checked against lightx2v's
documented timesteps and run on the tiny pipeline, followed by a quality job on the same pipeline.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.media import counter_frames, write_test_video
from wan_animate.conditioning import Conditioning
from wan_animate.errors import WanAnimateError
from wan_animate.generate import GenerationSettings, generate
from wan_animate.lora import (
    BLOCK_MODULE_MAP,
    active_lora_weights,
    resolve_lora_file,
    set_lora_weights,
)
from wan_animate.presets import (
    FAST_ADAPTER,
    LIGHTX2V_SCHEDULE,
    MODEL_LOAD_SECONDS,
    PRESETS,
    apply_preset,
    available_presets,
    draft_settings,
    draft_span,
    ensure_fast_lora,
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


# The LoRA community Wan-Animate workflows load (Kijai's WanAnimate example), and lightx2v's documented use of it:
# strength 1.0, 4 LCM steps at timesteps 1000/750/500/250 shifted by 5, no CFG.
KIJAI_REPO = "Kijai/WanVideo_comfy"
KIJAI_FILE = "Lightx2v/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"
# 1000 * sigma with sigma = 5 s / (1 + 4 s), s = t / 1000: 5 * 0.75 / 4 = 0.9375, 2.5 / 3, 1.25 / 2.
SHIFTED_TIMESTEPS = [1000.0, 937.5, 833.3333, 625.0]


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
    assert fast.scheduler == LIGHTX2V_SCHEDULE
    plain = draft_settings(settings, fast_lora=False)
    assert (plain.num_inference_steps, plain.guidance_scale, plain.lora_weights, plain.scheduler) == (20, 3.0, {}, None)
    assert settings.num_inference_steps == 20 and settings.scheduler is None  # the job's own settings are not changed


def test_apply_preset_sets_the_schedule_steps_guidance_and_weight():
    job = GenerationSettings(num_inference_steps=12, guidance_scale=2.5, seed=3, lora_weights={"style": 0.5}, step_cache="first_block")
    fast = apply_preset(job, PRESETS["fast"], fast_lora_loaded=True)
    assert (fast.num_inference_steps, fast.guidance_scale, fast.seed, fast.step_cache) == (4, 1.0, 3, "none")
    assert fast.lora_weights == {"style": 0.5, FAST_ADAPTER: 1.0}
    assert fast.scheduler.denoising_timesteps == (1000, 750, 500, 250) and fast.scheduler.shift == 5
    fast.check()
    # Quality after fast: the model's own scheduler, the job's steps and guidance, the few-step adapter off.
    quality = apply_preset(fast, PRESETS["quality"], fast_lora_loaded=True)
    assert (quality.scheduler, quality.lora_weights) == (None, {"style": 0.5, FAST_ADAPTER: 0.0})
    quality = apply_preset(job, PRESETS["quality"], fast_lora_loaded=True)
    assert (quality.num_inference_steps, quality.guidance_scale, quality.step_cache) == (12, 2.5, "first_block")
    with pytest.raises(WanAnimateError, match="few-step LoRA"):
        apply_preset(job, PRESETS["fast"], fast_lora_loaded=False)
    # The distilled LoRA runs only its trained timesteps.
    with pytest.raises(WanAnimateError, match="exactly 4 steps"):
        GenerationSettings(num_inference_steps=6, scheduler=LIGHTX2V_SCHEDULE).check()


def test_fast_schedule_gives_lightx2vs_timesteps():
    scheduler = LIGHTX2V_SCHEDULE.build(torch.Generator().manual_seed(0))
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == pytest.approx(SHIFTED_TIMESTEPS, abs=1e-3)
    assert scheduler.sigmas.tolist() == pytest.approx([t / 1000 for t in SHIFTED_TIMESTEPS] + [0.0], abs=1e-6)
    with pytest.raises(ValueError, match="exactly the 4 timesteps"):
        scheduler.set_timesteps(20)


def test_fast_schedule_steps_are_lcm_steps_renoised_from_the_job_generator():
    """Each step predicts the clean latent x0 = x - sigma * v and re-noises it to the next sigma (lightx2v)."""
    scheduler = LIGHTX2V_SCHEDULE.build(torch.Generator().manual_seed(5))
    scheduler.set_timesteps(4)
    sample = torch.full((1, 2, 1, 2, 2), 3.0)
    velocity = torch.full((1, 2, 1, 2, 2), 0.5)
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(5))
    stepped = scheduler.step(velocity, scheduler.timesteps[0], sample, return_dict=False)[0]
    # sigma 1 -> x0 = 3 - 0.5 = 2.5; next sigma 0.9375.
    torch.testing.assert_close(stepped, (1 - 0.9375) * 2.5 + 0.9375 * noise)
    for t in scheduler.timesteps[1:3]:
        stepped = scheduler.step(velocity, t, stepped, return_dict=False)[0]
    last = scheduler.step(velocity, scheduler.timesteps[3], stepped, return_dict=False)[0]
    torch.testing.assert_close(last, stepped - 0.625 * velocity)  # the last step returns x0, no noise


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
    # 77 frames: one segment of 20 steps at 12.8 s, plus 16.125 s around them (64.5 s outside the steps of a 4-segment
    # 720p clip on the H200), plus the load margin (benchmarks/RESULTS.md, section 6).
    assert estimate_generation_seconds(77, "720p", quality) == pytest.approx(20 * 12.8 + 16.125 + MODEL_LOAD_SECONDS)
    # 150 frames with overlap 1: segments cover 77 + 76 frames, so two segments.
    assert estimate_generation_seconds(150, "720p", quality, include_load=False) == pytest.approx(2 * (20 * 12.8 + 16.125))
    assert estimate_generation_seconds(77, "480p", quality, include_load=False) == pytest.approx(20 * 3.6 + 7.1875)
    cfg = GenerationSettings(num_inference_steps=20, guidance_scale=2.0)
    assert estimate_generation_seconds(77, "480p", cfg, include_load=False) == pytest.approx(20 * 3.6 * 2 + 7.1875)
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


# -- the fast LoRA by repo id from the hub cache, and jobs on one pipeline ----------------------------------


def _kijai_fast_lora(transformer: torch.nn.Module, rank: int = 4) -> dict[str, torch.Tensor]:
    """A tiny LoRA in the key format of Kijai's lightx2v files: per Linear of every block under
    ``diffusion_model.``, ``lora_down`` / ``lora_up`` (no alpha: scale 1) and a bias diff ``diff_b``, plus the
    all-zero normalisation diffs (``norm3.diff``, ``cross_attn.norm_k_img.diff``) those files carry."""
    generator = torch.Generator().manual_seed(11)
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    state_dict = {}
    for block in range(len(transformer.blocks)):
        for original, diffusers_name in BLOCK_MODULE_MAP.items():
            linear = transformer.get_submodule(f"blocks.{block}.{diffusers_name}")
            stem = f"diffusion_model.blocks.{block}.{original}"
            state_dict[f"{stem}.lora_down.weight"] = torch.randn(rank, linear.in_features, generator=generator) * 0.1
            state_dict[f"{stem}.lora_up.weight"] = torch.randn(linear.out_features, rank, generator=generator) * 0.1
            state_dict[f"{stem}.diff_b"] = torch.randn(linear.out_features, generator=generator) * 0.1
        for norm in ("norm3", "cross_attn.norm_k_img"):
            state_dict[f"diffusion_model.blocks.{block}.{norm}.diff"] = torch.zeros(width)
    return state_dict


def _offline_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache folder, used with the hub offline (no request leaves the machine).

    huggingface_hub reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into its constants when it is imported, so the
    constants are patched as well as the environment.
    """
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def _cache_hub_file(cache, repo_id: str, file_name: str, state_dict: dict[str, torch.Tensor]):
    """Store ``file_name`` of ``repo_id`` as the hub's cache does after a download of ``main``.

    Layout: ``models--{org}--{name}/refs/main`` holds the commit hash, ``snapshots/{commit}/{file_name}`` the
    file; offline, huggingface_hub finds ``main``'s commit through ``refs`` and returns the snapshot file.
    """
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    path = repo / "snapshots" / commit / file_name
    path.parent.mkdir(parents=True)
    save_file(state_dict, str(path))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return path


def _transformer_only_pipeline():
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

    from wan_animate.demo.checkpoint import tiny_transformer_config

    torch.manual_seed(0)
    transformer = WanAnimateTransformer3DModel(**tiny_transformer_config()).eval()
    return WanAnimatePipeline(
        tokenizer=None, text_encoder=None, vae=None, scheduler=None, image_processor=None, image_encoder=None,
        transformer=transformer,
    )


def test_fast_lora_loads_by_repo_id_and_file_from_the_hub_cache(tmp_path, monkeypatch):
    pipe = _transformer_only_pipeline()
    cache = _offline_hub_cache(tmp_path, monkeypatch)
    with pytest.raises(WanAnimateError, match="Kijai/WanVideo_comfy"):  # offline, and nothing cached yet
        ensure_fast_lora(pipe)
    state_dict = _kijai_fast_lora(pipe.transformer)
    path = _cache_hub_file(cache, KIJAI_REPO, KIJAI_FILE, state_dict)
    assert resolve_lora_file(KIJAI_REPO, KIJAI_FILE) == path
    base = pipe.transformer.get_submodule("blocks.1.attn1.to_q")
    weight, bias = base.weight.detach().clone(), base.bias.detach().clone()

    ensure_fast_lora(pipe)  # the default: DEFAULT_FAST_LORA, by repo id and file name
    ensure_fast_lora(pipe)  # loaded once
    assert pipe.get_list_adapters() == {"transformer": [FAST_ADAPTER]}
    assert active_lora_weights(pipe) == {}  # loaded switched off

    set_lora_weights(pipe, preset_lora_weights(PRESETS["fast"], fast_lora_loaded=True))
    assert active_lora_weights(pipe) == pytest.approx({FAST_ADAPTER: 1.0})
    stem = "diffusion_model.blocks.1.self_attn.q"
    delta = state_dict[f"{stem}.lora_up.weight"] @ state_dict[f"{stem}.lora_down.weight"]
    expected_bias = bias + state_dict[f"{stem}.diff_b"]
    probe = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the LoRA layer that now stands in for the Linear
        actual = pipe.transformer.get_submodule("blocks.1.attn1.to_q")(probe)
    torch.testing.assert_close(actual, F.linear(probe, weight + delta, expected_bias), rtol=1e-4, atol=1e-5)


def _conditioning(frames: int = 5) -> Conditioning:
    rng = np.random.default_rng(1)
    return Conditioning(
        mode="animate",
        reference_image=rng.integers(0, 255, (40, 40, 3), dtype=np.uint8),
        pose_frames=rng.integers(0, 255, (frames, 32, 32, 3), dtype=np.uint8),
        face_frames=rng.integers(0, 255, (frames, 512, 512, 3), dtype=np.uint8),
        fps=10.0,
    )


def test_fast_job_then_quality_job_on_one_pipeline(tmp_path, monkeypatch):
    """Fast: 4 steps at lightx2v's timesteps with the LoRA on; quality afterwards: the model's own 20 steps,
    LoRA off, and the same video as a quality job before the fast one (nothing leaks between jobs)."""
    from wan_animate.demo.checkpoint import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    _cache_hub_file(_offline_hub_cache(tmp_path, monkeypatch), KIJAI_REPO, KIJAI_FILE, _kijai_fast_lora(pipe.transformer))
    ensure_fast_lora(pipe)
    own = pipe.scheduler
    conditioning = _conditioning()
    job = GenerationSettings(seed=0, segment_frames=5, relight=False)
    calls = []

    def record(module, args, kwargs):
        calls.append((float(kwargs["timestep"][0]), type(pipe.scheduler).__name__, active_lora_weights(pipe)))

    def run(preset: str) -> tuple[np.ndarray, list]:
        calls.clear()
        frames = generate(pipe, conditioning, apply_preset(job, PRESETS[preset], fast_lora_loaded=True)).frames
        return frames, list(calls)

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        quality_before, _ = run("quality")
        fast, fast_calls = run("fast")
        fast_again, _ = run("fast")
        quality_after, quality_calls = run("quality")
    finally:
        handle.remove()

    assert [t for t, _, _ in fast_calls] == pytest.approx(SHIFTED_TIMESTEPS, abs=1e-3)
    assert {name for _, name, _ in fast_calls} == {"FixedStepFlowMatchLCMScheduler"}
    assert all(weights == pytest.approx({FAST_ADAPTER: 1.0}) for _, _, weights in fast_calls)
    assert np.array_equal(fast, fast_again)  # re-noising draws from the job's seed
    assert not np.array_equal(fast, quality_before)

    reference = type(own).from_config(own.config)
    reference.set_timesteps(20)
    assert own.config.flow_shift == 5.0 and pipe.scheduler is own
    assert [t for t, _, _ in quality_calls] == pytest.approx(reference.timesteps.tolist())
    assert {name for _, name, _ in quality_calls} == {"UniPCMultistepScheduler"}
    assert all(weights == {} for _, _, weights in quality_calls)
    assert np.array_equal(quality_after, quality_before)
