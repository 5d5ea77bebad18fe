"""Several GPUs: context parallelism for the Animate transformer, and one process serving while the others follow.

One 77-frame segment at 720p is about 75 600 video tokens, and the transformer's self-attention over them is
most of the time of a step. Context parallelism splits those tokens over N GPUs: every GPU holds the whole
model, runs the linear layers on its 1/N of the tokens, and the self-attention exchanges what it needs
(Ulysses: an all-to-all from "my tokens, all heads" to "all tokens, my heads"; ring: the keys and values go
round). diffusers implements this (`ContextParallelConfig`, `ModelMixin.enable_parallelism`), but only for
models with a ``_cp_plan``; `WanAnimateTransformer3DModel` has none, so `context_parallel_plan` supplies it.

The plan follows diffusers' `WanTransformer3DModel._cp_plan` (split the rotary table and the tokens entering
the first block, gather after ``proj_out``; the text and image cross-attention stays local because every rank
has the whole context). Three parts need more than diffusers' plan format gives:

* The face adapter (after every 5th block) reshapes its queries to ``(frames, tokens per frame)`` and lets
  the tokens of latent frame f attend only to the motion tokens of frame f. A rank's equal share of the
  tokens does not start or end on a frame boundary (21 latent frames rarely divide by N), so
  `_FaceAdapterOnLocalTokensHook` pads the rank's tokens with zeros to whole frames, hands the adapter the
  motion tokens of just those frames, and drops the padding from the result. The adapter's attention then
  runs locally: it must not take part in the Ulysses exchange (its keys are not split over ranks).
* LoRA adapters (the relighting LoRA, ``head.head``) can wrap ``proj_out`` after parallelism was enabled;
  the gather must then sit on the wrapper, or the LoRA's update (local tokens) and the gathered base output
  (all tokens) do not add up. `_TransformerForwardHook` moves it before each forward.
* Token counts that do not divide by N (most aspect ratios at 8 GPUs): diffusers' gather for them calls
  ``all_gather`` with unequal shapes, which gloo refuses; `_GatherTokensHook` pads every share to the
  longest instead, so the same code runs over NCCL and over gloo on CPUs (the tests).

The pose patch tokens are added to the video tokens before the split, and the reference frame is simply
latent frame 0, so both need nothing.

Processes: started with ``torchrun --nproc-per-node N`` (or ``accelerate launch``), rank 0 runs the app or
the CLI as usual and the other ranks run `run_follower`. For each job rank 0 calls `share_job`, which sends
the job (conditioning and settings, seed drawn, and the state of a job resumed from its checkpoint) to the
followers; every rank then runs the same segment loop with the same inputs and seed (rank 0 through
`wan_animate.generate.generate_video` or `generate`, the others through `wan_animate.generate.follow_job`),
so their latents stay identical, and only rank 0 writes files. At every progress report (each phase and
each denoising step) rank 0 tells the followers whether to stop, so a cancellation (or an error in rank 0's
progress callback) stops all ranks at the same point.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers import ContextParallelConfig
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models._modeling_parallel import ContextParallelInput

from .caching import check_step_cache_split
from .checkpoint import Checkpoint
from .conditioning import Conditioning
from .errors import GenerationCancelled, WanAnimateError
from .generate import GenerationSettings, follow_job, load_checkpoint
from .progress import ProgressCallback

if TYPE_CHECKING:
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

logger = logging.getLogger("wan_animate")

OUTPUT_MODULE = "proj_out"
"""The last module that sees the tokens as a sequence; its output is gathered from all ranks."""
_GATHER_HOOK = "wan_animate_cp_gather"
_FACE_HOOK = "wan_animate_cp_face_adapter"
_FORWARD_HOOK = "wan_animate_cp_forward"

CONTROL_TIMEOUT = timedelta(days=365)
"""Followers wait for the next job on the control channel for as long as the app runs (gloo's collectives
would otherwise give up after the process group's timeout, 30 minutes by default)."""

# Attention backends whose forward cannot return the log-sum-exp that ring attention merges partial
# results with (diffusers' `_native_attention` raises on ``return_lse=True``).
_BACKENDS_WITHOUT_LSE = frozenset({"native", "_native_math", "_native_efficient"})


# -- The plan ----------------------------------------------------------------------------------------


def context_parallel_plan() -> dict[str, Any]:
    """The splitting part of the context-parallel plan of `WanAnimateTransformer3DModel` (diffusers' format).

    As in ``WanTransformer3DModel._cp_plan``: the rotary table ``(1, S, 1, D)`` is split along the tokens
    after it is computed, and the tokens ``(B, S, C)`` on entering the first block. ``timestep`` is not
    split (Animate's is one value per sample). The gather after ``proj_out`` and the face adapter are
    hooks added by `enable_context_parallel` (see the module docstring for why).
    """
    rotary = ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)
    return {
        "rope": {0: rotary, 1: rotary},
        "blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
    }


