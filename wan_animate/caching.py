"""Opt-in step caches for the Animate transformer: skip most of a denoising step when it would change little.

Three of diffusers' (0.42.1) caches are offered, all off by default (``"none"``): their quality cost depends on
the real weights and has not been judged.

``first_block`` -- diffusers' FirstBlockCache
    Block 0 always runs. If its residual changed by less than ``threshold`` (relative mean absolute change)
    since the last fully computed step, blocks 1..39 are skipped and the residual they added then
    (``tail output - block 0 output``) is added to block 0's output instead.
``mag`` -- diffusers' MagCache
    All blocks are skipped on a step whose accumulated error, predicted from per-step magnitude ratios
    (``mag_ratios``), stays under ``threshold``; the block stack's last residual is added to its input.
    The ratios belong to a checkpoint and schedule: they must come from a calibration run on the real weights
    (``calibrate=True``, then `mag_calibration_ratios`); none are made up here, so ``mag`` without
    ``mag_ratios`` is refused.
``taylorseer`` -- diffusers' TaylorSeer, lite mode
    On a fixed schedule (computed steps 0..``disable_cache_before_step``-1, then one every ``cache_interval``)
    the other steps skip the blocks (they return zeros) and the output projection's result is extrapolated by
    a Taylor series from the computed steps. The full mode (Taylor factors for every attention and feed-forward of every block) does not
    fit: measured ~80 GB of factors at 480p (benchmarks/RESULTS.md).

What diffusers does not do for this model, and this module adds through diffusers' own hook machinery:

1. Registration. FirstBlockCache and MagCache look the block class up in
   ``diffusers.hooks._helpers.TransformerBlockRegistry`` (what a block returns). ``transformer_wan_animate``
   has its own copy of ``WanTransformerBlock``, which 0.42.1 does not register ("Model class ... not
   registered"). It returns the hidden states alone, like the registered Wan block, and takes the same
   metadata (`register_animate_blocks`, idempotent).
2. The face adapter (correctness). ``WanAnimateTransformer3DModel.forward`` adds
   ``face_adapter[k](hidden_states, motion)`` to the hidden states after every 5th block (0, 5, ... 35),
   *between* the blocks that the caches hook. The cached residual of FirstBlockCache
   (``tail output - block 0 output``) and of MagCache (``tail output - block 0 input``) was measured across
   those additions, so it already contains all eight face-adapter contributions. On a cached step the skipped
   blocks return their input but the face adapters still run and add their output again: every contribution
   is counted twice. A `ModelHook` on every face adapter reads the cache's shared state (``should_compute``,
   set by block 0's hook before the first adapter runs) and returns a zero on cached steps, so a cached step
   is exactly ``block 0 output (or input) + cached residual``. diffusers documents the same limit for another
   cache ("ControlNet residuals are injected between individual blocks", ResilPhase) and falls back to full
   computation there; here the injection is undone instead. TaylorSeer lite is correct by construction: its
   output replaces ``proj_out``'s whole result, so whatever the adapters add on a predicted step is discarded.
3. Segments (correctness). ``WanAnimatePipeline`` runs one denoising loop per 77-frame segment inside one
   call and resets stateful hooks only at the end of the call (``maybe_free_model_hooks``). The caches keep
   their state across segments: TaylorSeer's step counter goes on, so the first step of segment 2 is
   *predicted* from segment 1's last steps; FirstBlockCache may reuse segment 1's last residual for segment
   2's first step. A hook on the transformer resets every cache state when the timestep does not decrease
   within a cache context (a new denoising loop; the flow-matching UniPC schedule strictly decreases), so
   every segment starts fresh.

Composition with other hooks:

* Group offloading (``memory_mode="group"``, block level, CUDA streams): composes. Enabled after the offload
  hooks (load the pipeline, then enable per job), the cache hooks sit outside them, so a skipped block is
  neither computed nor copied to the GPU; on the next computed step the offload hooks load it as usual (a
  group prefetched for a skipped block stays on the GPU until then: one extra block resident). The first call
  of every loop computes all blocks, so diffusers' lazy prefetch tracing sees the whole execution order.
  Checked on an H100 (10-block model, bf16, streams): every cache gave bit-identical outputs and the same
  skipped steps with and without offloading; tests/test_caching.py checks it on the CPU.
* Sequential / model CPU offload (accelerate hooks), LoRA, fp8 layerwise casting: not tested with caches.
  The cache hooks wrap whole blocks and face adapters; those offloads and casts hook the layers inside them,
  which simply do not run on a skipped step.
* Context parallelism (several GPUs, `wan_animate.parallel`): refused. The sequence is split by a hook on
  block 0's input, which a cache hook outside it would bypass on skipped steps, and FirstBlockCache would
  decide from each rank's share of the tokens, so ranks could disagree and hang in a collective.
* ``torch.compile`` of the blocks (not tested): the cache hooks replace the blocks' ``forward``, so switching
  caches between jobs may recompile them.

Memory: FirstBlockCache keeps block 0's output, its residual and the cached residual (three hidden-state
tensors, ~0.8 GB each at 720p in bf16), MagCache two, TaylorSeer lite only proj_out's outputs (~40 MB).

Calls must run inside ``transformer.cache_context(name)``, as ``WanAnimatePipeline`` does (``"cond"``, and
``"uncond"`` with guidance > 1; each context keeps its own state). What a skipped step still costs: the patch
and condition embeddings, the face motion encoder (decided before block 0 runs), block 0 (``first_block``),
the face adapters (``taylorseer``) and the output head.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager, _set_cache_context

from .errors import WanAnimateError

if TYPE_CHECKING:
    from diffusers import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        TaylorSeerCacheConfig,
        WanAnimateTransformer3DModel,
    )

STEP_CACHES: tuple[str, ...] = ("none", "first_block", "mag", "taylorseer")
"""Names accepted by `enable_step_cache`; ``"none"`` turns caching off."""

_LOOP_HOOK = "wan_animate_step_cache"
_FACE_HOOK = "wan_animate_step_cache_face_adapter"
_CALIBRATION_HOOK = "wan_animate_mag_calibration"
_OUR_HOOKS = (_LOOP_HOOK, _FACE_HOOK, _CALIBRATION_HOOK)

# Options each cache takes, with this module's defaults. FirstBlockCache and MagCache keep diffusers'
# defaults. TaylorSeer keeps diffusers' schedule (compute steps 0-2, then every 5th) and stores its factors
# in float32: in lite mode they are only proj_out's output (64 values a token, ~8 MB at 480p).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "first_block": {"threshold": 0.05},
    "mag": {"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2, "mag_ratios": None, "calibrate": False},
    "taylorseer": {
        "cache_interval": 5,
        "disable_cache_before_step": 3,
        "disable_cache_after_step": None,
        "max_order": 1,
        "taylor_factors_dtype": torch.float32,
    },
}


def check_step_cache_name(name: str) -> None:
    """Raise `WanAnimateError` unless ``name`` is one of `STEP_CACHES` (early, e.g. before a job is shared)."""
    if name not in STEP_CACHES:
        raise WanAnimateError(f"Unknown step cache {name!r}: use one of {', '.join(STEP_CACHES)}.")


def check_step_cache_split(name: str) -> None:
    """Raise `WanAnimateError` for a step cache on a job split over several GPUs (context parallelism): each GPU
    would decide on its own which steps to skip, and they would drift apart (a skipped block's exchanges would
    also leave the others waiting)."""
    if name != "none":
        raise WanAnimateError(
            "A step cache cannot be used with several GPUs (context parallelism): each would decide on its own which "
            "steps to skip, and they would drift apart. Turn the step cache off."
        )


def register_animate_blocks() -> None:
    """Register the Animate transformer's block class for diffusers' block-skipping caches (idempotent).

    ``transformer_wan_animate.WanTransformerBlock`` is a copy of the Wan block, not the registered class, so
    FirstBlockCache and MagCache raise "Model class ... not registered" without this. Its ``forward`` returns
    the hidden states alone (index 0) and no encoder hidden states, as the Wan block's registration says.
    """
    from diffusers.hooks._helpers import (
        TransformerBlockMetadata,
        TransformerBlockRegistry,
    )
    from diffusers.models.transformers.transformer_wan_animate import (
        WanTransformerBlock,
    )

    try:
        TransformerBlockRegistry.get(WanTransformerBlock)
    except ValueError:
        TransformerBlockRegistry.register(
            model_class=WanTransformerBlock,
            metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
        )


def enable_step_cache(
    transformer: WanAnimateTransformer3DModel,
    name: str,
    *,
    num_inference_steps: int | None = None,
    **options: Any,
) -> None:
    """Turn on step cache ``name`` (one of `STEP_CACHES`) on the Animate transformer, replacing any other.

    Call it before a pipeline call; the cache state lives for that call's denoising loops (it is reset at the
    start of every loop and by the pipeline at the end). ``"none"`` is `disable_step_cache`.

    Args:
        transformer: The pipeline's `WanAnimateTransformer3DModel` (offloaded or not).
        name: ``"none"``, ``"first_block"``, ``"mag"`` or ``"taylorseer"`` (see the module docstring).
        num_inference_steps: Denoising steps per segment of the coming jobs. MagCache needs it (its ratios are
            per step); the other caches ignore it.
        **options: The cache's settings; anything else is refused.
            ``first_block``: ``threshold`` (0.05; higher skips more).
            ``mag``: ``mag_ratios`` (required unless ``calibrate``; a list of per-step ratios from a
            calibration run on the real weights), ``calibrate`` (False; True runs every step and records the
            ratios, read them with `mag_calibration_ratios`), ``threshold`` (0.06), ``max_skip_steps`` (3),
            ``retention_ratio`` (0.2: the first 20 % of steps are always computed).
            ``taylorseer``: ``cache_interval`` (5), ``disable_cache_before_step`` (3, at least 1),
            ``disable_cache_after_step`` (None), ``max_order`` (1), ``taylor_factors_dtype`` (float32).

    Raises:
        WanAnimateError: An unknown cache name or option, a bad option value, ``mag`` without ratios or
            steps, or a transformer split over several GPUs (context parallelism).
        TypeError: ``transformer`` is not a `WanAnimateTransformer3DModel`.
    """
    from diffusers import WanAnimateTransformer3DModel

    if not isinstance(transformer, WanAnimateTransformer3DModel):
        raise TypeError(f"Step caches are for WanAnimateTransformer3DModel, got {type(transformer).__name__}.")
    check_step_cache_name(name)
    if name == "none":
        if options:
            raise WanAnimateError(f"Step cache 'none' takes no options, got {', '.join(sorted(options))}.")
        disable_step_cache(transformer)
        return
    if getattr(transformer, "_parallel_config", None) is not None:
        check_step_cache_split(name)
    config = _cache_config(name, num_inference_steps, options)

    disable_step_cache(transformer)
    register_animate_blocks()
    transformer.enable_cache(config)
    try:
        _add_animate_fixups(transformer, name, config)
    except Exception:
        disable_step_cache(transformer)
        raise


def disable_step_cache(transformer: WanAnimateTransformer3DModel) -> None:
    """Remove any step cache and this module's hooks; the transformer computes every step again.

    Does nothing when no cache is on. Other hooks (offloading, LoRA, casting) stay.
    """
    if transformer.is_cache_enabled:
        transformer.disable_cache()
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is None:
        return
    for hook_name in _OUR_HOOKS:
        registry.remove_hook(hook_name, recurse=True)


def active_step_cache(transformer: WanAnimateTransformer3DModel) -> str:
    """Name of the step cache enabled by `enable_step_cache` (``"none"`` if there is none)."""
    hook = _root_hook(transformer)
    return hook.cache_name if hook is not None else "none"


def mag_calibration_ratios(transformer: WanAnimateTransformer3DModel) -> list[float] | None:
    """MagCache ratios recorded by the last complete denoising loop run with ``calibrate=True``.

    One loop is one segment of ``num_inference_steps`` steps; pass the list as ``mag_ratios`` to later jobs with
    the same number of steps (diffusers also prints it at the end of each loop). ``None`` if no calibration
    loop has finished, or MagCache is not on in calibration mode.
    """
    if not transformer.blocks:
        return None
    registry = getattr(transformer.blocks[-1], "_diffusers_hook", None)
    hook = registry.get_hook(_CALIBRATION_HOOK) if registry is not None else None
    return list(hook.ratios) if hook is not None and hook.ratios is not None else None


# -- options -------------------------------------------------------------------------------------------


def _cache_config(
    name: str, num_inference_steps: int | None, options: dict[str, Any]
) -> FirstBlockCacheConfig | MagCacheConfig | TaylorSeerCacheConfig:
    """diffusers' config for cache ``name`` from this module's defaults and the caller's options."""
    unknown = sorted(set(options) - set(_DEFAULTS[name]))
    if unknown:
        raise WanAnimateError(
            f"Step cache {name!r} has no option {', '.join(unknown)}: it takes {', '.join(_DEFAULTS[name])}."
        )
    settings = {**_DEFAULTS[name], **options}
    if name == "first_block":
        return _first_block_config(settings)
    if name == "mag":
        return _mag_config(settings, num_inference_steps)
    return _taylorseer_config(settings)


