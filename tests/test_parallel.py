"""Context parallelism over two CPU processes (gloo) gives what one process gives.

Two processes are spawned on localhost. Each builds the same tiny transformer and pipeline, computes the
single-process results first, then enables context parallelism and compares:

* plain transformer forwards, with token counts that split evenly and unevenly over the two ranks, and
  with shares that end in the middle of a latent frame (which is what the face adapter hook is for);
* a LoRA on ``proj_out`` added after parallelism was enabled (the output gather must move onto it);
* the same plan without the face-adapter hook, which must NOT match (so the comparison can fail);
* the leader/follower protocol: rank 0 shares Animation and Replacement jobs and generates, rank 1 runs
  `run_follower`; rank 0's frames equal the single-process frames, a job stopped after one of its two
  segments goes on from rank 0's checkpoint on both ranks to the single-process video, and a cancel on
  rank 0 stops both.
"""

from __future__ import annotations

import copy
import os
import queue
import socket
import tempfile
import threading
import traceback
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tests.test_generate import make_conditioning
from wan_animate.parallel import ContextParallelOptions, frame_window, token_span

WORLD_SIZE = 2
PROCESS_TIMEOUT = 240  # seconds; a hung collective must fail the test, not hang it
FORWARD_TOLERANCE = 1e-5  # fp32; the split only reorders sums inside attention
FRAMES = 5  # one 5-frame segment: 2 latent frames + the reference frame
HEIGHT = WIDTH = 32  # 4 x 4 latents, 2 x 2 = 4 tokens per frame, 12 tokens, 6 per rank (1.5 frames)


def test_token_span_follows_the_sharders():
    assert token_span(72, 2, 0, any_length=False) == (0, 36)
    assert token_span(72, 2, 1, any_length=False) == (36, 72)
    # tensor_split: the first (45 % 2) ranks take one more.
    assert [token_span(45, 2, r, any_length=True) for r in range(2)] == [(0, 23), (23, 45)]
    assert [token_span(10, 4, r, any_length=True) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert torch.arange(10).tensor_split(4)[2].tolist() == list(range(6, 8))


def test_uneven_tokens_need_any_length():
    from wan_animate.errors import WanAnimateError

    with pytest.raises(WanAnimateError, match="any_length=True"):
        token_span(45, 2, 0, any_length=False)


def test_frame_window_pads_to_whole_frames():
    # 24 tokens per frame; tokens 36..72 = the second half of frame 1 and all of frame 2.
    assert frame_window(36, 72, 24) == (1, 3, 12, 0)
    assert frame_window(0, 36, 24) == (0, 2, 0, 12)
    assert frame_window(23, 45, 15) == (1, 3, 8, 0)
    assert frame_window(48, 72, 24) == (2, 3, 0, 0)


def test_options_from_the_environment():
    assert ContextParallelOptions.from_environment({}) == ContextParallelOptions(ring_degree=1, any_length=True)
    options = ContextParallelOptions.from_environment(
        {"WAN_ANIMATE_RING_DEGREE": "2", "WAN_ANIMATE_CP_ANY_LENGTH": "0", "WAN_ANIMATE_CP_ATTENTION_BACKEND": "_native_cudnn"}
    )
    assert options == ContextParallelOptions(ring_degree=2, any_length=False, attention_backend="_native_cudnn")


def test_split_of_the_gpus():
    from wan_animate.errors import WanAnimateError
    from wan_animate.parallel import _context_parallel_config

    eight = _context_parallel_config(8, 40, ContextParallelOptions())
    assert (eight.ulysses_degree, eight.ring_degree, eight.ulysses_anything) == (8, 1, True)
    mixed = _context_parallel_config(8, 40, ContextParallelOptions(ring_degree=2))
    assert (mixed.ulysses_degree, mixed.ring_degree, mixed.ulysses_anything, mixed.ring_anything) == (4, 2, False, False)
    with pytest.raises(WanAnimateError, match="must divide the number of GPUs"):
        _context_parallel_config(8, 40, ContextParallelOptions(ring_degree=3))
    with pytest.raises(WanAnimateError, match="heads to divide by 3"):
        _context_parallel_config(3, 40, ContextParallelOptions(any_length=False))


def test_single_process_share_job_only_draws_the_seed():
    from wan_animate.generate import GenerationSettings
    from wan_animate.parallel import share_job

    conditioning = _conditioning("animate")
    progress, cancel = (lambda *call: None), threading.Event()
    job = share_job(None, conditioning, GenerationSettings(seed=None), progress=progress, cancel=cancel)
    assert job.progress is progress and job.cancel is cancel
    assert 0 <= job.settings.seed < 2**31
    assert share_job(None, conditioning, GenerationSettings(seed=5)).settings.seed == 5


def test_share_job_refuses_a_step_cache_with_several_processes():
    from wan_animate.errors import WanAnimateError
    from wan_animate.generate import GenerationSettings
    from wan_animate.parallel import ParallelContext, share_job

    # Refused before anything is sent: the context has no group to send on.
    several = ParallelContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), control_group=None)
    with pytest.raises(WanAnimateError, match="step cache cannot be used with several GPUs"):
        share_job(several, _conditioning("animate"), GenerationSettings(step_cache="first_block"))