def token_span(total_tokens: int, world_size: int, rank: int, any_length: bool) -> tuple[int, int]:
    """The tokens ``[start, end)`` of the sequence that ``rank`` holds, as diffusers' sharders split it.

    Equal shares (``torch.chunk``; diffusers requires ``total_tokens`` divisible by ``world_size``) or, with
    ``any_length`` (Ulysses/ring "anything"), ``torch.tensor_split``: the first ``total % world`` ranks hold
    one token more.
    """
    if not any_length and total_tokens % world_size:
        raise WanAnimateError(
            f"{total_tokens} video tokens do not split evenly over {world_size} GPUs; "
            "enable context parallelism with any_length=True."
        )
    share, extra = divmod(total_tokens, world_size)
    start = rank * share + min(rank, extra)
    return start, start + share + (1 if rank < extra else 0)


def frame_window(start: int, end: int, tokens_per_frame: int) -> tuple[int, int, int, int]:
    """Whole latent frames covering the tokens ``[start, end)``, and the padding that completes them.

    Returns:
        ``(first_frame, end_frame, pad_before, pad_after)``: frames ``[first_frame, end_frame)`` hold
        ``pad_before`` tokens before ``start`` and ``pad_after`` tokens after ``end``.
    """
    first_frame = start // tokens_per_frame
    end_frame = -(-end // tokens_per_frame)
    return first_frame, end_frame, start - first_frame * tokens_per_frame, end_frame * tokens_per_frame - end


@dataclass
class _TokenLayout:
    """Latent frames and tokens per frame of the forward pass in progress (set by `_TransformerForwardHook`)."""

    frames: int = 0
    tokens_per_frame: int = 0

    @property
    def tokens(self) -> int:
        """Video tokens of the whole sequence."""
        return self.frames * self.tokens_per_frame


def _any_length(config: ContextParallelConfig) -> bool:
    return bool(config.ulysses_anything or config.ring_anything)


class _TransformerForwardHook(ModelHook):
    """Before each transformer forward: record the token layout and keep the gather on the outer ``proj_out``.

    PEFT replaces ``proj_out`` by a LoRA wrapper when a LoRA that targets it (``head.head``, e.g. the
    relighting LoRA) is loaded, and puts the plain Linear back when it is unloaded. The LoRA's update is
    computed from the wrapper's (local) input, so the gather must follow whichever module is outermost.
    """

    def __init__(self, layout: _TokenLayout, config: ContextParallelConfig, gather: "_GatherTokensHook", patch_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.layout = layout
        self.config = config
        self.gather = gather
        self.gather_holder: torch.nn.Module | None = None
        self.patch_size = patch_size

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._place_gather(module)
        return module

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        p_t, p_h, p_w = self.patch_size
        _, _, frames, height, width = latents.shape
        self.layout.frames = frames // p_t
        self.layout.tokens_per_frame = (height // p_h) * (width // p_w)
        # Refuse a split that diffusers' sharder would only assert on.
        token_span(self.layout.tokens, self.config._flattened_mesh.size(), 0, _any_length(self.config))
        self._place_gather(module)
        return args, kwargs

    def _place_gather(self, transformer: torch.nn.Module) -> None:
        outer = getattr(transformer, OUTPUT_MODULE)
        if outer is self.gather_holder:
            return
        if self.gather_holder is not None:
            HookRegistry.check_if_exists_or_initialize(self.gather_holder).remove_hook(_GATHER_HOOK, recurse=False)
        HookRegistry.check_if_exists_or_initialize(outer).register_hook(self.gather, _GATHER_HOOK)
        self.gather_holder = outer


class _GatherTokensHook(ModelHook):
    """After ``proj_out``: all ranks' tokens ``(B, S_local, C)`` -> the whole sequence ``(B, S, C)``.

    diffusers' "anything" gather calls ``all_gather`` with unequal shapes, which NCCL accepts and gloo
    refuses (pytorch/pytorch#156627); here every share is padded to the longest (the shares are known from
    the layout, so no sizes are exchanged), which runs on both.
    """

    def __init__(self, layout: _TokenLayout, config: ContextParallelConfig) -> None:
        super().__init__()
        self.layout = layout
        self.config = config

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        mesh = self.config._flattened_mesh
        world_size = mesh.size()
        spans = [token_span(self.layout.tokens, world_size, rank, _any_length(self.config)) for rank in range(world_size)]
        longest = max(end - start for start, end in spans)
        local = F.pad(output, (0, 0, 0, longest - output.shape[1])).contiguous()
        shares = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(shares, local, group=mesh.get_group())
        return torch.cat([share[:, : end - start] for share, (start, end) in zip(shares, spans)], dim=1)


class _FaceAdapterOnLocalTokensHook(ModelHook):
    """Run a face-adapter block on this rank's tokens, padded to whole latent frames.

    The block's attention pairs the tokens of latent frame f with the motion tokens of frame f by reshaping
    its queries to ``(frames, tokens per frame)``. A rank's tokens ``[start, end)`` generally start and end
    inside a frame, so zeros are put before and after them to complete the frames ``[f0, f1)``, the block
    sees only the motion tokens of those frames, and the padding is cut from its output. Every operation of
    the block is per token or per frame, so the padding changes nothing for the real tokens.
    """

    def __init__(self, layout: _TokenLayout, config: ContextParallelConfig) -> None:
        super().__init__()
        self.layout = layout
        self.config = config

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, *args, **kwargs):
        mesh = self.config._flattened_mesh
        rank = dist.get_rank(mesh.get_group())
        total = self.layout.tokens
        start, end = token_span(total, mesh.size(), rank, _any_length(self.config))
        if end - start != hidden_states.shape[1]:
            raise RuntimeError(
                f"Rank {rank} holds {hidden_states.shape[1]} tokens, expected {end - start} of {total}: "
                "the token layout of this forward pass was not recorded."
            )
        first_frame, end_frame, pad_before, pad_after = frame_window(start, end, self.layout.tokens_per_frame)
        padded = F.pad(hidden_states, (0, 0, pad_before, pad_after))
        motion = encoder_hidden_states[:, first_frame:end_frame]
        output = self.fn_ref.original_forward(padded, motion, *args, **kwargs)
        return output[:, pad_before : pad_before + hidden_states.shape[1]]


# -- Enabling it on a pipeline ---------------------------------------------------------------------


@dataclass(frozen=True)
class ContextParallelOptions:
    """How the sequence is split; must be the same on every rank.

    Attributes:
        ring_degree: GPUs that pass keys/values round a ring; the rest of the world size is the Ulysses
            degree. 1 (pure Ulysses) is the fastest on one NVLink host. Ring needs an attention backend
            that returns the log-sum-exp (``_native_cudnn``, ``flash``, ``_native_flash``, ``sage``).
        any_length: Allow token counts that do not divide by the number of GPUs (diffusers' "anything"
            modes; not with both ring and Ulysses degrees above 1). Most 720p aspect ratios need it at 8
            GPUs.
        attention_backend: diffusers attention backend to set first, or ``None`` to keep the current one.
    """

    ring_degree: int = 1
    any_length: bool = True
    attention_backend: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "ContextParallelOptions":
        """Options from ``WAN_ANIMATE_RING_DEGREE`` (default 1), ``WAN_ANIMATE_CP_ANY_LENGTH`` (``0`` to
        require evenly splitting token counts; default 1) and ``WAN_ANIMATE_CP_ATTENTION_BACKEND``
        (default: keep the backend the pipeline was loaded with). torchrun gives every rank the same
        environment, so every rank gets the same options."""
        try:
            ring_degree = int(environ.get("WAN_ANIMATE_RING_DEGREE", "1"))
        except ValueError as error:
            raise WanAnimateError("WAN_ANIMATE_RING_DEGREE must be a whole number (1 = Ulysses only).") from error
        return cls(
            ring_degree=ring_degree,
            any_length=environ.get("WAN_ANIMATE_CP_ANY_LENGTH", "1").strip().lower() not in ("0", "false", "no"),
            attention_backend=environ.get("WAN_ANIMATE_CP_ATTENTION_BACKEND") or None,
        )


def _transformer_of(pipeline_or_transformer: Any) -> "WanAnimateTransformer3DModel":
    transformer = getattr(pipeline_or_transformer, "transformer", pipeline_or_transformer)
    if type(transformer).__name__ != "WanAnimateTransformer3DModel":
        raise TypeError(f"Expected a WanAnimatePipeline or WanAnimateTransformer3DModel, got {type(transformer).__name__}.")
    return transformer


def _context_parallel_config(world_size: int, heads: int, options: ContextParallelOptions) -> ContextParallelConfig:
    """diffusers' config for ``world_size`` GPUs, or a `WanAnimateError` that says which counts work."""
    ring = options.ring_degree
    if ring < 1 or world_size % ring:
        raise WanAnimateError(f"The ring degree ({ring}) must divide the number of GPUs ({world_size}).")
    ulysses = world_size // ring
    if ulysses > 1 and ring > 1 and heads % ulysses:
        raise WanAnimateError(f"Ulysses over {ulysses} GPUs needs the {heads} attention heads to divide by {ulysses}.")
    if ulysses > 1 and ring == 1 and heads % ulysses and not options.any_length:
        raise WanAnimateError(
            f"Ulysses over {ulysses} GPUs needs the {heads} attention heads to divide by {ulysses}; "
            "use a GPU count that divides it, a ring degree, or any_length=True."
        )
    return ContextParallelConfig(
        ring_degree=ring,
        ulysses_degree=ulysses,
        ulysses_anything=options.any_length and ring == 1,
        ring_anything=options.any_length and ulysses == 1,
    )


@contextmanager
def _cpu_only_device_count() -> Iterator[None]:
    """Let diffusers pick a "device" in a process without accelerators (CPU runs over gloo, e.g. tests).

    ``ModelMixin._resolve_parallel_config`` computes ``rank % torch.accelerator.device_count()``, which divides
    by zero when there is no accelerator. The device it computes is only recorded, never used for context
    parallelism, so the count is reported as 1 for the duration of the call. Nothing changes with GPUs.
    """
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def _check_device(transformer: torch.nn.Module) -> None:
    """Every rank must hold its whole model on its own GPU: diffusers' CPU offload would put all on GPU 0."""
    if not torch.cuda.is_available():
        return
    expected = torch.device("cuda", torch.cuda.current_device())
    found = next(transformer.parameters()).device
    if found != expected:
        raise WanAnimateError(
            f"With several GPUs every process keeps its model on its own GPU ({expected}), but the transformer "
            f"is on {found}. Load the pipeline with memory mode 'none' (--memory-mode none)."
        )


def enable_context_parallel(pipeline: Any, options: ContextParallelOptions | None = None) -> ContextParallelConfig:
    """Split the Animate transformer's tokens over all ranks of the initialised process group.

    Call it on every rank, in the same order relative to other collectives (it creates a device mesh),
    before the first generation. Calling it again on the same transformer does nothing and returns the
    config already in use, so it can be called before every job.

    Args:
        pipeline: A `WanAnimatePipeline` (or its transformer) whose transformer is on this rank's device.
        options: Ring/Ulysses split and attention backend; the defaults suit one host with NVLink.

    Returns:
        diffusers' `ContextParallelConfig` in use.

    Raises:
        WanAnimateError: torch.distributed is not initialised, the split does not fit the GPU count, the
            attention backend cannot split the sequence (or cannot do ring attention), or the model is not
            on this rank's GPU (offloaded).
    """
    options = options or ContextParallelOptions()
    transformer = _transformer_of(pipeline)
    if transformer._parallel_config is not None:
        return transformer._parallel_config.context_parallel_config
    if not dist.is_available() or not dist.is_initialized():
        raise WanAnimateError("Context parallelism needs several processes: start with torchrun --nproc-per-node N.")
    _check_device(transformer)
    world_size = dist.get_world_size()
    config = _context_parallel_config(world_size, transformer.config.num_attention_heads, options)
    if options.attention_backend is not None:
        transformer.set_attention_backend(options.attention_backend)
    backend = _active_attention_backend(transformer)
    if not _supports_context_parallel(backend):
        raise WanAnimateError(
            f"The attention backend '{backend}' cannot split the sequence over GPUs. Set "
            "WAN_ANIMATE_CP_ATTENTION_BACKEND to one that can: native, _native_cudnn, _native_flash, flash or sage."
        )
    if config.ring_degree > 1 and backend in _BACKENDS_WITHOUT_LSE:
        raise WanAnimateError(
            f"Ring attention needs an attention backend that returns the log-sum-exp; '{backend}' does not. "
            "Use ring degree 1 (Ulysses) or the '_native_cudnn' or 'flash' backend."
        )

    with _cpu_only_device_count():
        transformer.enable_parallelism(config=config, cp_plan=context_parallel_plan())

    layout = _TokenLayout()
    for face_block in transformer.face_adapter:
        # Its keys are one frame's motion tokens, present whole on every rank: no Ulysses exchange.
        face_block.processor._parallel_config = None
        HookRegistry.check_if_exists_or_initialize(face_block).register_hook(
            _FaceAdapterOnLocalTokensHook(layout, config), _FACE_HOOK
        )
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(
        _TransformerForwardHook(layout, config, _GatherTokensHook(layout, config), tuple(transformer.config.patch_size)),
        _FORWARD_HOOK,
    )
    logger.info(
        "Context parallelism on %d ranks (Ulysses %d x ring %d%s, attention backend %s)",
        world_size, config.ulysses_degree, config.ring_degree, ", any length" if _any_length(config) else "", backend,
    )
    return config


def _supports_context_parallel(backend: str) -> bool:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    return _AttentionBackendRegistry._is_context_parallel_available(AttentionBackendName(backend))


def _active_attention_backend(transformer: torch.nn.Module) -> str:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            if processor._attention_backend is not None:
                return str(getattr(processor._attention_backend, "value", processor._attention_backend))
            break
    return _AttentionBackendRegistry.get_active_backend()[0].value


# -- Processes: one leader, N-1 followers ------------------------------------------------------------


@dataclass(frozen=True)
class ParallelContext:
    """This process's place in a run started by torchrun (or accelerate launch) with several processes.

    Attributes:
        rank: 0 for the leader (serves the app or runs the CLI), 1..N-1 for the followers.
        world_size: Number of processes (= GPUs).
        local_rank: GPU index on this host.
        device: This rank's device (``cuda:<local_rank>``, or the CPU without CUDA).
        control_group: gloo group for job messages and per-step stop flags (CPU objects, no timeout worth
            the name: followers wait there between jobs).
        options: The context-parallel split; the same on every rank.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control_group: Any
    options: ContextParallelOptions = ContextParallelOptions()

    @property
    def is_leader(self) -> bool:
        """True on rank 0, which serves the app or runs the CLI and alone writes files."""
        return self.rank == 0

    @property
    def is_follower(self) -> bool:
        """True on ranks 1..N-1, which run `run_follower`."""
        return self.rank != 0


def launched_with_several_processes() -> bool:
    """True when torchrun / accelerate launch started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(
    options: ContextParallelOptions | None = None, *, timeout: timedelta = timedelta(minutes=30)
) -> ParallelContext | None:
    """Join the process group that torchrun / accelerate launch set up; ``None`` in a single process.

    Selects this rank's GPU (so ``"cuda"`` means it from here on) and initialises torch.distributed with
    NCCL for GPU tensors and gloo for CPU tensors, plus a separate gloo group for job messages.

    Args:
        options: The context-parallel split, recorded for `enable_context_parallel` on every rank;
            `ContextParallelOptions.from_environment` when ``None``.
        timeout: How long a collective on the GPUs may wait before the run is declared hung.

    Returns:
        The `ParallelContext`, or ``None`` when not started with several processes.
    """
    if not launched_with_several_processes():
        return None
    options = options or ContextParallelOptions.from_environment()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise WanAnimateError(
                f"Process {local_rank} has no GPU: only {torch.cuda.device_count()} visible. "
                "Start as many processes per node as there are GPUs."
            )
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "cpu:gloo,cuda:nccl"
    else:
        device, backend = torch.device("cpu"), "cpu:gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    control_group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return ParallelContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device,
        control_group=control_group, options=options,
    )


class SharedJob(NamedTuple):
    """What the leader passes to `generate` / `generate_video` after `share_job`.

    Attributes:
        settings: The job's settings with the seed fixed (the same on every rank; a resumed job's own seed).
        progress: Reports to the caller's callback and synchronises the stop flag at every report.
        cancel: Set on every rank at the same report when the leader's cancel event was set.
    """

    settings: GenerationSettings
    progress: ProgressCallback | None
    cancel: threading.Event | None


@dataclass(frozen=True)
class _Job:
    conditioning: Conditioning
    settings: GenerationSettings
    resume: Checkpoint | None = None
    max_segments: int | None = None


_STOP = "stop"


def _broadcast(parallel: ParallelContext, message: object = None) -> object:
    """Send ``message`` from the leader to every rank (pickled, over the gloo control group)."""
    box = [message]
    dist.broadcast_object_list(box, src=0, group=parallel.control_group)
    return box[0]


def _synchronised_steps(
    parallel: ParallelContext, progress: ProgressCallback | None, cancel: threading.Event | None
) -> tuple[ProgressCallback, threading.Event]:
    """A progress callback that, at each report, agrees with every rank on whether to stop.

    The segment loop reports at every phase and denoising step (the same reports on every rank) and then
    checks the returned event, so all ranks stop at the same point: the leader when its ``cancel`` was set or
    its own ``progress`` raised (that error is re-raised on the leader after the flag went out), the
    followers because the flag said so.
    """
    stop_all = threading.Event()

    def on_step(done: int, total: int, description: str) -> None:
        error = None
        if progress is not None:
            try:
                progress(done, total, description)
            except Exception as exc:  # re-raised below, after the followers were told to stop
                error = exc
        stop = error is not None or (cancel is not None and cancel.is_set())
        flag = torch.tensor([1 if stop else 0], dtype=torch.uint8)
        dist.broadcast(flag, src=0, group=parallel.control_group)
        if flag.item():
            stop_all.set()
        if error is not None:
            raise error

    return on_step, stop_all


def share_job(
    parallel: ParallelContext | None,
    conditioning: Conditioning,
    settings: GenerationSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    state_dir: str | Path | None = None,
    max_segments: int | None = None,
) -> SharedJob:
    """On the leader: send one job to the followers; returns what to pass to `generate` / `generate_video`.

    The settings are checked and the seed is drawn here, so every rank denoises the same noise; a job that
    goes on from its checkpoint in ``state_dir`` keeps its own seed, and the followers get the checkpoint
    (the last frames and the generator's state), so every rank starts from the same segment. Without
    ``parallel`` (a single process) the inputs come back unchanged apart from that, so callers need no
    branch. Once per job, one job at a time, in this order on the leader: load the pipeline (and LoRAs),
    `share_job`, `enable_context_parallel`, generate (`generate_video` with the same ``state_dir`` and
    ``max_segments``; a ``deadline`` is refused with several processes). Loading first means a failed load
    shares nothing; enabling after sharing matters on the first job, as enabling is collective and the
    followers only reach it once they have the job.

    Args:
        parallel: From `init_distributed`, or ``None``.
        conditioning: The job's model inputs.
        settings: The job's settings; contract defaults when ``None``.
        progress: The caller's progress callback.
        cancel: The caller's cancel event.
        state_dir: The job's checkpoint folder, as given to `generate_video`.
        max_segments: As given to `generate_video`: every rank stops after as many segments.

    Raises:
        WanAnimateError: The settings or the conditioning are invalid, a step cache is asked for with several
            processes, or ``state_dir`` holds another job's state (nothing was sent).
    """
    settings = settings or GenerationSettings()
    settings.check()
    if parallel is not None:
        check_step_cache_split(settings.step_cache)  # before anything is sent
    conditioning.validate()
    resume = load_checkpoint(state_dir, conditioning, settings) if state_dir is not None else None
    if resume is not None:
        settings = replace(settings, seed=resume.seed)
    elif settings.seed is None:
        settings = replace(settings, seed=secrets.randbelow(2**31))
    if parallel is None:
        return SharedJob(settings, progress, cancel)
    if not parallel.is_leader:
        raise RuntimeError("share_job runs on rank 0; the other ranks run run_follower.")
    _broadcast(parallel, _Job(conditioning, settings, resume, max_segments))
    step, stop_all = _synchronised_steps(parallel, progress, cancel)
    return SharedJob(settings, step, stop_all)


def run_follower(parallel: ParallelContext, pipeline: Callable[[], "WanAnimatePipeline"]) -> int:
    """On ranks 1..N-1: run every job the leader shares until it calls `shutdown`.

    For each job it gets the pipeline from ``pipeline()`` (called per job: load it once, at start, exactly
    as the leader does, LoRAs included), enables context parallelism, and runs the job's segments with
    `follow_job` (from the leader's checkpoint, up to its ``max_segments``); the frames are dropped (the
    leader has the same). A cancelled job or a
    `WanAnimateError` ends the job on every rank alike, and any other error is logged: the leader met the
    same one, or it will find out when the collectives stall.

    Returns:
        The number of jobs completed.
    """
    if not parallel.is_follower:
        raise RuntimeError("run_follower runs on ranks 1..N-1; rank 0 serves the app or the CLI.")
    completed = 0
    while True:
        message = _broadcast(parallel)
        if message == _STOP:
            return completed
        if not isinstance(message, _Job):
            raise RuntimeError(f"Rank {parallel.rank} got an unknown message from the leader: {message!r}")
        step, stop_all = _synchronised_steps(parallel, None, None)
        try:
            follower_pipeline = pipeline()
            enable_context_parallel(follower_pipeline, parallel.options)
            follow_job(
                follower_pipeline, message.conditioning, message.settings,
                resume=message.resume, max_segments=message.max_segments, progress=step, cancel=stop_all,
            )
            completed += 1
        except (GenerationCancelled, WanAnimateError) as error:
            logger.info("Rank %d: job ended: %s", parallel.rank, error)
        except Exception:
            logger.exception("Rank %d: job failed", parallel.rank)


def shutdown(parallel: ParallelContext | None) -> None:
    """At exit of the app or the CLI, on every rank: the leader lets `run_follower` return on the other ranks,
    then each rank leaves the process group. Call it once per rank; nothing happens with ``None``."""
    if parallel is None:
        return
    if parallel.is_leader:
        _broadcast(parallel, _STOP)
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "ContextParallelOptions",
    "ParallelContext",
    "SharedJob",
    "context_parallel_plan",
    "enable_context_parallel",
    "frame_window",
    "init_distributed",
    "launched_with_several_processes",
    "run_follower",
    "share_job",
    "shutdown",
    "token_span",
]