def _first_block_config(settings: dict[str, Any]) -> FirstBlockCacheConfig:
    from diffusers import FirstBlockCacheConfig

    _check_number("threshold", settings["threshold"], minimum=0.0)
    return FirstBlockCacheConfig(threshold=float(settings["threshold"]))


def _mag_config(settings: dict[str, Any], num_inference_steps: int | None) -> MagCacheConfig:
    """MagCache needs ratios calibrated on the real checkpoint: none are invented (diffusers' own rule)."""
    from diffusers import MagCacheConfig

    if num_inference_steps is None or int(num_inference_steps) < 1:
        raise WanAnimateError("Step cache 'mag' needs num_inference_steps (the steps per segment of the job).")
    ratios = settings["mag_ratios"]
    if ratios is None and not settings["calibrate"]:
        raise WanAnimateError(
            "Step cache 'mag' needs mag_ratios calibrated on the model: run one job with calibrate=True, then "
            "pass mag_calibration_ratios(transformer) as mag_ratios (or use 'first_block' or 'taylorseer')."
        )
    if ratios is not None:
        ratios = [float(value) for value in ratios]
        if not ratios or not all(math.isfinite(value) and value > 0 for value in ratios):
            raise WanAnimateError("mag_ratios must be a non-empty list of positive numbers.")
    _check_number("threshold", settings["threshold"], minimum=0.0)
    _check_number("max_skip_steps", settings["max_skip_steps"], minimum=0, integer=True)
    _check_number("retention_ratio", settings["retention_ratio"], minimum=0.0, maximum=1.0)
    return MagCacheConfig(
        threshold=float(settings["threshold"]),
        max_skip_steps=int(settings["max_skip_steps"]),
        retention_ratio=float(settings["retention_ratio"]),
        num_inference_steps=int(num_inference_steps),
        mag_ratios=None if settings["calibrate"] else ratios,
        calibrate=bool(settings["calibrate"]),
    )


