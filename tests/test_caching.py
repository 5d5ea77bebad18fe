"""Step caches on the tiny Animate transformer: blocks really skipped, cached steps equal their definition,
face adapters not counted twice, state reset per segment, exact restore when turned off, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import WanAnimateTransformer3DModel
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.models.transformers.transformer_wan_animate import WanTransformerBlock

from wan_animate.demo.checkpoint import tiny_transformer_config
from wan_animate.caching import (
    STEP_CACHES,
    active_step_cache,
    disable_step_cache,
    enable_step_cache,
    mag_calibration_ratios,
    register_animate_blocks,
)
from wan_animate.conditioning import Conditioning
from wan_animate.errors import WanAnimateError
from wan_animate.generate import GenerationSettings, generate
from wan_animate.models import load_pipeline

FRAMES, HEIGHT, WIDTH = 3, 8, 8  # latent frames incl. the reference frame; latent size
STEPS = (900.0, 800.0, 700.0)

# Caches that skip every step they may: FirstBlockCache whatever block 0 does, MagCache from its second step
# (ratios of exactly 1 = "nothing changes", retention 0), TaylorSeer after two computed steps.
FORCED = {
    "first_block": {"threshold": 1e9},
    "mag": {
        "num_inference_steps": len(STEPS),
        "mag_ratios": [1.0] * len(STEPS),
        "retention_ratio": 0.0,
        "threshold": 1.0,
        "max_skip_steps": 100,
    },
    "taylorseer": {"disable_cache_before_step": 2, "cache_interval": 100, "max_order": 1},
}


@pytest.fixture
def transformer() -> WanAnimateTransformer3DModel:
    """Four blocks with a face adapter after blocks 0 and 2: block 0 = head, 1-2 skippable, 3 = tail."""
    torch.manual_seed(0)
    config = {**tiny_transformer_config(), "num_layers": 4, "inject_face_latents_blocks": 2}
    return WanAnimateTransformer3DModel(**config).eval()


def step_inputs(timestep: float, seed: int = 1) -> dict:
    """Transformer inputs of one step; the latents depend on ``seed``, the conditioning does not."""
    latents = torch.randn(1, 36, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))
    fixed = torch.Generator().manual_seed(0)
    return {
        "hidden_states": latents,
        "timestep": torch.tensor([timestep]),
        "encoder_hidden_states": torch.randn(1, 8, 32, generator=fixed),
        "encoder_hidden_states_image": torch.randn(1, 4, 16, generator=fixed),
        "pose_hidden_states": torch.randn(1, 16, FRAMES - 1, HEIGHT, WIDTH, generator=fixed),
        "face_pixel_values": torch.rand(1, 3, 4 * (FRAMES - 2) + 1, 32, 32, generator=fixed) * 2 - 1,
        "return_dict": False,
    }


def run(model, timestep: float, seed: int = 1, context: str = "cond") -> torch.Tensor:
    with torch.no_grad(), model.cache_context(context):
        return model(**step_inputs(timestep, seed))[0]


class Computed:
    """Counts real computation: forward calls of each block's feed-forward and each face adapter's query.

    Hooks on the blocks themselves would fire even on skipped steps (PyTorch calls them around the hooked
    ``forward``); the submodules inside only run when the block really computes.
    """

    def __init__(self, model: WanAnimateTransformer3DModel) -> None:
        self.blocks = [0] * len(model.blocks)
        self.adapters = [0] * len(model.face_adapter)
        for i, block in enumerate(model.blocks):
            block.ffn.register_forward_pre_hook(lambda *_, i=i: self.blocks.__setitem__(i, self.blocks[i] + 1))
        for k, adapter in enumerate(model.face_adapter):
            adapter.to_q.register_forward_pre_hook(lambda *_, k=k: self.adapters.__setitem__(k, self.adapters[k] + 1))


def capture(module: torch.nn.Module, store: list, *, inputs: bool = False) -> None:
    """Append what ``module`` receives (first positional input) or returns at every call."""
    if inputs:
        module.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach().clone()))
    else:
        module.register_forward_hook(lambda _m, _a, out: store.append(out.detach().clone()))


def hook_names(model: torch.nn.Module) -> list[str]:
    """Names of the diffusers hooks on ``model`` and its submodules."""
    names = []
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            names.extend(registry.hooks)
    return names


def test_the_animate_block_is_registered_once_with_its_output_layout():
    register_animate_blocks()
    register_animate_blocks()  # idempotent
    metadata = TransformerBlockRegistry.get(WanTransformerBlock)
    assert metadata.return_hidden_states_index == 0
    assert metadata.return_encoder_hidden_states_index is None
    assert STEP_CACHES == ("none", "first_block", "mag", "taylorseer")


def test_first_block_hit_is_block0_output_plus_cached_residual_without_face_adapters_again(transformer):
    reference = [run(transformer, t) for t in STEPS[:2]]
    enable_step_cache(transformer, "first_block", **FORCED["first_block"])
    computed = Computed(transformer)
    head_out, tail_out, stack_out = [], [], []
    capture(transformer.blocks[0], head_out)
    capture(transformer.blocks[-1], tail_out)
    capture(transformer.norm_out, stack_out, inputs=True)

    first = run(transformer, STEPS[0])
    assert torch.equal(first, reference[0])  # a computed step is the uncached computation, bit for bit
    assert computed.blocks == [1, 1, 1, 1] and computed.adapters == [1, 1]

    cached = run(transformer, STEPS[1])
    # Only block 0 ran; blocks 1-3 and both face adapters were skipped.
    assert computed.blocks == [2, 1, 1, 1] and computed.adapters == [1, 1]
    assert not torch.allclose(cached, reference[1], atol=1e-3)  # it is an approximation, not a recomputation

    # By hand: block 0's true output at step 2 + (tail output - block 0 output) of step 1.
    residual = tail_out[0] - head_out[0]
    disable_step_cache(transformer)
    true_head = []
    capture(transformer.blocks[0], true_head)
    run(transformer, STEPS[1])
    expected_hidden = true_head[-1] + residual
    torch.testing.assert_close(stack_out[1], expected_hidden, rtol=0, atol=1e-6)

    # The whole output: the uncached model with its block stack's result replaced by that value.
    handle = transformer.blocks[-1].register_forward_hook(lambda *_: expected_hidden)
    expected = run(transformer, STEPS[1])
    handle.remove()
    torch.testing.assert_close(cached, expected, rtol=0, atol=1e-6)


def test_mag_hit_is_block0_input_plus_cached_residual(transformer):
    reference = run(transformer, STEPS[0])
    enable_step_cache(transformer, "mag", **FORCED["mag"])
    computed = Computed(transformer)
    head_in, tail_out, stack_out = [], [], []
    capture(transformer.blocks[0], head_in, inputs=True)
    capture(transformer.blocks[-1], tail_out)
    capture(transformer.norm_out, stack_out, inputs=True)

    assert torch.equal(run(transformer, STEPS[0]), reference)
    run(transformer, STEPS[1])
    assert computed.blocks == [1, 1, 1, 1] and computed.adapters == [1, 1]  # nothing ran at step 2

    expected_hidden = head_in[1] + (tail_out[0] - head_in[0])
    torch.testing.assert_close(stack_out[1], expected_hidden, rtol=0, atol=1e-6)


def test_taylorseer_predicts_the_output_by_linear_extrapolation(transformer):
    reference = [run(transformer, t) for t in STEPS[:2]]
    enable_step_cache(transformer, "taylorseer", **FORCED["taylorseer"])
    computed = Computed(transformer)
    outputs = [run(transformer, t) for t in STEPS]

    assert torch.equal(outputs[0], reference[0]) and torch.equal(outputs[1], reference[1])
    assert computed.blocks == [2, 2, 2, 2]  # the third step computed no block
    # First-order Taylor step of one: out_2 = out_1 + (out_1 - out_0); the output head is linear after proj_out.
    torch.testing.assert_close(outputs[2], 2 * outputs[1] - outputs[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["first_block", "mag", "taylorseer"])
def test_every_denoising_loop_starts_from_a_fresh_cache(transformer, name):
    options = dict(FORCED[name])
    if name == "mag":
        options.update(num_inference_steps=20, mag_ratios=[1.0] * 20)  # MagCache alone would only reset at 20
    enable_step_cache(transformer, name, **options)
    computed = Computed(transformer)
    loops, counts = [], []
    for _segment in range(2):
        loops.append([run(transformer, t, seed=s) for s, t in enumerate(STEPS)])
        counts.append(list(computed.blocks))
    # The second loop (next segment) repeats the first exactly: its first steps were computed, not cached.
    for first, again in zip(*loops):
        assert torch.equal(first, again)
    assert counts[1] == [2 * count for count in counts[0]]


def test_guidance_contexts_keep_their_own_state_and_reset_together(transformer):
    enable_step_cache(transformer, "first_block", **FORCED["first_block"])
    tail = []
    transformer.blocks[-1].ffn.register_forward_pre_hook(lambda *_: tail.append(len(calls)))
    calls = []
    for _segment in range(2):
        for t in STEPS[:2]:
            for context in ("cond", "uncond"):
                calls.append(context)
                run(transformer, t, context=context)
    # Per segment: both contexts compute their first step and reuse it at the second.
    assert tail == [1, 2, 5, 6]


def test_turning_the_cache_off_restores_the_uncached_model_exactly(transformer):
    reference = [run(transformer, t) for t in STEPS]
    for name in ("first_block", "mag", "taylorseer"):
        enable_step_cache(transformer, name, **FORCED[name])
        assert active_step_cache(transformer) == name
        cached = [run(transformer, t) for t in STEPS]
        assert not torch.equal(cached[2], reference[2])
        enable_step_cache(transformer, "none")
        assert active_step_cache(transformer) == "none"
        assert not transformer.is_cache_enabled
        assert hook_names(transformer) == []
        for t, expected in zip(STEPS, reference):
            assert torch.equal(run(transformer, t), expected)
    disable_step_cache(transformer)  # nothing on: does nothing


def test_switching_caches_leaves_only_the_new_ones_hooks(transformer):
    enable_step_cache(transformer, "first_block")
    assert "wan_animate_step_cache_face_adapter" in hook_names(transformer.face_adapter[0])
    enable_step_cache(transformer, "taylorseer")
    hooks = hook_names(transformer)
    assert active_step_cache(transformer) == "taylorseer"
    # Lite mode: the 4 blocks (skipped) and proj_out (predicted), plus the segment reset on the transformer.
    assert sorted(hooks) == sorted(["taylorseer_cache"] * 5 + ["wan_animate_step_cache"])
    assert hook_names(transformer.face_adapter[0]) == []


def test_caches_compose_with_group_offloading(transformer):
    expected = {}
    for name in ("first_block", "taylorseer"):
        enable_step_cache(transformer, name, **FORCED[name])
        expected[name] = [run(transformer, t) for t in STEPS]
    disable_step_cache(transformer)
    cpu = torch.device("cpu")
    transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
    for name in ("first_block", "taylorseer"):
        enable_step_cache(transformer, name, **FORCED[name])
        computed = Computed(transformer)
        outputs = [run(transformer, t) for t in STEPS]
        assert sum(computed.blocks[1:]) == (3 if name == "first_block" else 6)
        for output, wanted in zip(outputs, expected[name]):
            assert torch.equal(output, wanted)
        disable_step_cache(transformer)
    assert "group_offloading" in hook_names(transformer.blocks[1])  # offloading untouched


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("teacache", {}, "Unknown step cache 'teacache': use one of none, first_block, mag, taylorseer"),
        ("first_block", {"treshold": 0.1}, "has no option treshold: it takes threshold"),
        ("first_block", {"threshold": -1}, "threshold must be a number of at least 0"),
        ("none", {"threshold": 0.1}, "'none' takes no options"),
        ("mag", {"calibrate": True}, "needs num_inference_steps"),
        ("mag", {"num_inference_steps": 20}, "needs mag_ratios calibrated on the model"),
        ("mag", {"num_inference_steps": 20, "mag_ratios": [1.0, -0.5]}, "positive numbers"),
        ("taylorseer", {"disable_cache_before_step": 0}, "disable_cache_before_step must be a whole number of at least 1"),
        ("taylorseer", {"cache_interval": 2.5}, "cache_interval must be a whole number"),
        ("taylorseer", {"cache_identifiers": ["x"]}, "has no option cache_identifiers"),
    ],
)
def test_bad_names_and_options_are_refused_and_leave_the_model_uncached(transformer, name, options, message):
    reference = run(transformer, STEPS[0])
    with pytest.raises(WanAnimateError, match=message):
        enable_step_cache(transformer, name, **options)
    assert active_step_cache(transformer) == "none" and not transformer.is_cache_enabled
    assert torch.equal(run(transformer, STEPS[0]), reference)


def test_context_parallel_and_other_models_are_refused(transformer):
    transformer._parallel_config = object()  # what ModelMixin.enable_parallelism leaves set
    with pytest.raises(WanAnimateError, match="context parallelism"):
        enable_step_cache(transformer, "first_block")
    with pytest.raises(TypeError, match="WanAnimateTransformer3DModel"):
        enable_step_cache(torch.nn.Linear(2, 2), "first_block")


# -- through the pipeline, as the package runs it ----------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return load_pipeline(tiny_checkpoint, allow_cpu=True)


def two_segment_job() -> tuple[Conditioning, GenerationSettings]:
    rng = np.random.default_rng(1)
    conditioning = Conditioning(
        mode="animate",
        reference_image=rng.integers(0, 255, (40, 40, 3), dtype=np.uint8),
        pose_frames=rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8),
        face_frames=rng.integers(0, 255, (9, 512, 512, 3), dtype=np.uint8),
        fps=10.0,
    )
    return conditioning, GenerationSettings(num_inference_steps=2, segment_frames=5, seed=0, relight=False)


def test_a_two_segment_job_recomputes_each_segments_first_step(pipeline):
    transformer = pipeline.transformer
    conditioning, settings = two_segment_job()
    plain = generate(pipeline, conditioning, settings).frames
    calls: list[bool] = []
    hooks = [
        transformer.register_forward_pre_hook(lambda *_: calls.append(False)),
        transformer.blocks[-1].ffn.register_forward_pre_hook(lambda *_: calls.__setitem__(-1, True)),
    ]
    try:
        cached = dataclasses.replace(settings, step_cache="first_block", step_cache_options={"threshold": 1e9})
        generate(pipeline, conditioning, cached)
        assert calls == [True, False, True, False]  # 2 segments x 2 steps
        assert active_step_cache(transformer) == "none"  # the job's cache ends with the job

        calls.clear()
        assert np.array_equal(generate(pipeline, conditioning, settings).frames, plain)
        assert calls == [True] * 4
    finally:
        for handle in hooks:
            handle.remove()
        disable_step_cache(transformer)


def test_mag_calibration_computes_every_step_and_returns_ratios(pipeline):
    transformer = pipeline.transformer
    conditioning, settings = two_segment_job()
    plain = generate(pipeline, conditioning, settings).frames
    try:
        enable_step_cache(transformer, "mag", num_inference_steps=2, calibrate=True)
        assert mag_calibration_ratios(transformer) is None
        calibrated = generate(pipeline, conditioning, settings).frames
        ratios = mag_calibration_ratios(transformer)
    finally:
        disable_step_cache(transformer)
    assert np.array_equal(calibrated, plain)
    assert len(ratios) == 2 and ratios[0] == 1.0 and ratios[1] > 0 and ratios[1] != 1.0
    assert mag_calibration_ratios(transformer) is None