# -- Two processes ------------------------------------------------------------------------------------


def _transformer_inputs(height: int, width: int, seed: int = 0) -> dict:
    from wan_animate.demo.checkpoint import CLIP_DIM, TEXT_DIM, tiny_transformer_config

    face_size = tiny_transformer_config()["motion_encoder_size"]
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    latent_frames = (FRAMES - 1) // 4 + 1
    return dict(
        hidden_states=randn(1, 36, latent_frames + 1, height, width),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=randn(1, 512, TEXT_DIM),
        encoder_hidden_states_image=randn(1, 5, CLIP_DIM),
        pose_hidden_states=randn(1, 16, latent_frames, height, width),
        face_pixel_values=randn(1, 3, FRAMES, face_size, face_size).clamp(-1, 1),
        return_dict=False,
    )


def _tiny_transformer():
    from diffusers import WanAnimateTransformer3DModel

    from wan_animate.demo.checkpoint import tiny_transformer_config

    torch.manual_seed(0)
    return WanAnimateTransformer3DModel(**tiny_transformer_config()).eval()


def _add_lora(transformer) -> None:
    """A LoRA with random (non-zero) A and B on the output projection and the self-attention."""
    from peft import LoraConfig

    torch.manual_seed(1)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["proj_out", "attn1.to_q"], init_lora_weights=False)
    transformer.add_adapter(config, adapter_name="test")


def _max_difference(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output - reference).abs().max())


@torch.no_grad()
def _check_transformer(report: dict) -> None:
    from wan_animate.parallel import context_parallel_plan, enable_context_parallel

    # 8 x 12 latents: 24 tokens per frame, 72 tokens, 36 per rank: each share ends inside frame 1.
    even = _transformer_inputs(8, 12)
    model = _tiny_transformer()
    reference = model(**even)[0]
    with_lora = copy.deepcopy(model)
    _add_lora(with_lora)
    reference_lora = with_lora(**even)[0]
    report["lora_changes_output"] = _max_difference(reference_lora, reference)
    enable_context_parallel(model, ContextParallelOptions(any_length=False))
    seen = {"attention": [], "face_adapter": []}
    model.blocks[0].attn1.register_forward_pre_hook(lambda module, args: seen["attention"].append(args[0].shape[1]))
    model.face_adapter[0].to_q.register_forward_pre_hook(lambda module, args: seen["face_adapter"].append(args[0].shape[1]))
    report["even"] = _max_difference(model(**even)[0], reference)
    report["tokens_seen"] = seen
    _add_lora(model)  # PEFT wraps proj_out now, after the gather hook was placed
    report["even_lora_after_enable"] = _max_difference(model(**even)[0], reference_lora)
    model.unload_lora()  # PEFT puts the plain proj_out back
    report["even_lora_unloaded"] = _max_difference(model(**even)[0], reference)

    # 6 x 10 latents: 15 tokens per frame, 45 tokens: 23 and 22 per rank.
    uneven = _transformer_inputs(6, 10, seed=1)
    model = _tiny_transformer()
    reference = model(**uneven)[0]
    enable_context_parallel(model, ContextParallelOptions(any_length=True))
    report["uneven"] = _max_difference(model(**uneven)[0], reference)
    report["uneven_again"] = _max_difference(model(**uneven)[0], reference)  # hooks hold no stale state

    # diffusers' machinery with the plan alone (no face-adapter hook): the face adapter pairs tokens with
    # the wrong frames' motion, so the result must differ. This shows the comparisons above can fail.
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ContextParallelOutput

    from wan_animate.parallel import _cpu_only_device_count

    model = _tiny_transformer()
    reference = model(**even)[0]
    plan = {**context_parallel_plan(), "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3)}
    with _cpu_only_device_count():
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD_SIZE), cp_plan=plan)
    try:
        report["without_face_hook"] = _max_difference(model(**even)[0], reference)
    except Exception as error:  # the face attention may also fail outright: equally "not equal"
        report["without_face_hook"] = repr(error)