def _taylorseer_config(settings: dict[str, Any]) -> TaylorSeerCacheConfig:
    from diffusers import TaylorSeerCacheConfig

    _check_number("cache_interval", settings["cache_interval"], minimum=1, integer=True)
    # Step 0 must be computed: a prediction needs at least one computed step (diffusers raises otherwise).
    _check_number("disable_cache_before_step", settings["disable_cache_before_step"], minimum=1, integer=True)
    _check_number("max_order", settings["max_order"], minimum=0, integer=True)
    if settings["disable_cache_after_step"] is not None:
        _check_number("disable_cache_after_step", settings["disable_cache_after_step"], minimum=0, integer=True)
    if not isinstance(settings["taylor_factors_dtype"], torch.dtype):
        raise WanAnimateError("taylor_factors_dtype must be a torch dtype, e.g. torch.float32.")
    return TaylorSeerCacheConfig(
        cache_interval=int(settings["cache_interval"]),
        disable_cache_before_step=int(settings["disable_cache_before_step"]),
        disable_cache_after_step=settings["disable_cache_after_step"],
        max_order=int(settings["max_order"]),
        taylor_factors_dtype=settings["taylor_factors_dtype"],
        use_lite_mode=True,
    )


def _check_number(
    option: str, value: Any, *, minimum: float, maximum: float | None = None, integer: bool = False
) -> None:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    valid = valid and value >= minimum and (maximum is None or value <= maximum)
    valid = valid and (not integer or float(value).is_integer())
    if not valid:
        kind = "a whole number" if integer else "a number"
        upper = f" and at most {maximum:g}" if maximum is not None else ""
        raise WanAnimateError(f"Step cache option {option} must be {kind} of at least {minimum:g}{upper}, got {value!r}.")


