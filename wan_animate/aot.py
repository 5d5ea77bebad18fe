"""Ahead-of-time compiled transformer blocks: built once with torch.export + AOTInductor, loaded in seconds.

Why: on ZeroGPU every GPU call runs in a freshly forked worker, so ``torch.compile``'s just-in-time work (15 s in
bf16, 184 s with torchao fp8, benchmarks/RESULTS.md section 1) would be paid again on every call. A package built
once holds the compiled code; a worker only loads it.

What is compiled: the forward of one ``WanTransformerBlock``, traced with the arguments the transformer passes it
(captured as ``spaces.aoti_capture`` does, without importing ``spaces``: see `capture_block_call`). All 40 blocks
of ``WanAnimateTransformer3DModel`` share its architecture, so one graph serves them all. The package holds code, no weights (inductor's
``aot_inductor.package_constants_in_so=False``): right before a block runs, its own tensors are bound as the graph's
constants with ``load_constants(..., user_managed=True)``, which stores pointers and copies nothing. That is how
``spaces.aoti_blocks_load`` shares a graph too; spaces' ``aoti_compile`` + ``aoti_apply`` instead copy one module's
weights into the compiled model and empty the module, which would take one compile (and a weight copy) per block.
So: one compile, a package of a few MB that is the same for every checkpoint of this architecture, no weight
duplicated, and weights changed in place (LoRA factors, fp8 scales) are seen at once.

LoRA, passed through rather than fused. Fusing ``W + s·BA`` into bf16 weights and unfusing it for the next job
rounds the weights at every switch (a drift that grows job after job) unless a second copy of every adapted weight
is kept (~33 GB). Instead, when adapters are loaded at build time the package gets a second graph, ``lora``, whose
LoRA factors are constants like the weights and whose per-layer LoRA scales are an input vector: PEFT's
``scaling`` floats are replaced by that vector while tracing. Switching the relighting weight between jobs only
changes the vector, exactly as PEFT's ``set_adapters`` does in eager mode. Adapters of the package that are not
loaded run as zeros. Cost: while any adapter is active, every slot's two thin matmuls run (rank r on an
``in x out`` layer adds ``r·(in + out) / (in·out)`` of its work: 3.4-5 % for r = 128; for the relighting (r 128)
and few-step (r 64) slots together about 2 % of a 720p step, whose linear layers are 28 % of it, and 3 % at 480p,
47 %), where eager PEFT runs only the active ones. With no adapter active the ``plain`` graph runs, at no cost. An active adapter the package has no slot for runs the block eagerly.

Shapes: the video token count (dim 1 of the hidden states and of the rotary tables) is dynamic by default, from
`MIN_TOKENS` to `MAX_TOKENS`: output sizes follow the input's aspect ratio, so one resolution has many token counts
(16:9 at 720p is 75,600, 4:3 is 73,899). ``static`` packages specialise on one token count. A call the package
cannot take (another token count, batch size or dtype, gradients on, an unknown active adapter) runs the block's
eager forward, and the reason is logged once.

Loading is tried in a child process first (`probe_package_load`): torch's AOTInductor loader can crash the process
that loads a package instead of raising (a segfault in ``AOTIModelPackageLoader``, measured with torch 2.11 + CUDA
13 on an H200 for every package, benchmarks/RESULTS.md section 9), and that process would be the app. A package that
crashed the child is refused at load (``compile_blocks="aot:..."`` with the GPU present) or, where the GPU only
exists in a ZeroGPU worker, makes every block run eagerly, said once in the log.

fp8 (GPU only, compute capability 8.9+): torchao's ``Float8DynamicActivationFloat8WeightConfig`` (PerRow) on the
blocks' ``nn.Linear`` layers (not on LoRA factors) before export, the recipe measured in benchmarks/RESULTS.md.

Public API: `compile_blocks_aot` (build and save a ``.pt2``), `read_package_info`, `resolve_package` (a file, or
``owner/repo::file.pt2`` on the Hugging Face Hub), `load_compiled_blocks` / `unload_compiled_blocks`, and
``python -m wan_animate.aot build|info`` (see `main`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from .errors import WanAnimateError

if TYPE_CHECKING:
    from diffusers import WanAnimateTransformer3DModel

logger = logging.getLogger("wan_animate")

PACKAGE_FORMAT = 1
"""Version of what `compile_blocks_aot` writes; a package of another version is refused."""
METADATA_FILE = "wan_animate_blocks.json"
"""The package's description, stored in the archive's ``extra/`` folder (where the PT2 format keeps user files)."""

SEGMENT_LATENT_FRAMES = 21
"""Latent frames of one 77-frame segment: (77 - 1) / 4 + 1 = 20, plus the reference frame."""
MAX_TOKENS = SEGMENT_LATENT_FRAMES * (1280 * 720 // (16 * 16))
"""Most video tokens of a segment: 720p's area (the contract's largest) in 16 x 16 pixel patches (8x VAE, 2x2
patches), times the latent frames. It also keeps ``tokens x ffn_dim`` (1.05e9) under 2**31, so that inductor can
index with 32-bit integers."""
MIN_TOKENS = 16
"""Fewest video tokens of a dynamic package (export specialises sizes 0 and 1; anything real is far larger)."""

TEXT_TOKENS = 512
"""Tokens of the prompt embedding the pipeline feeds (UMT5, padded to 512; its attention processor assumes 512)."""
_BLOCK_INPUTS = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb")
"""``WanTransformerBlock.forward``'s arguments, in order (the transformer passes them positionally)."""
_ARCHITECTURE_KEYS = (
    "num_attention_heads", "attention_head_dim", "ffn_dim", "cross_attn_norm", "qk_norm", "eps", "added_kv_proj_dim",
)
"""The transformer config entries that shape one block (``num_layers`` does not: every block runs the graph)."""