def _conditioning(mode: str, frames: int = FRAMES):
    return make_conditioning(mode, frames)


def _check_pipeline(parallel, report: dict) -> None:
    from wan_animate.demo.checkpoint import build_tiny_pipeline
    from wan_animate.errors import GenerationCancelled
    from wan_animate.generate import GenerationSettings, generate, generate_video
    from wan_animate.parallel import enable_context_parallel, run_follower, share_job
    from wan_animate.video import read_video

    pipeline = build_tiny_pipeline(seed=0)
    if parallel.is_follower:
        report["jobs_completed"] = run_follower(parallel, lambda: pipeline)
        return

    settings = GenerationSettings(num_inference_steps=2, segment_frames=5, seed=3, relight=False)
    references = {mode: generate(pipeline, _conditioning(mode), settings).frames for mode in ("animate", "replace")}
    scratch = Path(tempfile.mkdtemp())
    two_segments = _conditioning("animate", frames=9)
    whole = read_video(generate_video(pipeline, two_segments, scratch / "whole.mp4", settings).video_path, fps=None).frames
    tokens_seen = set()
    for mode in ("animate", "replace"):
        calls = []
        job = share_job(parallel, _conditioning(mode), settings, progress=lambda *call: calls.append(call[2].split(" · ")[1]))
        enable_context_parallel(pipeline, parallel.options)
        if not tokens_seen:
            pipeline.transformer.blocks[0].attn1.register_forward_pre_hook(lambda module, args: tokens_seen.add(args[0].shape[1]))
        frames = generate(pipeline, _conditioning(mode), job.settings, progress=job.progress, cancel=job.cancel).frames
        report[f"{mode}_frames"] = int(np.abs(frames.astype(int) - references[mode].astype(int)).max())
        report[f"{mode}_progress"] = calls
    report["pipeline_tokens_seen"] = tokens_seen

    # Stopped after one of two segments, then resumed with no seed: every rank starts from the checkpoint.
    state = scratch / "state"
    job = share_job(parallel, two_segments, settings, state_dir=state, max_segments=1)
    first = generate_video(pipeline, two_segments, scratch / "out.mp4", job.settings, progress=job.progress, cancel=job.cancel, state_dir=state, max_segments=1)
    job = share_job(parallel, two_segments, replace(settings, seed=None), state_dir=state)
    rest = generate_video(pipeline, two_segments, scratch / "out.mp4", job.settings, progress=job.progress, cancel=job.cancel, state_dir=state)
    report["resumed"] = (first.segments_done, rest.segments_done, job.settings.seed)
    resumed = read_video(rest.video_path, fps=None).frames
    report["resumed_frames"] = float(np.abs(resumed.astype(int) - whole.astype(int)).mean()) if resumed.shape == whole.shape else resumed.shape

    # A job without a seed gets one drawn by the leader; the leader's cancel after step 1 stops both ranks.
    cancel = threading.Event()
    job = share_job(parallel, _conditioning("animate"), replace(settings, seed=None), progress=lambda *call: cancel.set(), cancel=cancel)
    report["seed_drawn"] = job.settings.seed is not None
    try:
        generate(pipeline, _conditioning("animate"), job.settings, progress=job.progress, cancel=job.cancel)
        report["cancelled"] = False
    except GenerationCancelled:
        report["cancelled"] = True


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE)
    )
    torch.set_num_threads(1)
    report: dict = {"rank": rank}
    try:
        from wan_animate.parallel import init_distributed, shutdown

        parallel = init_distributed(timeout=timedelta(seconds=PROCESS_TIMEOUT))
        report["world_size"] = parallel.world_size
        _check_transformer(report)
        _check_pipeline(parallel, report)
        shutdown(parallel)
    except Exception:
        report["error"] = traceback.format_exc()
    results.put(report)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def reports() -> dict[int, dict]:
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    workers = [context.Process(target=_worker, args=(rank, port, results)) for rank in range(WORLD_SIZE)]
    with pytest.MonkeyPatch.context() as patch:
        # CPU processes even on a GPU machine: hidden before the children import torch.
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        for worker in workers:
            worker.start()
    collected = {}
    try:
        for _ in workers:
            report = results.get(timeout=PROCESS_TIMEOUT)
            collected[report["rank"]] = report
    except queue.Empty:
        pass
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    assert set(collected) == set(range(WORLD_SIZE)), f"workers did not report in time: got {sorted(collected)}"
    for report in collected.values():
        assert "error" not in report, f"rank {report['rank']} failed:\n{report['error']}"
    return collected