# -- hooks ---------------------------------------------------------------------------------------------


def _add_animate_fixups(transformer: torch.nn.Module, name: str, config: Any) -> None:
    """Add the face-adapter, segment-reset and calibration hooks after diffusers applied ``config``."""
    if name in ("first_block", "mag"):
        shared = _head_state_manager(transformer)
        for face_block in transformer.face_adapter:
            HookRegistry.check_if_exists_or_initialize(face_block).register_hook(
                _SkipFaceAdapterOnCachedSteps(shared), _FACE_HOOK
            )
        if name == "mag" and config.calibrate:
            HookRegistry.check_if_exists_or_initialize(transformer.blocks[-1]).register_hook(
                _RecordMagCalibration(shared, config.num_inference_steps), _CALIBRATION_HOOK
            )
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_ResetOnNewDenoisingLoop(name), _LOOP_HOOK)


def _head_state_manager(transformer: torch.nn.Module) -> StateManager:
    """The state that FirstBlockCache's / MagCache's hook on block 0 shares with the other block hooks."""
    from diffusers.hooks.first_block_cache import FBCHeadBlockHook
    from diffusers.hooks.mag_cache import MagCacheHeadHook

    registry = HookRegistry.check_if_exists_or_initialize(transformer.blocks[0])
    for hook in registry.hooks.values():
        if isinstance(hook, (FBCHeadBlockHook, MagCacheHeadHook)):
            return hook.state_manager
    raise RuntimeError("diffusers put no FirstBlockCache/MagCache hook on block 0: this diffusers is not supported.")


