"""LoRA adapters on the Wan-Animate transformer: the official relighting LoRA and other Wan LoRAs.

Upstream Wan2.2-Animate ships ``relighting_lora.ckpt`` next to the model. It is a PEFT state dict, saved under
the key ``state_dict``, for a ``LoraConfig(r=128, lora_alpha=128)`` that targets every ``nn.Linear`` of the
ORIGINAL Wan module tree whose name contains ``blocks`` and neither ``face`` nor ``modulation``. In the
original ``WanAnimateModel`` those are, per attention block N::

    blocks.N.self_attn.{q,k,v,o}   blocks.N.cross_attn.{q,k,v,o,k_img,v_img}   blocks.N.ffn.{0,2}

(the face adapter's ``fuser_blocks`` are excluded by ``face``; the motion encoder uses its own ``EqualLinear``,
not ``nn.Linear``, and no name of it contains ``blocks``). This module maps those names onto diffusers'
``WanAnimateTransformer3DModel`` with an explicit table, checks every key against the transformer, and loads
the result through diffusers' PEFT integration as the adapter ``"relight"`` with the alpha made explicit.

Other Wan LoRAs (e.g. few-step distillation LoRAs in the ComfyUI/Kijai format, ``diffusion_model.blocks.0.
self_attn.q.lora_down.weight`` / ``lora_up`` / ``alpha``) go through diffusers' own Wan conversion; keys that
the conversion would silently drop are refused here instead.

Every loader refuses what it cannot apply exactly: a key that maps to nothing, a module the transformer lacks,
a shape mismatch, or an adapter that did not land in full after loading.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from .errors import WanAnimateError

if TYPE_CHECKING:
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

RELIGHT_REPO = "Wan-AI/Wan2.2-Animate-14B"
RELIGHT_FILE = "relighting_lora.ckpt"
RELIGHT_ADAPTER = "relight"
# Upstream builds the adapter with LoraConfig(r=128, lora_alpha=128): scale alpha / r = 1.
RELIGHT_RANK = 128
RELIGHT_ALPHA = 128.0

# Original Wan module name inside `blocks.N` -> diffusers module name inside `blocks.N`; the same mapping as
# diffusers' `_convert_non_diffusers_wan_lora_to_diffusers`.
BLOCK_MODULE_MAP: Mapping[str, str] = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
# Original Wan modules outside the blocks that diffusers' Wan conversion also maps (used to check that a
# converted LoRA kept every key it was given).
GLOBAL_MODULE_MAP: Mapping[str, str] = {
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
}

# Prefixes that wrap original Wan names: PEFT's model wrapper and ComfyUI's diffusion model.
_ORIGINAL_PREFIXES = ("base_model.model.", "diffusion_model.")
_PEFT_KEY = re.compile(r"^blocks\.(?P<block>\d+)\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")
_ORIGINAL_KEY = re.compile(
    r"^(?P<stem>.+)\.(?P<kind>lora_down\.weight|lora_up\.weight|lora_A\.weight|lora_B\.weight|alpha|diff_b|diff)$"
)
_DIFFUSERS_KEY = re.compile(r"^(?P<module>.+)\.(?P<param>lora_A\.weight|lora_B\.weight|lora_B\.bias)$")
_ORIGINAL_ROOTS = ("time_projection.", "head.", "text_embedding.", "time_embedding.", "img_emb.")
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)


def _name_keys(keys: list[str], limit: int = 8) -> str:
    """List up to `limit` keys for an error message, then how many more there are."""
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


def resolve_lora_file(source: str | Path, weight_name: str | None = None) -> Path:
    """Find a LoRA file: a local file as is, a file in a local folder, or a file of a hub repository.

    Args:
        source: A local file, a local folder (with ``weight_name``), or a hub repo id (with ``weight_name``).
            Hub files come through the huggingface_hub cache; ``HF_HUB_OFFLINE=1`` uses only the cache.
        weight_name: File name inside a folder or hub repository.

    Returns:
        The local path of the file.

    Raises:
        WanAnimateError: If the file does not exist or cannot be downloaded.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if weight_name is None:
            raise WanAnimateError(f"{path} is a folder: give the LoRA's file name inside it too.")
        if not (path / weight_name).is_file():
            raise WanAnimateError(f"No file {weight_name!r} in {path}.")
        return path / weight_name
    text = str(source)
    if text.lower().endswith(_WEIGHT_SUFFIXES) or not _REPO_ID.match(text):
        raise WanAnimateError(f"LoRA file not found: {text}. Check the path, or give a hub repo id and file name.")
    if weight_name is None:
        raise WanAnimateError(f"{text} looks like a hub repository: give the LoRA's file name in it too.")
    try:
        return Path(hf_hub_download(repo_id=text, filename=weight_name))
    except (OSError, HfHubHTTPError, ValueError) as error:
        raise WanAnimateError(
            f"Could not get {weight_name!r} from the hub repository {text} ({error}). Check the names and the "
            "network, or download the file and pass its local path."
        ) from error


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a LoRA file (safetensors or a PyTorch checkpoint) onto the CPU.

    PyTorch checkpoints are read with ``weights_only=True`` (no code runs from the file); a top-level
    ``state_dict`` entry, as in upstream's ``relighting_lora.ckpt``, is unwrapped.

    Args:
        path: The file.

    Returns:
        The tensors by key, and diffusers' LoRA adapter metadata when a safetensors file carries it.

    Raises:
        WanAnimateError: If the file cannot be read or holds something other than tensors.
    """
    metadata = None
    try:
        if path.suffix == ".safetensors":
            from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata
            from safetensors.torch import load_file

            content: Any = load_file(str(path), device="cpu")
            metadata = _load_sft_state_dict_metadata(str(path))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise WanAnimateError(f"Could not read the LoRA file {path}: {error}") from error
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping):
        raise WanAnimateError(f"{path} does not hold a LoRA state dict (found {type(content).__name__}).")
    not_tensors = [str(key) for key, value in content.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise WanAnimateError(f"{path} is not a LoRA state dict: entries that are not tensors: "
                              f"{_name_keys(not_tensors)}.")
    return dict(content), metadata


# --------------------------------------------------------------------------------------------------------------
# Key mapping and checks
# --------------------------------------------------------------------------------------------------------------


def _strip_original_prefix(key: str) -> str:
    for prefix in _ORIGINAL_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _target_linear(transformer: torch.nn.Module, name: str) -> torch.nn.Linear | None:
    """The `nn.Linear` a LoRA for module `name` would wrap, or None if there is none."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        module = transformer.get_submodule(name)
    except AttributeError:
        return None
    if isinstance(module, BaseTunerLayer):  # already wrapped by another adapter
        module = module.get_base_layer()
    return module if isinstance(module, torch.nn.Linear) else None