# Inductor options for a weight-less, swappable-constants package (as spaces' INDUCTOR_CONFIGS_OVERRIDES, less its
# on-disk weights format, which would store one block's weights in the package).
_PACKAGE_OPTIONS: dict[str, Any] = {
    "aot_inductor.package": True,
    "aot_inductor.package_constants_in_so": False,  # weights are bound per block at run time
    "always_keep_tensor_constants": True,  # every weight stays a named constant, so it can be bound
    "joint_graph_constant_folding": False,  # a folded weight would keep the first block's values
}

Shapes = Literal["dynamic", "static"]


# ---------------------------------------------------------------------------------------------------------------
# The package's description


@dataclass(frozen=True)
class PackageInfo:
    """What a compiled-blocks package was built for (stored in it, checked before it is used)."""

    format: int
    torch: str
    """``major.minor`` of the torch that built it (AOTInductor code is tied to it)."""
    device: str
    """``cuda`` or ``cpu``."""
    capability: tuple[int, int] | None
    """CUDA compute capability of the GPU it was built on (its kernels run on that architecture)."""
    dtype: str
    """Dtype of the blocks' weights (``bfloat16``); with ``fp8`` the unquantised layers' dtype."""
    fp8: bool
    """Whether the blocks' linear layers are torchao float8 (dynamic activation + weight, per row)."""
    architecture: dict[str, Any]
    """The transformer config entries that shape a block (`_ARCHITECTURE_KEYS`)."""
    tokens: tuple[int, int]
    """Smallest and largest video token count the graphs take (equal for a static package)."""
    inputs: list[dict[str, Any]]
    """Shape (``None`` where the token count goes) and dtype of every flattened block input."""
    variants: list[str]
    """The graphs in the package: ``plain`` and, with LoRA slots, ``lora``."""
    lora_slots: dict[str, dict[str, int]] = field(default_factory=dict)
    """Adapter name -> {module inside a block -> rank} of the ``lora`` graph."""
    lora_dtype: str | None = None
    scale_order: list[tuple[str, str]] = field(default_factory=list)
    """``(module, adapter)`` of each entry of the ``lora`` graph's scale vector."""
    compile_seconds: float = 0.0

    def describe(self) -> str:
        """One line for logs and the UI, e.g. ``bf16, 16-75600 tokens, LoRA slots fast+relight``."""
        quant = "fp8" if self.fp8 else self.dtype.replace("bfloat16", "bf16").replace("float16", "fp16")
        low, high = self.tokens
        tokens = f"{low} tokens" if low == high else f"{low}-{high} tokens"
        slots = f", LoRA slots {'+'.join(sorted(self.lora_slots))}" if self.lora_slots else ""
        return f"{quant}, {tokens}{slots}"

    @classmethod
    def from_json(cls, text: str) -> "PackageInfo":
        data = json.loads(text)
        data["capability"] = tuple(data["capability"]) if data.get("capability") else None
        data["tokens"] = tuple(data["tokens"])
        data["scale_order"] = [tuple(entry) for entry in data.get("scale_order", [])]
        return cls(**data)


def read_package_info(path: str | os.PathLike) -> PackageInfo:
    """The description stored in a package file.

    Raises:
        WanAnimateError: The file is missing, not a PT2 archive, or not a package of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise WanAnimateError(f"Compiled blocks package {path} does not exist.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith(f"/extra/{METADATA_FILE}")]
            if not names:
                raise WanAnimateError(
                    f"{path} is not a compiled-blocks package of wan_animate (no {METADATA_FILE} in it). Build one "
                    "with `python -m wan_animate.aot build`."
                )
            text = archive.read(names[0]).decode()
    except zipfile.BadZipFile as error:
        raise WanAnimateError(f"{path} is not a compiled-blocks package (not a PT2 archive: {error}).") from error
    try:
        info = PackageInfo.from_json(text)
    except (TypeError, ValueError, KeyError) as error:
        raise WanAnimateError(f"{path} has an unreadable description ({error}); rebuild the package.") from error
    if info.format != PACKAGE_FORMAT:
        raise WanAnimateError(
            f"{path} is a package of format {info.format}; this version reads format {PACKAGE_FORMAT}. Rebuild it."
        )
    return info


def _torch_minor(version: str = torch.__version__) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _transformer(model: Any) -> "WanAnimateTransformer3DModel":
    """The transformer of a pipeline, or the transformer itself."""
    return getattr(model, "transformer", model)


def _block_weight(block: torch.nn.Module) -> torch.Tensor:
    """The weight of the block's first projection (under a LoRA wrapper, its base layer's)."""
    layer = block.attn1.to_q
    return getattr(layer, "base_layer", layer).weight


def _block_dtype(block: torch.nn.Module) -> torch.dtype:
    """The block's compute dtype: its query norm's (never quantised, never kept in fp32 by diffusers)."""
    return block.attn1.norm_q.weight.dtype


def _is_quantized(weight: torch.Tensor) -> bool:
    """Whether a weight is a tensor subclass such as torchao's float8 tensors (export splits them into plain ones)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return is_traceable_wrapper_subclass(weight)


def architecture(transformer: "WanAnimateTransformer3DModel") -> dict[str, Any]:
    """The config entries that shape one block, JSON-ready."""
    config = transformer.config
    return {key: (list(value) if isinstance(value, tuple) else value) for key in _ARCHITECTURE_KEYS
            for value in [getattr(config, key, None)]}


# ---------------------------------------------------------------------------------------------------------------
# Module surgery: shallow clones for export and for binding constants


_INSTANCE_OVERRIDES = ("forward", "_diffusers_hook", "_compiled_call_impl")
"""Per-instance replacements of a module's call: compiled blocks, diffusers' hooks, ``Module.compile``."""