def _root_hook(transformer: torch.nn.Module) -> _ResetOnNewDenoisingLoop | None:
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(_LOOP_HOOK) if registry is not None else None


class _SkipFaceAdapterOnCachedSteps(ModelHook):
    """Return 0 from a face adapter on steps where the cache skips the blocks (no double counting).

    The cached residual already holds the adapters' contributions (module docstring, point 2). A 0-dim zero
    keeps the model's ``hidden_states = face_adapter_output + hidden_states`` exact at no memory cost.
    """

    def __init__(self, state_manager: StateManager) -> None:
        super().__init__()
        self.state_manager = state_manager

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.state_manager.get_state().should_compute:
            return hidden_states.new_zeros(())
        return self.fn_ref.original_forward(hidden_states, *args, **kwargs)


class _LoopState(BaseState):
    """Last timestep seen in one cache context."""

    def __init__(self) -> None:
        self.last_timestep: float | None = None

    def reset(self) -> None:
        self.last_timestep = None


class _ResetOnNewDenoisingLoop(ModelHook):
    """Reset every cache state when a new denoising loop starts (module docstring, point 3).

    A loop's timesteps strictly decrease; a timestep at or above the last one in the same cache context is the
    first step of the next segment (or job). All contexts are reset at once (their states all belong to the
    finished loop) and the current context is set again, since `StateManager.reset` clears it.
    """

    _is_stateful = True

    def __init__(self, cache_name: str) -> None:
        super().__init__()
        self.cache_name = cache_name
        self.state_manager = StateManager(_LoopState)

    @torch.compiler.disable
    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        try:
            context = self.state_manager.context
        except ValueError:  # no cache_context: nothing to key the state by (diffusers' caches need one too)
            return args, kwargs
        if timestep is None:
            return args, kwargs
        now = float(torch.as_tensor(timestep).detach().float().max())
        state = self.state_manager.get_state()
        if state.last_timestep is not None and now >= state.last_timestep:
            # diffusers' own reset of every stateful hook under the transformer (the caches' and this one's),
            # as the pipeline does at the end of a call; resetting clears the context, so it is set again.
            module._reset_stateful_cache()
            _set_cache_context(module, context)
            state = self.state_manager.get_state()
        state.last_timestep = now
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


class _RecordMagCalibration(ModelHook):
    """Keep the ratios of MagCache's calibration when its loop ends (diffusers prints them, then drops them).

    Wraps the last block outside MagCache's own hook: it holds the list MagCache appends to, which MagCache
    replaces by a new one after the loop's last step, so the completed list survives here.
    """

    def __init__(self, state_manager: StateManager, num_inference_steps: int) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.num_inference_steps = num_inference_steps
        self.ratios: list[float] | None = None
        self._recording: list[float] | None = None

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any):
        self._recording = self.state_manager.get_state().calibration_ratios
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        if self._recording is not None and len(self._recording) >= self.num_inference_steps:
            self.ratios = [float(value) for value in self._recording[: self.num_inference_steps]]
        return output


__all__ = [
    "STEP_CACHES",
    "check_step_cache_name",
    "check_step_cache_split",
    "active_step_cache",
    "disable_step_cache",
    "enable_step_cache",
    "mag_calibration_ratios",
    "register_animate_blocks",
]