@pytest.mark.parametrize("rank", range(WORLD_SIZE))
def test_split_transformer_equals_one_process(reports, rank):
    report = reports[rank]
    assert report["world_size"] == WORLD_SIZE
    assert report["even"] < FORWARD_TOLERANCE
    assert report["uneven"] < FORWARD_TOLERANCE
    assert report["uneven_again"] < FORWARD_TOLERANCE
    # The split is real: in the three forwards (before, with and after the LoRA) each rank's blocks see half of the 72
    # tokens (1.5 frames of 24), and its face adapter sees them padded to 2 whole frames.
    assert report["tokens_seen"] == {"attention": [36, 36, 36], "face_adapter": [48, 48, 48]}


@pytest.mark.parametrize("rank", range(WORLD_SIZE))
def test_lora_on_proj_out_added_after_enabling(reports, rank):
    assert reports[rank]["lora_changes_output"] > 1e-3  # the LoRA matters ...
    assert reports[rank]["even_lora_after_enable"] < FORWARD_TOLERANCE  # ... and is applied to all tokens
    assert reports[rank]["even_lora_unloaded"] < FORWARD_TOLERANCE


@pytest.mark.parametrize("rank", range(WORLD_SIZE))
def test_plan_without_face_hook_differs(reports, rank):
    difference = reports[rank]["without_face_hook"]
    assert isinstance(difference, str) or difference > 1e-3


def test_leader_and_follower_generate_the_single_process_frames(reports):
    leader, follower = reports[0], reports[1]
    for mode in ("animate", "replace"):
        # uint8 frames: float noise of ~1e-6 may flip a rounding
        assert leader[f"{mode}_frames"] <= 1, mode
        assert leader[f"{mode}_progress"] == ["encoding", "step 1/2", "step 2/2", "decoding", "writing the video", "done"]
    # 32 x 32 frames: 4 tokens per latent frame, 3 frames, 6 tokens per rank.
    assert leader["pipeline_tokens_seen"] == {6}
    assert leader["cancelled"] is True
    assert leader["seed_drawn"] is True
    assert leader["resumed"] == (1, 2, 3)
    assert leader["resumed_frames"] < 0.5  # H.264 of frames equal to +-1 level
    # Animation, Replacement and the two calls of the resumed job; the cancelled job does not count.
    assert follower["jobs_completed"] == 4