def _shallow_clone(module: torch.nn.Module, *, drop_lora: bool) -> torch.nn.Module:
    """A copy of the module tree that shares every tensor (nothing is copied), safe to modify.

    Instance-level call overrides (`_INSTANCE_OVERRIDES`) are left out, so the clone runs its class's forward.
    With ``drop_lora`` every PEFT LoRA layer is replaced by its base layer.
    """
    if drop_lora and _is_lora_layer(module):
        module = module.get_base_layer()
    clone = object.__new__(type(module))
    clone.__dict__ = {key: value for key, value in module.__dict__.items() if key not in _INSTANCE_OVERRIDES}
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {
        name: None if child is None else _shallow_clone(child, drop_lora=drop_lora)
        for name, child in module._modules.items()
    }
    return clone


def _plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with tensor-subclass weights (torchao fp8) split into their plain tensors.

    These are the names and tensors an exported graph's constants have (torch.export unwraps subclass parameters
    the same way, with ``unwrap_tensor_subclass_parameters``); the module itself is not changed.
    """
    from torch._functorch._aot_autograd.subclass_parametrization import unwrap_tensor_subclass_parameters

    if not any(_is_quantized(tensor) for tensor in module.state_dict().values()):
        return module.state_dict()
    clone = _shallow_clone(module, drop_lora=False)
    unwrap_tensor_subclass_parameters(clone)
    return clone.state_dict()


def _is_lora_layer(module: torch.nn.Module) -> bool:
    """Whether a module is a PEFT LoRA layer (without PEFT installed, none is)."""
    peft = sys.modules.get("peft.tuners.lora")  # LoRAs can only have been loaded through PEFT, so it is imported
    return peft is not None and isinstance(module, peft.LoraLayer)


def _lora_layers(block: torch.nn.Module) -> dict[str, Any]:
    """The PEFT LoRA layers inside a block, by module name."""
    return {name: module for name, module in block.named_modules() if _is_lora_layer(module)}


def _lora_slots(block: torch.nn.Module) -> tuple[dict[str, dict[str, int]], str | None]:
    """Adapter -> {module -> rank} of every adapter loaded in the block, and the LoRA factors' dtype.

    Raises:
        WanAnimateError: Fused adapters, or an adapter the ``lora`` graph cannot pass through (DoRA, variants).
    """
    slots: dict[str, dict[str, int]] = {}
    dtype = None
    for name, layer in _lora_layers(block).items():
        if layer.merged:
            raise WanAnimateError(f"LoRA adapters are fused into {name}: unfuse them before compiling the blocks.")
        for adapter in layer.lora_A:
            if getattr(layer, "use_dora", {}).get(adapter) or getattr(layer, "lora_variant", {}).get(adapter):
                raise WanAnimateError(f"LoRA {adapter!r} on {name} is a DoRA or another LoRA variant: the compiled "
                                      "blocks pass only plain LoRAs (with or without a bias) through.")
            slots.setdefault(adapter, {})[name] = int(layer.r[adapter])
            dtype = str(layer.lora_A[adapter].weight.dtype).removeprefix("torch.")
    return slots, dtype


# ---------------------------------------------------------------------------------------------------------------
# Building a package


def quantize_blocks_fp8(transformer: "WanAnimateTransformer3DModel") -> None:
    """Quantise the blocks' linear layers (not LoRA factors) with torchao float8, dynamic activations, per row.

    The recipe measured in benchmarks/RESULTS.md section 1 (``fp8ao``). Needs torchao and a GPU of compute
    capability 8.9 or newer (Ada, Hopper) to run.

    Raises:
        WanAnimateError: torchao is not installed.
    """
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as error:
        raise WanAnimateError("fp8 compiled blocks need torchao: pip install torchao (0.18 or newer).") from error

    def is_block_linear(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and fqn.startswith("blocks.") and ".lora_" not in fqn

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=is_block_linear)


def example_transformer_inputs(
    model: Any, size: tuple[int, int] = (480, 832), frames: int = 77, *, seed: int = 0
) -> dict[str, Any]:
    """Random inputs of one segment for `WanAnimateTransformer3DModel.forward`, as the pipeline feeds them.

    Args:
        model: A ``WanAnimatePipeline`` (its image encoder sets the image tokens) or its transformer.
        size: Output ``(height, width)`` in pixels (multiples of 16).
        frames: Frames of the segment (``4k + 1``).
    """
    transformer = _transformer(model)
    config = transformer.config
    weight = _block_weight(transformer.blocks[0])
    device, dtype = weight.device, transformer.dtype
    generator = torch.Generator(device="cpu").manual_seed(seed)
    latent_frames = (frames - 1) // 4 + 1
    height, width = size[0] // 8, size[1] // 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device, dtype)

    face = config.motion_encoder_size
    return dict(
        hidden_states=randn(1, config.in_channels, latent_frames + 1, height, width),
        timestep=torch.tensor([999.0], device=device),
        encoder_hidden_states=randn(1, TEXT_TOKENS, config.text_dim),
        encoder_hidden_states_image=randn(1, _image_tokens(model), config.image_dim),
        pose_hidden_states=randn(1, config.latent_channels, latent_frames, height, width),
        face_pixel_values=randn(1, 3, frames, face, face).clamp(-1, 1),
        return_dict=False,
    )


def _image_tokens(model: Any) -> int:
    """Tokens of the CLIP image embedding the pipeline feeds: one per patch, plus the class token (257 in the real
    model: 224 / 14 = 16 patches a side)."""
    encoder = getattr(model, "image_encoder", None)
    if encoder is None:
        return 257
    config = encoder.config
    return (config.image_size // config.patch_size) ** 2 + 1


class _Captured(Exception):
    """Raised by the capture hook to stop the transformer at its first block."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.args, self.kwargs = args, kwargs