def check_lora_targets(state_dict: Mapping[str, torch.Tensor], transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Check a diffusers-named LoRA against the transformer and cast it to the weights' dtype.

    Every key must be ``<module>.lora_A.weight``, ``<module>.lora_B.weight`` or ``<module>.lora_B.bias``, both
    factors of a module must be there, the module must be an ``nn.Linear`` of `transformer`, and the shapes
    must fit it: lora_A (r, in_features), lora_B (out_features, r), bias (out_features,).

    Args:
        state_dict: LoRA tensors by diffusers key, relative to the transformer (no ``transformer.`` prefix).
        transformer: The model the LoRA is for.

    Returns:
        The same keys, each tensor in the dtype of the weight it adds to (when that is a float dtype).

    Raises:
        WanAnimateError: Naming every key that does not fit.
    """
    factors: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    unknown = []
    for key, tensor in state_dict.items():
        match = _DIFFUSERS_KEY.match(key)
        if match is None:
            unknown.append(key)
        else:
            factors[match["module"]][match["param"]] = tensor
    if unknown:
        raise WanAnimateError(f"LoRA keys that are not LoRA factors of a module: {_name_keys(unknown)}.")
    missing, incomplete, mismatched = [], [], []
    checked: dict[str, torch.Tensor] = {}
    for name, params in factors.items():
        linear = _target_linear(transformer, name)
        if linear is None:
            missing.extend(f"{name}.{param}" for param in params)
            continue
        down, up = params.get("lora_A.weight"), params.get("lora_B.weight")
        if down is None or up is None:
            incomplete.extend(f"{name}.{param}" for param in params)
            continue
        rank = down.shape[0]
        bias = params.get("lora_B.bias")
        if (
            down.shape != (rank, linear.in_features)
            or up.shape != (linear.out_features, rank)
            or (bias is not None and bias.shape != (linear.out_features,))
        ):
            mismatched.append(
                f"{name} (lora_A {tuple(down.shape)}, lora_B {tuple(up.shape)} for a Linear "
                f"{linear.in_features}->{linear.out_features})"
            )
            continue
        dtype = linear.weight.dtype if linear.weight.dtype in _CASTABLE else None
        for param, tensor in params.items():
            checked[f"{name}.{param}"] = tensor.to(dtype=dtype).contiguous() if dtype else tensor
    problems = []
    if missing:
        problems.append(f"keys for modules this transformer does not have (or that are not Linear layers): "
                        f"{_name_keys(missing)}")
    if incomplete:
        problems.append(f"keys whose lora_A/lora_B partner is missing: {_name_keys(incomplete)}")
    if mismatched:
        problems.append(f"shapes that do not fit: {_name_keys(mismatched)}")
    if problems:
        raise WanAnimateError("This LoRA does not fit the Wan-Animate transformer: " + "; ".join(problems) + ".")
    return checked


def convert_relighting_state_dict(
    state_dict: Mapping[str, torch.Tensor], transformer: "WanAnimateTransformer3DModel"
) -> dict[str, torch.Tensor]:
    """Map upstream's relighting LoRA (original Wan names) onto the diffusers transformer's module names.

    Keys are ``blocks.N.<module>.lora_A.weight`` / ``.lora_B.weight`` (optionally prefixed by
    ``base_model.model.`` or ``diffusion_model.``) with <module> one of `BLOCK_MODULE_MAP`. The rank must be
    upstream's `RELIGHT_RANK`, since upstream loads the file into an adapter of that rank.

    Args:
        state_dict: The tensors under ``state_dict`` in ``relighting_lora.ckpt``.
        transformer: The diffusers transformer the adapter will be loaded into.

    Returns:
        Diffusers keys relative to the transformer (``blocks.0.attn1.to_q.lora_A.weight``), cast to the
        dtype of the weights they add to.

    Raises:
        WanAnimateError: Naming the keys that map to nothing, map to modules the transformer lacks, do not fit
            their module's shape, lack their partner factor, or have another rank.
    """
    converted: dict[str, torch.Tensor] = {}
    unmapped, duplicated, wrong_rank = [], [], []
    for key, tensor in state_dict.items():
        match = _PEFT_KEY.match(_strip_original_prefix(key))
        if match is None or match["module"] not in BLOCK_MODULE_MAP:
            unmapped.append(key)
            continue
        name = f"blocks.{int(match['block'])}.{BLOCK_MODULE_MAP[match['module']]}"
        target = f"{name}.lora_{match['factor']}.weight"
        if target in converted:
            duplicated.append(key)
        converted[target] = tensor
        rank_dim = 0 if match["factor"] == "A" else 1
        if tensor.ndim != 2 or tensor.shape[rank_dim] != RELIGHT_RANK:
            wrong_rank.append(key)
    if unmapped:
        raise WanAnimateError(
            f"The relighting LoRA has keys that map to no layer of the Wan-Animate transformer: "
            f"{_name_keys(unmapped)}. Use the official {RELIGHT_FILE} from {RELIGHT_REPO}."
        )
    if duplicated:
        raise WanAnimateError(f"The relighting LoRA has the same layer under two prefixes: {_name_keys(duplicated)}.")
    if not converted:
        raise WanAnimateError(f"The relighting LoRA file is empty. Use the official {RELIGHT_FILE}.")
    if wrong_rank:
        raise WanAnimateError(
            f"The relighting LoRA must have rank {RELIGHT_RANK} (upstream's LoraConfig); these factors do not: "
            f"{_name_keys(wrong_rank)}."
        )
    return check_lora_targets(converted, transformer)


def relighting_lora_config(converted: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The PEFT ``LoraConfig`` arguments of the relighting adapter, alpha explicit: upstream's r=128, alpha=128.

    PEFT state dicts carry no alpha, and diffusers would otherwise infer alpha = rank from the tensors; stating
    it keeps the scale alpha / r exactly what upstream used, whatever the inference rules become.

    Args:
        converted: The output of `convert_relighting_state_dict`.

    Returns:
        Keyword arguments for ``peft.LoraConfig`` (diffusers' adapter "metadata").
    """
    return {
        "r": RELIGHT_RANK,
        "lora_alpha": RELIGHT_ALPHA,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": sorted({key.rsplit(".lora_", 1)[0] for key in converted}),
        "use_dora": False,
        "lora_bias": False,
    }


def _is_original_wan(keys: list[str]) -> bool:
    """Whether (prefix-stripped) keys use original Wan module names rather than diffusers' names."""
    return any(
        ".self_attn." in key or ".cross_attn." in key or re.match(r"^blocks\.\d+\.ffn\.\d", key)
        or key.startswith(_ORIGINAL_ROOTS)
        for key in keys
    )


def _original_to_diffusers(stem: str) -> str | None:
    """Diffusers module name of an original Wan module name, or None if diffusers' conversion has none."""
    match = re.match(r"^blocks\.(\d+)\.(.+)$", stem)
    if match and match[2] in BLOCK_MODULE_MAP:
        return f"blocks.{match[1]}.{BLOCK_MODULE_MAP[match[2]]}"
    return GLOBAL_MODULE_MAP.get(stem)


def _unused_original_keys(original: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of an original-format LoRA that diffusers' conversion did not carry into `converted`.

    The conversion drops some keys without an error (DoRA scales, normalisation diffs, full-weight diffs of
    layers, unknown modules); each key here must land in a converted LoRA factor or bias. Normalisation
    diffs that are all zero change nothing and are allowed.
    """
    unused = []
    for key, tensor in original.items():
        match = _ORIGINAL_KEY.match(key)
        if match is None:
            unused.append(key)
            continue
        stem, kind = match["stem"], match["kind"]
        if kind in ("diff", "diff_b") and "norm" in stem and not torch.count_nonzero(tensor):
            continue
        target = _original_to_diffusers(stem)
        if target is None:
            unused.append(key)
        elif kind == "diff_b":
            if f"{target}.lora_B.bias" not in converted:
                unused.append(key)
        elif kind == "diff":
            # diffusers turns only the output head's diff into a LoRA factor (lightx2v distillation LoRAs).
            if stem != "head.head" or f"{target}.lora_A.weight" not in converted:
                unused.append(key)
        elif f"{target}.lora_A.weight" not in converted:
            unused.append(key)
    return unused


def convert_wan_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor], transformer: "WanAnimateTransformer3DModel"
) -> dict[str, torch.Tensor]:
    """Bring a Wan LoRA in any format diffusers knows onto the transformer's module names, refusing unused keys.

    Formats: diffusers (``transformer.blocks.0.attn1.to_q.lora_A.weight``, or without ``transformer.``),
    original Wan names as saved by ComfyUI/Kijai (``diffusion_model.blocks.0.self_attn.q.lora_down.weight``,
    ``.lora_up.weight``, ``.alpha``) or by PEFT (``[base_model.model.]blocks.0.self_attn.q.lora_A.weight``),
    and musubi-tuner (``lora_unet_blocks_0_self_attn_q.lora_down.weight``). Alphas are folded into the factors
    by diffusers' conversion, so the result loads with alpha = rank.

    Args:
        state_dict: The LoRA file's tensors.
        transformer: The diffusers transformer the adapter will be loaded into.

    Returns:
        Diffusers keys relative to the transformer, checked by `check_lora_targets`.

    Raises:
        WanAnimateError: If the format is unknown or any key would go unused.
    """
    from diffusers.loaders import WanLoraLoaderMixin

    keys = list(state_dict)
    if not keys:
        raise WanAnimateError("The LoRA file is empty.")
    if all(key.startswith("transformer.") for key in keys):
        return check_lora_targets({key[len("transformer."):]: value for key, value in state_dict.items()}, transformer)
    if all(key.startswith("lora_unet_") for key in keys):
        original: dict[str, torch.Tensor] | None = None
        to_convert = dict(state_dict)
    else:
        stripped = {_strip_original_prefix(key): value for key, value in state_dict.items()}
        if not _is_original_wan(list(stripped)):
            return check_lora_targets(stripped, transformer)
        original = stripped
        # diffusers converts original names only under ComfyUI's prefix, which it strips from every key.
        to_convert = {f"diffusion_model.{key}": value for key, value in stripped.items()}
    try:
        converted = WanLoraLoaderMixin.lora_state_dict(to_convert)
    except (KeyError, ValueError, IndexError) as error:
        raise WanAnimateError(
            f"diffusers' Wan LoRA conversion refused this file ({type(error).__name__}: {str(error)[:500]}). "
            "Only LoRA factors of the transformer's Linear layers can be loaded, each with its lora_down/lora_up "
            "pair (and image-projection LoRAs need both k_img and v_img)."
        ) from error
    foreign = [key for key in converted if not key.startswith("transformer.")]
    if foreign:
        raise WanAnimateError(f"LoRA keys for something other than the transformer: {_name_keys(foreign)}.")
    converted = {key[len("transformer."):]: value for key, value in converted.items()}
    if original is not None:
        unused = _unused_original_keys(original, converted)
        if unused:
            raise WanAnimateError(
                f"This LoRA has keys that cannot be applied to the Wan-Animate transformer: {_name_keys(unused)}. "
                "Only LoRA factors (lora_down/lora_up, alpha, diff_b) of its Linear layers are supported."
            )
    return check_lora_targets(converted, transformer)


# --------------------------------------------------------------------------------------------------------------
# Adapters on the pipeline
# --------------------------------------------------------------------------------------------------------------


def loaded_adapters(pipeline: "WanAnimatePipeline") -> set[str]:
    """Names of the LoRA adapters loaded on the pipeline (on any of its components)."""
    return {name for names in pipeline.get_list_adapters().values() for name in names}


def active_lora_weights(pipeline: "WanAnimatePipeline") -> dict[str, float]:
    """The adapters that currently act on the transformer, with their weights.

    Args:
        pipeline: The pipeline.

    Returns:
        Weight by adapter name; empty when LoRAs are disabled or none is loaded.
    """
    from peft.tuners.lora import LoraLayer

    found: dict[str, float] = {}
    for module in pipeline.transformer.modules():
        if not isinstance(module, LoraLayer):
            continue
        if module.disable_adapters:
            return {}
        for name in module.active_adapters:
            if name in module.scaling and name not in found:
                rank = module.r[name]
                base = module.lora_alpha[name] / (math.sqrt(rank) if module.use_rslora.get(name) else rank)
                found[name] = module.scaling[name] / base
    return found


def set_lora_weights(pipeline: "WanAnimatePipeline", weights: Mapping[str, float]) -> None:
    """Activate the named adapters with their weights; all others (and weight 0) are off.

    Generation calls this before each job (relighting on in Replacement, off in Animation, by default).

    Args:
        pipeline: A pipeline with the adapters loaded.
        weights: Weight by adapter name. An adapter absent here or with weight 0 does not act.

    Raises:
        WanAnimateError: If a name is not a loaded adapter or a weight is not a finite number.
    """
    unknown = sorted(set(weights) - loaded_adapters(pipeline))
    if unknown:
        raise WanAnimateError(f"LoRA adapter(s) not loaded: {', '.join(unknown)}. Load them first.")
    bad = [name for name, weight in weights.items() if not math.isfinite(weight)]
    if bad:
        raise WanAnimateError(f"LoRA weight must be a finite number for: {', '.join(sorted(bad))}.")
    active = {name: float(weight) for name, weight in weights.items() if weight != 0}
    if not active:
        if loaded_adapters(pipeline):
            pipeline.disable_lora()
        return
    # set_adapters picks the active adapters but does not undo an earlier disable_lora.
    pipeline.enable_lora()
    pipeline.set_adapters(list(active), list(active.values()))


def _stored_tensor(layer: torch.nn.Module, param_name: str) -> torch.Tensor | None:
    """A layer's parameter value, also where sequential CPU offload keeps it (accelerate's hook) off the module."""
    param = getattr(layer, param_name)
    if param is None or not param.is_meta:
        return param
    hook = getattr(layer, "_hf_hook", None)
    for each in getattr(hook, "hooks", (hook,)):
        weights = getattr(each, "weights_map", None)
        if weights is not None and param_name in weights:
            return weights[param_name]
    return None


def _injected_lora_params(transformer: torch.nn.Module, adapter_name: str) -> dict[str, torch.Tensor | None]:
    """The LoRA tensors of `adapter_name` in the transformer, by diffusers key (None where no value is stored)."""
    from peft.tuners.lora import LoraLayer

    params: dict[str, torch.Tensor | None] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            down, up = module.lora_A[adapter_name], module.lora_B[adapter_name]
            params[f"{name}.lora_A.weight"] = _stored_tensor(down, "weight")
            params[f"{name}.lora_B.weight"] = _stored_tensor(up, "weight")
            if up.bias is not None:
                params[f"{name}.lora_B.bias"] = _stored_tensor(up, "bias")
    return params


def _verify_injection(transformer: torch.nn.Module, adapter_name: str, expected: Mapping[str, torch.Tensor]) -> None:
    """Raise unless the adapter holds exactly the expected tensors (diffusers only warns about skipped keys)."""
    injected = _injected_lora_params(transformer, adapter_name)
    missing = sorted(set(expected) - set(injected))
    extra = sorted(set(injected) - set(expected))
    differing = []
    for key in sorted(set(expected) & set(injected)):
        value = injected[key]
        if value is None or value.is_meta or not torch.equal(
            value.detach(), expected[key].to(value.device, value.dtype)
        ):
            differing.append(key)
    if missing or extra or differing:
        raise WanAnimateError(
            f"LoRA {adapter_name!r} did not load exactly: {len(set(expected) & set(injected))} of {len(expected)} "
            f"tensors placed; not placed: {_name_keys(missing) or 'none'}; unexpected: {_name_keys(extra) or 'none'}; "
            f"wrong values: {_name_keys(differing) or 'none'}."
        )


def _add_adapter(
    pipeline: "WanAnimatePipeline",
    state_dict: dict[str, torch.Tensor],
    adapter_name: str,
    weight: float,
    config: dict[str, Any] | None,
) -> str:
    """Load a checked LoRA into the transformer as `adapter_name`, verify it, and activate it at `weight`.

    Adapters that were active stay active with their weights.
    """
    transformer = pipeline.transformer
    if adapter_name in loaded_adapters(pipeline):
        raise WanAnimateError(
            f"A LoRA named {adapter_name!r} is already loaded; choose another name or remove it first "
            f"(pipeline.delete_adapters({adapter_name!r}))."
        )
    if not math.isfinite(weight):
        raise WanAnimateError(f"LoRA weight must be a finite number, got {weight}.")
    previous = active_lora_weights(pipeline)
    with warnings.catch_warnings():
        # PEFT warns whenever a second adapter joins the first; several named adapters are the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        transformer.load_lora_adapter(
            state_dict,
            prefix=None,
            adapter_name=adapter_name,
            metadata=config,
            _pipeline=pipeline,
            low_cpu_mem_usage=True,
        )
    try:
        _verify_injection(transformer, adapter_name, state_dict)
    except WanAnimateError:
        pipeline.delete_adapters(adapter_name)
        raise
    set_lora_weights(pipeline, {**previous, adapter_name: weight})
    return adapter_name


def load_relighting_lora(
    pipeline: "WanAnimatePipeline", source: str | Path | None = None, *, weight: float = 1.0
) -> str:
    """Load upstream's relighting LoRA onto the pipeline's transformer as the adapter ``"relight"``.

    Replacement uses it so the inserted character takes the lighting and colour tone of the scene.

    Args:
        pipeline: A ``WanAnimatePipeline`` (or anything with its LoRA methods and a ``transformer``).
        source: ``None`` for ``relighting_lora.ckpt`` of ``Wan-AI/Wan2.2-Animate-14B`` through the
            huggingface_hub cache; a local file used as is; a local folder or hub repo id holding
            ``relighting_lora.ckpt``.
        weight: Strength the adapter starts with (1.0 = as trained; 0 = loaded but off).

    Returns:
        The adapter name, ``"relight"``.

    Raises:
        WanAnimateError: If the file is missing, is not the relighting LoRA, does not fit the transformer, or
            the adapter is already loaded.
    """
    path = resolve_lora_file(RELIGHT_REPO if source is None else source, RELIGHT_FILE)
    state_dict, _ = read_lora_file(path)
    converted = convert_relighting_state_dict(state_dict, pipeline.transformer)
    return _add_adapter(pipeline, converted, RELIGHT_ADAPTER, weight, relighting_lora_config(converted))


def load_lora(
    pipeline: "WanAnimatePipeline",
    source: str,
    *,
    weight_name: str | None = None,
    adapter_name: str,
    weight: float = 1.0,
) -> str:
    """Load another Wan LoRA (e.g. a few-step distillation LoRA) onto the pipeline's transformer.

    Args:
        pipeline: A ``WanAnimatePipeline``.
        source: A local file, or a local folder / hub repo id together with ``weight_name``.
        weight_name: The file name inside the folder or repository.
        adapter_name: Name of the adapter, used later in `set_lora_weights`.
        weight: Strength the adapter starts with (0 = loaded but off).

    Returns:
        The adapter name.

    Raises:
        WanAnimateError: If the file is missing, its format is unknown, any key would go unused, or the name
            is taken.
    """
    path = resolve_lora_file(source, weight_name)
    state_dict, metadata = read_lora_file(path)
    converted = convert_wan_lora_state_dict(state_dict, pipeline.transformer)
    config = None
    if metadata:
        # diffusers saves one LoraConfig per component, keyed "transformer.<field>".
        config = {key[len("transformer."):]: value for key, value in metadata.items() if key.startswith("transformer.")}
        config = config or None
    return _add_adapter(pipeline, converted, adapter_name, weight, config)