def capture_block_call(transformer: "WanAnimateTransformer3DModel", inputs: Mapping[str, Any]) -> tuple:
    """The arguments the transformer passes to its first block for ``inputs`` (the transformer stops there).

    What ``spaces.aoti_capture`` does, with a forward pre-hook: importing ``spaces`` loads its ZeroGPU machinery
    (httpx, pydantic, a read of the NVIDIA driver's files) that capturing one call does not need.
    """

    def stop(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        raise _Captured(args, kwargs)

    handle = transformer.blocks[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.no_grad():
            transformer(**inputs)
    except _Captured as call:
        arguments = dict(zip(_BLOCK_INPUTS, call.args))
        arguments.update(call.kwargs)
        return tuple(arguments[name] for name in _BLOCK_INPUTS)
    finally:
        handle.remove()
    raise WanAnimateError("The transformer never called its first block: not a WanAnimateTransformer3DModel?")


def _input_specs(arguments: tuple, dynamic: bool) -> list[dict[str, Any]]:
    """Shape and dtype of every flattened block input; the token dim is ``None`` in a dynamic package."""
    flat = [arguments[0], arguments[1], arguments[2], *arguments[3]]
    specs = []
    for index, tensor in enumerate(flat):
        shape: list[int | None] = list(tensor.shape)
        if dynamic and index in (0, 3, 4):  # hidden states and the rotary cos/sin tables carry the tokens in dim 1
            shape[1] = None
        specs.append({"shape": shape, "dtype": str(tensor.dtype).removeprefix("torch.")})
    return specs


def _export(block: torch.nn.Module, arguments: tuple, tokens: tuple[int, int], scale_order: list) -> Any:
    """``torch.export`` one block (a shallow clone); with ``scale_order`` its LoRA scales become an input."""
    dynamic = tokens[0] != tokens[1]
    token_dim = torch.export.Dim("tokens", min=tokens[0], max=tokens[1]) if dynamic else None
    shapes: dict[str, Any] = {
        "hidden_states": {1: token_dim} if dynamic else None,
        "encoder_hidden_states": None,
        "temb": None,
        "rotary_emb": ({1: token_dim}, {1: token_dim}) if dynamic else (None, None),
    }
    kwargs: dict[str, Any] = {}
    if scale_order:
        layers = _lora_layers(block)
        adapters_of: dict[str, list[str]] = {}
        for module, adapter in scale_order:
            adapters_of.setdefault(module, []).append(adapter)
        for name, layer in layers.items():  # every slot active and on, with scales of its own (not PEFT's dict)
            layer._active_adapter = adapters_of.get(name, [])
            layer._disable_adapters = False
            layer.scaling = dict(layer.scaling)
        original_forward = type(block).forward

        def forward(hidden_states, encoder_hidden_states, temb, rotary_emb, lora_scales):
            for index, (module, adapter) in enumerate(scale_order):
                layers[module].scaling[adapter] = lora_scales[index]
            return original_forward(block, hidden_states, encoder_hidden_states, temb, rotary_emb)

        block.forward = forward
        kwargs["lora_scales"] = torch.ones(len(scale_order), device=arguments[0].device)
        shapes["lora_scales"] = None
    with warnings.catch_warnings():
        # Assigning the traced scales to PEFT's ``scaling`` is the point: export warns about every such attribute.
        warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
        return torch.export.export(block, arguments, kwargs, dynamic_shapes=shapes, strict=False)


def compile_blocks_aot(
    model: Any,
    path: str | os.PathLike,
    *,
    shapes: Shapes = "dynamic",
    size: tuple[int, int] = (480, 832),
    frames: int = 77,
    fp8: bool = False,
    inductor_configs: Mapping[str, Any] | None = None,
) -> PackageInfo:
    """Compile the transformer's repeated block ahead of time and save the package to ``path``.

    The graphs are traced on the model as it is: its dtype, device, and the LoRA adapters loaded now (each
    becomes a slot of the ``lora`` graph; their values do not matter, only names, targets and ranks). Build on
    the GPU kind and torch version the package will run on.

    Args:
        model: A ``WanAnimatePipeline`` or its transformer, all on one device (memory mode ``none``).
        path: Where to write the package (``.pt2``).
        shapes: ``dynamic`` (every token count from `MIN_TOKENS` to `MAX_TOKENS`) or ``static`` (only the
            token count of ``size`` x ``frames``).
        size: Output ``(height, width)`` of the example segment traced (480p 16:9 by default).
        frames: Frames of the example segment.
        fp8: Quantise the blocks' linear layers with torchao float8 first (`quantize_blocks_fp8`; this changes
            ``model``, GPU only).
        inductor_configs: Extra inductor options (e.g. ``{"max_autotune": True}``).

    Returns:
        The package's description (also stored in it).

    Raises:
        WanAnimateError: Offloaded or mixed-device blocks, unsupported LoRAs, or missing torchao for fp8.
    """
    transformer = _transformer(model)
    block = transformer.blocks[0]
    weight = _block_weight(block)
    devices = {parameter.device for parameter in transformer.blocks.parameters()}
    if len(devices) != 1 or weight.device.type not in ("cuda", "cpu"):
        raise WanAnimateError(
            "Compiling the blocks needs every block on one device (memory mode none); found "
            f"{', '.join(sorted(map(str, devices)))}."
        )
    if weight.dtype == torch.float8_e4m3fn and not _is_quantized(weight):
        raise WanAnimateError("Compile the blocks without fp8 storage (layerwise casting); use fp8=True instead.")
    if fp8 and not _is_quantized(weight):
        quantize_blocks_fp8(transformer)
    dtype = _block_dtype(block)
    slots, lora_dtype = _lora_slots(block)
    scale_order = sorted((module, adapter) for adapter, modules in slots.items() for module in modules)

    arguments = capture_block_call(transformer, example_transformer_inputs(model, size, frames))
    example_tokens = arguments[0].shape[1]
    tokens = (MIN_TOKENS, MAX_TOKENS) if shapes == "dynamic" else (example_tokens, example_tokens)
    if not tokens[0] <= example_tokens <= tokens[1]:
        raise WanAnimateError(f"The example segment has {example_tokens} tokens, outside {tokens}: choose a size in it.")

    options = {**_PACKAGE_OPTIONS, **(inductor_configs or {})}
    started = time.perf_counter()
    files: dict[str, list] = {}
    for variant in ("plain", "lora") if slots else ("plain",):
        clone = _shallow_clone(block, drop_lora=variant == "plain")
        with torch.no_grad():
            exported = _export(clone, arguments, tokens, scale_order if variant == "lora" else [])
            logger.info("Compiling the %s block graph ahead of time (%s tokens).", variant, tokens)
            module = exported.module()
            args, kwargs = exported.example_inputs
            files[variant] = torch._inductor.aot_compile(module, args, kwargs, options=options)
    seconds = time.perf_counter() - started

    device = weight.device
    info = PackageInfo(
        format=PACKAGE_FORMAT,
        torch=_torch_minor(),
        device=device.type,
        capability=tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
        dtype=str(dtype).removeprefix("torch."),
        fp8=_is_quantized(_block_weight(block)),
        architecture=architecture(transformer),
        tokens=tokens,
        inputs=_input_specs(arguments, shapes == "dynamic"),
        variants=list(files),
        lora_slots=slots,
        lora_dtype=lora_dtype,
        scale_order=scale_order,
        compile_seconds=round(seconds, 1),
    )
    from torch.export.pt2_archive._package import package_pt2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}.pt2")  # the PT2 writer wants the suffix
    package_pt2(partial, aoti_files=files, extra_files={METADATA_FILE: json.dumps(asdict(info))})
    os.replace(partial, path)
    logger.info("Compiled blocks (%s) in %.0f s: %s (%.1f MB).", info.describe(), seconds, path,
                path.stat().st_size / 1e6)
    return info


# ---------------------------------------------------------------------------------------------------------------
# Loading a package safely


class PackageLoadError(WanAnimateError):
    """The package's graphs could not be loaded in a test process (`probe_package_load`)."""


PROBE_TIMEOUT_S = 600.0
"""How long a test load may take (a fresh process importing torch and loading every graph)."""

_PROBE_SCRIPT = """
import sys, torch
from torch._inductor.package import load_package
path, variants, device = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
if device >= 0:
    torch.cuda.set_device(device)
for variant in variants:
    load_package(path, model_name=variant)
"""


def _needs_probe(device: torch.device) -> bool:
    """Whether loads on this device are tried in a child first (CUDA: where the crash was seen; CPU loads are
    exercised by the tests)."""
    return device.type == "cuda"


def _probe_marker(path: Path, device: torch.device) -> Path:
    """Where a successful test load of ``path`` on this device and torch is remembered (the temp folder: shared by
    the forked ZeroGPU workers of one machine, so each machine tries a package once)."""
    stat = path.resolve().stat()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{path.name}-{stat.st_size}-{stat.st_mtime_ns}-{torch.__version__}-{gpu}")
    return Path(tempfile.gettempdir()) / "wan_animate_aot_loads" / key


def probe_package_load(path: str | os.PathLike, variants: list[str], device: torch.device) -> None:
    """Load a package's graphs in a child process, so that a loader crash ends the child, not this process.

    A success is remembered per package file, torch version and GPU (`_probe_marker`); later calls return at once.

    Args:
        path: The ``.pt2`` package.
        variants: Its graphs (``PackageInfo.variants``).
        device: The device the graphs will run on.

    Raises:
        PackageLoadError: The child crashed, failed or timed out: what happened and what to do.
    """
    path = Path(path)
    marker = _probe_marker(path, device)
    if marker.exists():
        return
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else -1)
    started = time.perf_counter()
    command = [sys.executable, "-c", _PROBE_SCRIPT, str(path), ",".join(variants), str(index)]
    advice = "Start without the compiled blocks (no --aot-blocks), or build the package with another torch."
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise PackageLoadError(f"Loading the compiled blocks {path.name} took over {PROBE_TIMEOUT_S:.0f} s in a "
                               f"test process. {advice}") from error
    if result.returncode != 0:
        how = (f"crashed the test process that loaded it (signal {-result.returncode})" if result.returncode < 0
               else f"failed in a test process: {(result.stderr.strip().splitlines() or ['no message'])[-1]}")
        raise PackageLoadError(f"torch {torch.__version__} cannot load the compiled blocks {path.name} here: its "
                               f"loader {how}. {advice}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    logger.info("The compiled blocks %s load here (tried in a test process, %.1f s).", path.name,
                time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------------------
# Finding a package


def resolve_package(source: str | os.PathLike, *, revision: str | None = None) -> Path:
    """The local path of a package: a file as is, or ``owner/repo::path/in/repo.pt2`` from the Hugging Face Hub.

    Hub files come through ``hf_hub_download`` (the Hugging Face cache and ``HF_HUB_OFFLINE`` apply).

    Raises:
        WanAnimateError: A missing file, a malformed hub spec, or a failed download.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    repo, separator, filename = text.partition("::")
    if not separator:
        raise WanAnimateError(
            f"Compiled blocks package {text} not found. Give a local .pt2 file, or owner/repo::file.pt2 on the Hub."
        )
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo) or not filename:
        raise WanAnimateError(f"{text!r} is not a hub package spec: use owner/repo::path/in/repo.pt2.")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision))
    except Exception as error:  # noqa: BLE001 - network, auth, missing file: all the user's to fix
        raise WanAnimateError(
            f"Could not get the compiled blocks {filename!r} from {repo} ({type(error).__name__}: {error}). Check the "
            "names and the network, or build the package with `python -m wan_animate.aot build`."
        ) from error


# ---------------------------------------------------------------------------------------------------------------
# Running the blocks through the package


def check_package(info: PackageInfo, transformer: "WanAnimateTransformer3DModel", *, check_device: bool = True) -> None:
    """Refuse a package that was not built for this torch, device, GPU, architecture or dtype.

    Args:
        check_device: Compare the blocks' device and the GPU's compute capability (off where the GPU is not
            real yet: ZeroGPU's main process; the worker checks when it loads the package).

    Raises:
        WanAnimateError: Saying what differs and how to get a matching package.
    """
    rebuild = "Build a matching one with `python -m wan_animate.aot build` on this machine."
    if info.torch != _torch_minor():
        raise WanAnimateError(f"The compiled blocks were built with torch {info.torch}; this is torch "
                              f"{_torch_minor()}. {rebuild}")
    weight = _block_weight(transformer.blocks[0])
    if check_device and weight.device.type != info.device:
        raise WanAnimateError(
            f"The compiled blocks are for {info.device}, the transformer's blocks are on {weight.device.type} "
            f"(compiled blocks need memory mode none, every block on the GPU). {rebuild}"
        )
    if check_device and info.device == "cuda":
        capability = tuple(torch.cuda.get_device_capability(weight.device))
        if capability != info.capability:
            raise WanAnimateError(
                f"The compiled blocks are for GPUs of compute capability {info.capability}; this GPU has "
                f"{capability}. {rebuild}"
            )
    if architecture(transformer) != info.architecture:
        theirs, ours = info.architecture, architecture(transformer)
        differ = ", ".join(f"{key} {theirs.get(key)} vs {ours.get(key)}" for key in _ARCHITECTURE_KEYS
                           if theirs.get(key) != ours.get(key))
        raise WanAnimateError(f"The compiled blocks are for another transformer ({differ}). {rebuild}")
    if weight.dtype == torch.float8_e4m3fn and not _is_quantized(weight):
        raise WanAnimateError("The compiled blocks cannot run with fp8 storage (layerwise casting): load the "
                              "pipeline without it, or use an fp8 package.")
    dtype = str(_block_dtype(transformer.blocks[0])).removeprefix("torch.")
    if dtype != info.dtype:
        raise WanAnimateError(f"The compiled blocks are for {info.dtype} weights; the transformer's are {dtype}. "
                              f"{rebuild}")
    if _is_quantized(weight) and not info.fp8:
        raise WanAnimateError(f"The transformer's blocks are quantised to fp8 but the package is not. {rebuild}")


class CompiledBlocks:
    """A package bound to a transformer's blocks: each block's ``forward`` runs the shared compiled graph.

    The compiled graphs are loaded lazily, once per process (a forked ZeroGPU worker loads its own), and then
    serve every block with that block's tensors bound as constants. ``calls`` counts the block calls per path
    (``plain``, ``lora``, ``eager``).
    """

    def __init__(self, transformer: "WanAnimateTransformer3DModel", path: Path, info: PackageInfo) -> None:
        self.transformer = transformer
        self.path = path
        self.info = info
        self.calls = {"plain": 0, "lora": 0, "eager": 0}
        self._models: dict[str, Any] = {}
        self._models_pid: int | None = None
        self._lock = threading.Lock()
        self._constants: dict[tuple[int, str], tuple[tuple, dict[str, torch.Tensor]]] = {}
        self._bound: dict[str, dict[str, torch.Tensor]] = {}
        self._scales: dict[int, tuple[tuple[float, ...], torch.Tensor]] = {}
        self._zeros: dict[tuple, torch.Tensor] = {}
        self._warned: set[str] = set()
        self._unloadable: PackageLoadError | None = None

    # -- loading --------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the package's graphs in this process (done by the first call; call it to load ahead).

        Raises:
            PackageLoadError: The graphs crashed or failed a test load (`probe_package_load`).
            WanAnimateError: The package does not match this GPU (`check_package`).
        """
        with self._lock:
            if self._models_pid == os.getpid():
                return
            if self._unloadable is not None:
                raise self._unloadable
            check_package(self.info, self.transformer)
            device = _block_weight(self.transformer.blocks[0]).device
            if _needs_probe(device):
                try:
                    probe_package_load(self.path, self.info.variants, device)
                except PackageLoadError as error:
                    self._unloadable = error
                    raise
            started = time.perf_counter()
            from torch._inductor.package import load_package

            with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                models = {variant: load_package(str(self.path), model_name=variant) for variant in self.info.variants}
            # A forked worker starts from its parent's caches: nothing bound there is valid here.
            self._models, self._models_pid = models, os.getpid()
            self._bound, self._constants, self._scales, self._zeros = {}, {}, {}, {}
            logger.info("Loaded the compiled blocks (%s) in %.1f s.", self.info.describe(), time.perf_counter() - started)

    # -- one block call -------------------------------------------------------------------------------------

    def run(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
        """Run one block: through a compiled graph when it takes this call, else the block's eager forward."""
        arguments = self._arguments(args, kwargs)
        reason = self._shape_mismatch(arguments) if arguments is not None else "unexpected arguments"
        if reason is None and torch.is_grad_enabled():
            reason = "gradients are on (the compiled blocks are for inference)"
        layers = _lora_layers(block)
        variant, scales = "plain", None
        if reason is None:
            variant, scales, reason = self._lora_state(block, layers)
        if reason is None:
            reason = self._load_or_reason()
        if reason is not None:
            self._warn_once(reason)
            self.calls["eager"] += 1
            return type(block).forward(block, *args, **kwargs)
        model = self._models[variant]
        constants = self._block_constants(block, variant, layers)
        if self._bound.get(variant) is not constants:  # the graph is shared: bind this block's tensors
            model.load_constants(constants, check_full_update=True, user_managed=True)
            self._bound[variant] = constants
        self.calls[variant] += 1
        hidden_states, encoder_hidden_states, temb, rotary_emb = arguments
        if variant == "lora":
            return model(hidden_states, encoder_hidden_states, temb, tuple(rotary_emb), lora_scales=scales)
        return model(hidden_states, encoder_hidden_states, temb, tuple(rotary_emb))

    def _load_or_reason(self) -> str | None:
        """Load the graphs; a package that failed its test load makes every block run eagerly (the reason)."""
        try:
            self.load()
        except PackageLoadError as error:
            return str(error).rstrip(".")
        return None

    @staticmethod
    def _arguments(args: tuple, kwargs: dict) -> tuple | None:
        named = dict(zip(_BLOCK_INPUTS, args))
        for name, value in kwargs.items():
            if name not in _BLOCK_INPUTS or name in named:
                return None
            named[name] = value
        if len(args) > len(_BLOCK_INPUTS) or set(named) != set(_BLOCK_INPUTS):
            return None
        return tuple(named[name] for name in _BLOCK_INPUTS)

    def _shape_mismatch(self, arguments: tuple) -> str | None:
        """Why the graphs cannot take these inputs (AOTInductor checks neither shapes nor strides), or None."""
        hidden_states, encoder_hidden_states, temb, rotary_emb = arguments
        if not isinstance(rotary_emb, (tuple, list)) or len(rotary_emb) != 2:
            return "rotary embeddings that are not a (cos, sin) pair"
        flat = [hidden_states, encoder_hidden_states, temb, *rotary_emb]
        tokens = hidden_states.shape[1] if hidden_states.ndim > 1 else -1
        low, high = self.info.tokens
        if not low <= tokens <= high:
            return f"{tokens} video tokens (the package takes {low}-{high})"
        for tensor, spec in zip(flat, self.info.inputs):
            expected = [tokens if size is None else size for size in spec["shape"]]
            if list(tensor.shape) != expected or str(tensor.dtype).removeprefix("torch.") != spec["dtype"]:
                return (f"an input of shape {list(tensor.shape)} {tensor.dtype} (the package takes {spec['shape']} "
                        f"{spec['dtype']}, None = the token count)")
            if tensor.device.type != self.info.device:
                return f"inputs on {tensor.device.type}"
            if not tensor.is_contiguous():  # the graphs were traced with contiguous inputs and assume their strides
                return "a non-contiguous input"
        return None

    def _lora_state(self, block: torch.nn.Module, layers: dict[str, Any]) -> tuple[str, torch.Tensor | None, str | None]:
        """The graph for the block's LoRA state now, its scale vector, or why no graph can run it."""
        scales: dict[tuple[str, str], float] = {}
        for name, layer in layers.items():
            if layer.merged:
                return "plain", None, f"LoRA fused into {name} (the compiled graph would add it again)"
            if layer.disable_adapters:
                continue
            for adapter in layer.active_adapters:
                if adapter not in layer.lora_A:
                    continue
                if self.info.lora_slots.get(adapter, {}).get(name) != layer.r[adapter]:
                    return "plain", None, (f"LoRA {adapter!r} is active on {name} and the package has no slot for it "
                                           "(build the package with this LoRA loaded)")
                scales[(name, adapter)] = float(layer.scaling[adapter])
        if not any(scales.values()):
            return "plain", None, None
        values = tuple(scales.get(tuple(entry), 0.0) for entry in self.info.scale_order)
        cached = self._scales.get(id(block))
        if cached is None or cached[0] != values:
            device = _block_weight(block).device
            cached = (values, torch.tensor(values, dtype=torch.float32, device=device))
            self._scales[id(block)] = cached
        return "lora", cached[1], None

    def _block_constants(self, block: torch.nn.Module, variant: str, layers: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The block's tensors under the graph's constant names (cached until the block's LoRA layout changes)."""
        layout = tuple((name, tuple(layer.lora_A)) for name, layer in layers.items())
        key = (id(block), variant)
        cached = self._constants.get(key)
        if cached is not None and cached[0] == layout:
            return cached[1]
        state = _plain_state_dict(_shallow_clone(block, drop_lora=variant == "plain"))
        constants = {}
        for name in self._models[variant].get_constant_fqns():
            constants[name] = self._constant(block, state, name)
        self._constants[key] = (layout, constants)
        return constants

    def _constant(self, block: torch.nn.Module, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if name in state:
            return state[name]
        # A module that no adapter wraps (yet) has its weights under its own name, not ``base_layer``'s.
        unwrapped = name.replace(".base_layer.", ".", 1)
        if unwrapped in state:
            return state[unwrapped]
        match = re.fullmatch(r"(?P<module>.+)\.lora_(?P<factor>[AB])\.(?P<adapter>[^.]+)\.(?P<param>weight|bias)", name)
        if match and self.info.lora_slots.get(match["adapter"], {}).get(match["module"]):
            # A slot whose adapter is not loaded here: zeros (its scale is 0 too).
            rank = self.info.lora_slots[match["adapter"]][match["module"]]
            linear = block.get_submodule(match["module"])
            linear = getattr(linear, "base_layer", linear)
            shape = {("A", "weight"): (rank, linear.in_features), ("B", "weight"): (linear.out_features, rank),
                     ("B", "bias"): (linear.out_features,)}[match["factor"], match["param"]]
            device = _block_weight(block).device
            key = (shape, self.info.lora_dtype, str(device))
            if key not in self._zeros:
                self._zeros[key] = torch.zeros(shape, dtype=getattr(torch, self.info.lora_dtype), device=device)
            return self._zeros[key]
        raise WanAnimateError(f"The compiled blocks need a tensor {name!r} this transformer's blocks do not have; "
                              "rebuild the package for this model.")

    def _warn_once(self, reason: str) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("A transformer block runs eagerly (slower), not through the compiled blocks: %s.", reason)


class _BlockForward:
    """A block's ``forward`` replacement: the shared `CompiledBlocks` with this block."""

    def __init__(self, runtime: CompiledBlocks, block: torch.nn.Module) -> None:
        self.runtime = runtime
        self.block = block

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.runtime.run(self.block, args, kwargs)


def compiled_blocks(model: Any) -> CompiledBlocks | None:
    """The `CompiledBlocks` bound to a pipeline's (or transformer's) blocks, if any."""
    return getattr(_transformer(model), "_wan_compiled_blocks", None)


def load_compiled_blocks(
    model: Any, source: str | os.PathLike, *, revision: str | None = None, check_device: bool = True
) -> CompiledBlocks:
    """Run the transformer's blocks through a compiled-blocks package from now on.

    The package is checked against this torch, device, GPU and transformer first; an fp8 package quantises the
    blocks' linear layers (`quantize_blocks_fp8`) if they are not yet. The graphs themselves load on the first
    block call of each process (a few seconds), or with ``CompiledBlocks.load()``.

    Args:
        model: A ``WanAnimatePipeline`` or its transformer, every block on one device (memory mode ``none``).
        source: A ``.pt2`` file, or ``owner/repo::file.pt2`` on the Hugging Face Hub (`resolve_package`).
        revision: Hub revision of the package.
        check_device: Check the blocks' device and the GPU now (ZeroGPU's main process leaves it to the worker).

    Raises:
        WanAnimateError: A missing, unreadable or incompatible package.
        PackageLoadError: The GPU is here (``check_device``) and the package crashed or failed a test load.
    """
    transformer = _transformer(model)
    path = resolve_package(source, revision=revision)
    info = read_package_info(path)
    if info.fp8 and not _is_quantized(_block_weight(transformer.blocks[0])):
        check_package(info, transformer, check_device=check_device)  # before changing the weights
        quantize_blocks_fp8(transformer)
    check_package(info, transformer, check_device=check_device)
    device = _block_weight(transformer.blocks[0]).device
    if check_device and _needs_probe(device):
        probe_package_load(path, info.variants, device)  # refused now rather than at the first job
    unload_compiled_blocks(transformer)
    runtime = CompiledBlocks(transformer, path, info)
    for block in transformer.blocks:
        block.forward = _BlockForward(runtime, block)
    transformer._wan_compiled_blocks = runtime
    logger.info("Transformer blocks run through the compiled package %s (%s).", path.name, info.describe())
    return runtime


def unload_compiled_blocks(model: Any) -> None:
    """Give the blocks back their eager forward (the fp8 quantisation of an fp8 package stays)."""
    transformer = _transformer(model)
    if compiled_blocks(transformer) is None:
        return
    for block in transformer.blocks:
        if isinstance(block.__dict__.get("forward"), _BlockForward):
            del block.forward
    del transformer._wan_compiled_blocks


# ---------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    """``python -m wan_animate.aot build OUT.pt2 [...]`` builds a package; ``info PACKAGE`` describes one."""
    parser = argparse.ArgumentParser(prog="python -m wan_animate.aot", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="load the model on this GPU and compile its blocks")
    build.add_argument("output", type=Path, help="the .pt2 file to write")
    build.add_argument("--model", default=None, help="hub repo id or local folder (default: the official repo)")
    build.add_argument("--shapes", choices=("dynamic", "static"), default="dynamic")
    build.add_argument("--resolution", choices=("480p", "720p"), default="480p",
                       help="16:9 size of the example segment (the only one a static package takes)")
    build.add_argument("--fp8", action="store_true", help="torchao float8 linear layers (GPU, torchao)")
    build.add_argument("--relight-lora", action="store_true", help="give the package a slot for the relighting LoRA")
    build.add_argument("--fast-lora", nargs="?", const="default", default=None,
                       help="give it a slot for the few-step LoRA (optionally its hub::file spec)")
    build.add_argument("--max-autotune", action="store_true", help="inductor max_autotune (much longer build)")
    info = commands.add_parser("info", help="describe a package")
    info.add_argument("package")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "info":
        description = read_package_info(resolve_package(args.package))
        print(json.dumps(asdict(description), indent=1))
        return
    from .models import DEFAULT_MODEL_ID, load_pipeline
    from .presets import DEFAULT_FAST_LORA, ensure_fast_lora, ensure_relighting_lora

    pipeline = load_pipeline(args.model or DEFAULT_MODEL_ID, memory_mode="none", compile_blocks=False)
    if args.relight_lora:
        ensure_relighting_lora(pipeline, None)
    if args.fast_lora:
        ensure_fast_lora(pipeline, DEFAULT_FAST_LORA if args.fast_lora == "default" else args.fast_lora)
    size = {"480p": (480, 832), "720p": (720, 1280)}[args.resolution]
    description = compile_blocks_aot(pipeline, args.output, shapes=args.shapes, size=size, fp8=args.fp8,
                                     inductor_configs={"max_autotune": True} if args.max_autotune else None)
    print(json.dumps(asdict(description), indent=1))


if __name__ == "__main__":
    main()
