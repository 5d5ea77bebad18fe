"""Loading the Wan2.2-Animate-14B diffusers pipeline: source, dtypes, memory mode, optional fp8 and bf16 copy.

One entry point, `load_pipeline`, takes a Hugging Face repo id (downloaded through ``huggingface_hub`` with only
the files the pipeline reads) or a local folder in the same layout, and returns a `WanAnimatePipeline` placed on
the GPU in the chosen memory mode. What was chosen, and why, is attached as `RuntimeInfo` (`runtime_info`), so the
app and the CLI can say where the model runs. `get_pipeline` keeps the one loaded pipeline of the process.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, get_args

import torch

from .errors import WanAnimateError
from .progress import ProgressCallback

if TYPE_CHECKING:
    from diffusers import WanAnimatePipeline

logger = logging.getLogger("wan_animate")

DEFAULT_MODEL_ID = "Wan-AI/Wan2.2-Animate-14B-Diffusers"

MemoryMode = Literal["auto", "none", "model", "group", "sequential"]
MEMORY_MODES: tuple[str, ...] = get_args(MemoryMode)

GiB = 1024**3

WEIGHT_COMPONENTS = ("text_encoder", "image_encoder", "vae", "transformer")
"""The pipeline's components stored as safetensors weights (the others are configs and tokenizer files)."""

# The files `WanAnimatePipeline.from_pretrained` reads, in the layout diffusers' `save_pretrained` writes
# (Wan-AI/Wan2.2-Animate-14B-Diffusers). Left out on purpose: README/.gitattributes, `.bin`/`.pth` duplicates, and
# the CLIP tokenizer files the repo also stores under image_processor/ (only the image processor config is used).
_CONFIG_PATTERNS = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*.json",  # tokenizer.json, tokenizer_config.json, special_tokens_map.json
    "tokenizer/*.model",  # spiece.model: the slow-tokenizer fallback when tokenizer.json cannot be used
    "image_processor/preprocessor_config.json",
)


# Peak GPU memory (torch.cuda.max_memory_allocated) of the full-size pipeline, measured on one H100 with
# benchmarks/bench_pipeline.py (benchmarks/RESULTS.md, section 2: diffusers 0.42.1, bf16 transformer and UMT5,
# fp32 VAE and CLIP, one 77-frame segment):
#   - everything on the GPU ("none"), 720p: 67.2 GiB (74.2 GiB reserved);
#   - model CPU offload ("model"), 480p: 37.7 GiB -- and slower than group offload (57.6 s vs 25.9 s for the same
#     2-step job, the transformer being copied in and out every segment), so `auto` never picks it;
#   - block-level group offload with CUDA streams ("group"), 480p: 13.7 GiB (720p needs VAE tiling: 15.7 GiB);
#   - sequential CPU offload, 480p: 9.6 GiB.
# fp8 storage halves the transformer's weights (~34 GB -> ~17 GB, -16 GiB) in the modes that keep it on the GPU.
FULL_PEAK_ALL_ON_GPU = int(67.2 * GiB)
FULL_PEAK_GROUP_OFFLOAD = int(13.7 * GiB)
FP8_TRANSFORMER_SAVING = 16 * GiB
HEADROOM = 1.10
"""Free memory must exceed a peak by 10%: allocator fragmentation, cuDNN/cuBLAS workspaces, other processes."""
VAE_TILING_BELOW = 32 * GiB
"""With less free GPU memory than this, the VAE works in tiles (measured: 720p in group mode under a 24 GiB cap
runs out of memory at the third VAE encode without tiling; tiling costs 1.7-1.8x the VAE's time)."""
COMPILE_FROM = 75 * GiB
"""GPUs with this much memory (H100 80 GB, H200) compile the transformer's blocks by default in mode ``none``:
measured 11.5 s instead of 12.9 s per 720p step (-11 %, -16 % at 480p) for ~15 s of compilation per resolution."""


@dataclass(frozen=True)
class MemoryNeeds:
    """Peak GPU memory (bytes) of one generation in each memory mode that has a known peak."""

    none: int
    group: int


def memory_needs(fp8_storage: bool = False) -> MemoryNeeds:
    """The full-size pipeline's peaks (see the figures above), with fp8 transformer storage if asked for."""
    saving = FP8_TRANSFORMER_SAVING if fp8_storage else 0
    return MemoryNeeds(
        none=FULL_PEAK_ALL_ON_GPU - saving,
        group=FULL_PEAK_GROUP_OFFLOAD,
    )


def choose_memory_mode(free_gpu_bytes: int, needs: MemoryNeeds | None = None) -> tuple[str, str]:
    """Pick the fastest memory mode whose peak fits in the free GPU memory.

    Faster to slower: ``none`` (all on the GPU), ``group`` (the transformer's and text encoder's blocks streamed
    from the CPU), ``sequential`` (every layer streamed; always fits). ``model`` (one component at a time) is
    never chosen: measured, it is both slower and larger than ``group`` (see the figures above).

    Args:
        free_gpu_bytes: Free memory of the GPU (``torch.cuda.mem_get_info()[0]``).
        needs: Peak memory per mode; defaults to the full-size pipeline (`memory_needs()`).

    Returns:
        The mode and a human-readable reason, e.g. ``("group", "78.0 GiB free ...")``.
    """
    needs = needs or memory_needs()
    free = free_gpu_bytes / GiB
    for mode, peak, label in (
        ("none", needs.none, "everything on the GPU"),
        ("group", needs.group, "group offload"),
    ):
        if free_gpu_bytes >= peak * HEADROOM:
            return mode, f"{free:.1f} GiB free on the GPU, {label} peaks at ~{peak / GiB:.1f} GiB"
    return "sequential", (
        f"only {free:.1f} GiB free on the GPU, less than group offload's ~{needs.group / GiB:.1f} GiB peak: "
        "sequential CPU offload (slow)"
    )


@dataclass(frozen=True)
class RuntimeInfo:
    """Where and how a loaded pipeline runs (attached to the pipeline as ``pipe.wan_runtime``)."""

    device: str
    """``"cuda:0"`` or ``"cpu"``."""
    device_name: str
    """The GPU's name, or ``"CPU"``."""
    dtype: str
    """Compute dtype of the transformer and text encoder, e.g. ``"bfloat16"`` (VAE and CLIP stay float32)."""
    memory_mode: str
    """``none``, ``model``, ``group`` or ``sequential``."""
    reason: str
    """Why this memory mode was used."""
    fp8_storage: bool
    """Whether the transformer's weights are stored in fp8 (computed in ``dtype``)."""
    compiled: bool = False
    """Whether the transformer's repeated blocks are compiled with ``torch.compile``."""
    vae_tiling: bool = False
    """Whether the VAE encodes and decodes in tiles (less memory, slower)."""

    def summary(self) -> str:
        """One line for the UI, e.g. ``GPU NVIDIA H100 · bfloat16 · memory mode none (...)``."""
        where = "CPU (slow, for tiny test models only)" if self.device == "cpu" else f"GPU {self.device_name}"
        extras = [name for name, on in (("fp8 weights", self.fp8_storage), ("compiled", self.compiled),
                                         ("VAE tiling", self.vae_tiling)) if on]
        weights = ", ".join([self.dtype, *extras])
        return f"Runs on {where} · {weights} · memory mode {self.memory_mode} ({self.reason})"


def runtime_info(pipe: Any) -> RuntimeInfo | None:
    """The `RuntimeInfo` that `load_pipeline` attached to ``pipe``, or None for a pipeline it did not load."""
    return getattr(pipe, "wan_runtime", None)


# ---------------------------------------------------------------------------------------------------------------
# Device and dtype


_DTYPE_NAMES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_device(device: str | torch.device | None = None, *, allow_cpu: bool = False) -> torch.device:
    """The device to run on: the given one, else the current CUDA GPU; a CPU only when ``allow_cpu``.

    Raises:
        WanAnimateError: No CUDA GPU (or a CPU asked for) without ``allow_cpu``.
    """
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WanAnimateError(
            "No CUDA GPU is available (torch.cuda.is_available() is False). Wan2.2-Animate-14B needs an NVIDIA GPU: "
            "run on a machine with one, or install a CUDA build of PyTorch."
        )
    if device.type == "cpu" and not allow_cpu:
        raise WanAnimateError(
            "No CUDA GPU found: Wan2.2-Animate-14B needs an NVIDIA GPU (24 GB or more is practical). "
            "Running on the CPU is only sensible for tiny test models; allow it with allow_cpu=True (--allow-cpu)."
        )
    if device.type not in ("cuda", "cpu"):
        raise WanAnimateError(f"Unsupported device {device}: use a CUDA GPU (or the CPU for tiny test models).")
    return device


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cuda") -> torch.dtype:
    """The compute dtype of the transformer and text encoder.

    ``auto`` is bfloat16 on a CUDA GPU that supports it, else float16; float32 on the CPU. A dtype given by
    name (``bfloat16``/``bf16``, ``float16``/``fp16``, ``float32``/``fp32``) or as a ``torch.dtype`` is used as is.

    Raises:
        WanAnimateError: An unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name == "auto":
        if torch.device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPE_NAMES:
        raise WanAnimateError(f"Unknown dtype {dtype!r}: use auto, bfloat16, float16 or float32.")
    return _DTYPE_NAMES[name]


def component_dtypes(compute_dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Per-component load dtypes (``from_pretrained(dtype=...)``): VAE and CLIP image encoder in float32.

    diffusers' Wan documentation (https://huggingface.co/docs/diffusers/api/pipelines/wan, "Notes"): "Set the
    AutoencoderKLWan dtype to torch.float32 for better decoding quality"; its image-to-video examples load the
    CLIPVisionModel image encoder with dtype=torch.float32 as well, and the transformer and UMT5 text encoder in
    torch.bfloat16. Both float32 components are small (VAE ~0.5 GB, CLIP ~2.5 GB in float32).
    """
    return {"default": compute_dtype, "vae": torch.float32, "image_encoder": torch.float32}


# ---------------------------------------------------------------------------------------------------------------
# Source: local folder or Hugging Face Hub


def allow_patterns(include_transformer_weights: bool = True) -> list[str]:
    """The repo files the pipeline needs (``snapshot_download(allow_patterns=...)``).

    Args:
        include_transformer_weights: False when the transformer comes from a local bf16 copy: then only its
            config is fetched, not the 69 GB of fp32 shards.
    """
    patterns = list(_CONFIG_PATTERNS)
    for component in WEIGHT_COMPONENTS:
        patterns.append(f"{component}/config.json")
        if component != "transformer" or include_transformer_weights:
            patterns += [f"{component}/*.safetensors", f"{component}/*.safetensors.index.json"]
    return patterns


def download_size(files: Iterable[tuple[str, int | None]], patterns: list[str]) -> int:
    """Total bytes of the repo files that ``patterns`` select (as ``snapshot_download`` selects them).

    Args:
        files: ``(path in repo, size in bytes)`` of every file; an unknown size (None) counts as 0.
        patterns: ``allow_patterns`` globs.
    """
    from huggingface_hub.utils import filter_repo_objects

    sizes = dict(files)
    return sum(sizes[path] or 0 for path in filter_repo_objects(list(sizes), allow_patterns=patterns))


def _remote_files(repo_id: str, revision: str | None) -> list[tuple[str, int | None]]:
    """``(path, size)`` of every file of a hub repo at ``revision`` (one API call)."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    return [(sibling.rfilename, sibling.size) for sibling in info.siblings or []]


def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE``, read now rather than at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE)


def _is_repo_id(source: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None


def _format_size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.1f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.1f} MB"


def _progress_tqdm(progress: ProgressCallback | None):
    """A tqdm class for ``snapshot_download`` that also reports the downloaded bytes to ``progress``.

    Only the bar of bytes written to the cache (named ``huggingface_hub.snapshot_download``) is reported; the
    console bars stay as huggingface_hub draws them.
    """
    from huggingface_hub.utils import tqdm as hf_tqdm

    if progress is None:
        return hf_tqdm

    class ReportingTqdm(hf_tqdm):
        def __init__(self, *args, name: str | None = None, **kwargs):
            super().__init__(*args, name=name, **kwargs)
            self._report = name == "huggingface_hub.snapshot_download"
            self._done = 0  # counted here: a disabled bar (no TTY, e.g. a server) does not count its updates
            self._reported_percent = -1

        def update(self, n=1):
            result = super().update(n)
            self._done += n or 0
            if self._report and self.total:
                done, total = int(self._done), int(self.total)
                percent = 100 * done // total
                if percent != self._reported_percent:  # the bar updates per chunk: report each percent once
                    self._reported_percent = percent
                    progress(done, total, f"Downloading model ({_format_size(done)} of {_format_size(total)})")
            return result

    return ReportingTqdm


def resolve_source(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    progress: ProgressCallback | None = None,
    include_transformer_weights: bool = True,
) -> Path:
    """The local folder of a pipeline: a folder as is, or a hub repo downloaded (only the needed files).

    A hub repo goes through ``huggingface_hub.snapshot_download`` with `allow_patterns`, so the Hugging Face
    cache (``HF_HOME``/``HF_HUB_CACHE``) and ``HF_HUB_OFFLINE`` apply; its total size is logged first.

    Args:
        source: A local folder with ``model_index.json``, or a repo id such as `DEFAULT_MODEL_ID`.
        revision: Branch, tag or commit of a hub repo (ignored for a folder).
        progress: Called with the bytes downloaded.
        include_transformer_weights: False to fetch only the transformer's config (its bf16 copy is local).

    Raises:
        WanAnimateError: A missing folder, an unknown or gated repo, or offline with nothing cached.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise WanAnimateError(
                f"{folder} is not a diffusers pipeline folder (no model_index.json). Point to the folder of "
                f"{DEFAULT_MODEL_ID} (or a copy of it), or give the repo id to download it."
            )
        if revision is not None:
            logger.warning("Revision %r ignored: %s is a local folder.", revision, folder)
        return folder
    source = str(source)
    if not _is_repo_id(source):
        raise WanAnimateError(
            f"Model folder {source} does not exist, and it is not a Hugging Face repo id (owner/name)."
        )
    return _download(source, revision, progress, allow_patterns(include_transformer_weights))


def _download(repo_id: str, revision: str | None, progress: ProgressCallback | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    if offline:
        logger.info("HF_HUB_OFFLINE is set: using the cached snapshot of %s (size check skipped).", repo_id)
    else:
        try:
            files = _remote_files(repo_id, revision)
        except Exception as error:  # noqa: BLE001 - the size is informative only; the download reports real errors
            logger.warning("Could not look up the size of %s: %s", repo_id, error)
        else:
            selected = download_size(files, patterns)
            logger.info(
                "Model %s%s: %s in the selected files (of %s in the repo); files already in the Hugging Face "
                "cache are not downloaded again.",
                repo_id, f"@{revision}" if revision else "", _format_size(selected),
                _format_size(sum(size or 0 for _, size in files)),
            )
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            local_files_only=offline,
            tqdm_class=_progress_tqdm(progress),
        )
    except GatedRepoError as error:
        raise WanAnimateError(
            f"{repo_id} is gated: accept its terms on huggingface.co and log in (hf auth login or HF_TOKEN)."
        ) from error
    except RepositoryNotFoundError as error:
        raise WanAnimateError(
            f"Repository {repo_id} was not found on the Hugging Face Hub (or it is private: set HF_TOKEN)."
        ) from error
    except RevisionNotFoundError as error:
        raise WanAnimateError(f"Revision {revision!r} does not exist in {repo_id}.") from error
    except LocalEntryNotFoundError as error:
        raise WanAnimateError(
            f"{repo_id} is not in the Hugging Face cache and the Hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}. Download it once with a network connection, or "
            "point to a local folder."
        ) from error
    except HfHubHTTPError as error:
        raise WanAnimateError(f"Downloading {repo_id} failed: {error}. Check the connection and try again.") from error
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# bf16 copy of the transformer (the repo stores it in fp32: 69 of its 82 GB)


def bf16_copy_dir(source: str | os.PathLike, revision: str | None = None) -> Path:
    """Where the bf16 copy of a source's transformer lives, next to the Hugging Face cache.

    ``<HF_HOME>/wan_animate/<repo id>--<revision or main>/transformer`` for a hub repo, and
    ``<HF_HOME>/wan_animate/<folder name>-<path hash>--local/transformer`` for a local folder.
    """
    from huggingface_hub import constants

    folder = Path(source).expanduser()
    if folder.is_dir():
        resolved = str(folder.resolve())
        key = f"{folder.name}-{hashlib.sha1(resolved.encode()).hexdigest()[:10]}--local"
    else:
        key = f"{str(source).replace('/', '--')}--{revision or 'main'}"
    return Path(constants.HF_HOME) / "wan_animate" / key / "transformer"


def _weights_size(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.glob("*.safetensors"))


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _same_architecture(config_a: Path, config_b: Path) -> bool:
    """Whether two transformer configs describe the same model.

    Only the keys both files have are compared: a config written by a newer diffusers also lists the defaults of
    options added since (the repo's was written by an older one), and bookkeeping keys (``_name_or_path``,
    ``_diffusers_version``) differ anyway.
    """
    a, b = json.loads(config_a.read_text()), json.loads(config_b.read_text())
    shared = {key for key in a.keys() & b.keys() if not key.startswith("_")}
    return all(a[key] == b[key] for key in shared)


def _save_bf16_copy(transformer: torch.nn.Module, copy_dir: Path, source_dir: Path) -> None:
    """Save the loaded bf16 transformer to ``copy_dir``, atomically (a half-written copy is never used)."""
    partial = copy_dir.with_name(f"{copy_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        transformer.save_pretrained(partial, safe_serialization=True)
        shutil.rmtree(copy_dir, ignore_errors=True)
        os.replace(partial, copy_dir)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        logger.warning("Could not save the bf16 transformer copy to %s: %s", copy_dir, error)
        return
    logger.info(
        "Saved a bf16 copy of the transformer to %s (%s; the source weights are %s). Later loads read it.",
        copy_dir, _format_size(_weights_size(copy_dir)), _format_size(_weights_size(source_dir)),
    )


# ---------------------------------------------------------------------------------------------------------------
# Memory modes


def apply_memory_mode(pipe: "WanAnimatePipeline", mode: str, device: str | torch.device) -> None:
    """Place the pipeline's components for ``mode`` on ``device`` (a CUDA GPU, or the CPU with ``none``).

    - ``none``: every component on the device.
    - ``model``: diffusers' model CPU offload, one whole component on the GPU at a time.
    - ``group``: block-level group offloading with CUDA streams for the transformer and the UMT5 text encoder
      (the next block is copied while the current one runs); the VAE and CLIP stay on the GPU.
    - ``sequential``: diffusers' sequential CPU offload, every layer streamed (slowest, least memory).
    - ``auto``: `choose_memory_mode` with the GPU's free memory.

    Raises:
        WanAnimateError: An unknown mode, or an offloading mode on the CPU.
    """
    device = torch.device(device)
    if mode not in MEMORY_MODES:
        raise WanAnimateError(f"Unknown memory mode {mode!r}: use one of {', '.join(MEMORY_MODES)}.")
    if mode == "auto":
        mode, reason = _auto_mode(device, fp8_storage=False)
        logger.info("Memory mode %s: %s", mode, reason)
    if device.type != "cuda" and mode != "none":
        raise WanAnimateError(f"Memory mode {mode!r} needs a CUDA GPU; on the CPU use 'none'.")
    if mode == "none":
        pipe.to(device)
    elif mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        from diffusers.hooks import apply_group_offloading

        options = dict(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
        pipe.transformer.enable_group_offload(**options)
        apply_group_offloading(pipe.text_encoder, **options)
        for name in ("vae", "image_encoder"):
            getattr(pipe, name).to(device)


def _auto_mode(device: torch.device, fp8_storage: bool) -> tuple[str, str]:
    if device.type != "cuda":
        return "none", "on the CPU there is no GPU memory to manage"
    free, _total = torch.cuda.mem_get_info(device)
    return choose_memory_mode(free, memory_needs(fp8_storage))


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def should_compile(memory_mode: str, total_gpu_bytes: int) -> bool:
    """Whether ``compile_blocks="auto"`` compiles the transformer: mode ``none`` on a GPU of at least `COMPILE_FROM`.

    That is where compiling was measured to be the fastest configuration. Under offloading the blocks move
    between devices through hooks, and on the CPU compiling is not worth it for the tiny models that run there.
    """
    return memory_mode == "none" and total_gpu_bytes >= COMPILE_FROM


def should_tile_vae(memory_mode: str, free_gpu_bytes: int) -> bool:
    """Whether the VAE should work in tiles: an offloading mode and less than `VAE_TILING_BELOW` free.

    In mode ``none`` the full pipeline needs far more than that anyway; on smaller GPUs tiling is what lets a
    720p job finish (see `VAE_TILING_BELOW`).
    """
    return memory_mode in ("group", "sequential") and free_gpu_bytes < VAE_TILING_BELOW


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_pipeline(
    source: str | os.PathLike = DEFAULT_MODEL_ID,
    *,
    revision: str | None = None,
    dtype: str | torch.dtype = "auto",
    memory_mode: MemoryMode = "auto",
    fp8_storage: bool = False,
    keep_bf16_copy: bool = False,
    allow_cpu: bool = False,
    device: str | torch.device | None = None,
    compile_blocks: bool | Literal["auto"] = "auto",
    vae_tiling: bool | Literal["auto"] = "auto",
    progress: ProgressCallback | None = None,
) -> "WanAnimatePipeline":
    """Load Wan2.2-Animate-14B as a ready `WanAnimatePipeline` (``pipe.wan_runtime`` says how it runs).

    Args:
        source: A hub repo id (downloaded into the Hugging Face cache) or a local folder in the same layout.
        revision: Branch, tag or commit of a hub repo.
        dtype: Compute dtype of the transformer and text encoder (`resolve_dtype`); VAE and CLIP stay float32.
        memory_mode: ``auto`` (`choose_memory_mode` from the free GPU memory), ``none``, ``model``, ``group``
            or ``sequential`` (see `apply_memory_mode`). Always ``none`` on the CPU.
        fp8_storage: Store the transformer's weights in float8 (e4m3) and compute in ``dtype``, layer by layer
            (halves its memory; a small quality cost).
        keep_bf16_copy: With a bf16 compute dtype, save the transformer in bf16 on the first load (the repo
            stores it in fp32) and load that copy afterwards, without fetching the fp32 files again.
        allow_cpu: Allow running without a CUDA GPU (float32, only sensible for tiny test models).
        device: The device; defaults to the current CUDA GPU.
        compile_blocks: Compile the transformer's repeated blocks (``torch.compile``, once per resolution and LoRA
            weight seen, ~15 s each). ``auto``: on in mode ``none`` on GPUs of at least 75 GiB (`should_compile`),
            with Triton installed, in a process that is not one of several (torchrun).
        vae_tiling: Encode and decode with the VAE in tiles. ``auto``: on in the offloading modes when less than
            32 GiB of GPU memory is free (`should_tile_vae`).
        progress: Called as the download and the loading stages advance.

    Raises:
        WanAnimateError: No GPU without ``allow_cpu``, a bad source or option, or a folder that cannot be loaded.
    """
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

    def report(done: int, description: str) -> None:
        if progress is not None:
            progress(done, 4, description)

    device = resolve_device(device, allow_cpu=allow_cpu)
    compute_dtype = resolve_dtype(dtype, device)
    if memory_mode not in MEMORY_MODES:
        raise WanAnimateError(f"Unknown memory mode {memory_mode!r}: use one of {', '.join(MEMORY_MODES)}.")
    if device.type == "cpu":
        logger.warning("No GPU: the pipeline runs on the CPU in %s, which is only practical for tiny test models.",
                       str(compute_dtype).removeprefix("torch."))
        if memory_mode not in ("auto", "none"):
            logger.warning("Memory mode %r ignored on the CPU: everything stays in CPU memory.", memory_mode)
        memory_mode = "none"
    if fp8_storage and not hasattr(torch, "float8_e4m3fn"):
        raise WanAnimateError("fp8 storage needs a PyTorch with torch.float8_e4m3fn (2.1 or newer).")

    copy_dir = None
    if keep_bf16_copy:
        if compute_dtype == torch.bfloat16:
            copy_dir = bf16_copy_dir(source, revision)
        else:
            logger.warning("keep_bf16_copy ignored: the compute dtype is %s, not bfloat16.", compute_dtype)
    use_copy = copy_dir is not None and _has_weights(copy_dir)

    report(0, "Fetching model files")
    folder = resolve_source(source, revision=revision, progress=progress, include_transformer_weights=not use_copy)
    if use_copy and not _same_architecture(copy_dir / "config.json", folder / "transformer" / "config.json"):
        logger.warning("The bf16 copy in %s does not match %s's transformer config: reloading from the source.",
                       copy_dir, source)
        use_copy = False
        folder = resolve_source(source, revision=revision, progress=progress)

    report(1, "Loading the transformer")
    try:
        if use_copy:
            logger.info("Loading the transformer from its bf16 copy in %s (%s).", copy_dir,
                        _format_size(_weights_size(copy_dir)))
            transformer = WanAnimateTransformer3DModel.from_pretrained(copy_dir, dtype=compute_dtype)
        else:
            transformer = WanAnimateTransformer3DModel.from_pretrained(folder, subfolder="transformer",
                                                                       dtype=compute_dtype)
            if copy_dir is not None:
                _save_bf16_copy(transformer, copy_dir, folder / "transformer")
        report(2, "Loading the text encoder, VAE and image encoder")
        pipe = WanAnimatePipeline.from_pretrained(
            folder, transformer=transformer, dtype=component_dtypes(compute_dtype)
        )
    except (OSError, ValueError) as error:
        raise WanAnimateError(f"Could not load the pipeline from {folder}: {error}") from error

    if fp8_storage:
        # Storage in fp8, each layer upcast to the compute dtype just for its forward (diffusers skips the
        # precision-sensitive patch embedding, condition embedder and norms).
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)

    report(3, "Placing the model on the GPU" if device.type == "cuda" else "Preparing the model on the CPU")
    if memory_mode == "auto":
        memory_mode, reason = _auto_mode(device, fp8_storage)
    elif device.type == "cpu":
        reason = "on the CPU there is no GPU memory to manage"
    else:
        reason = "chosen explicitly"
    logger.info("Memory mode %s: %s", memory_mode, reason)
    apply_memory_mode(pipe, memory_mode, device)

    free, total = torch.cuda.mem_get_info(device) if device.type == "cuda" else (0, 0)
    if vae_tiling == "auto":
        vae_tiling = device.type == "cuda" and should_tile_vae(memory_mode, free)
    if vae_tiling:
        logger.info("VAE tiling on (%s free on the GPU): less memory, slower encoding and decoding.",
                    _format_size(free))
        pipe.vae.enable_tiling()
    if compile_blocks == "auto":
        compile_blocks = device.type == "cuda" and should_compile(memory_mode, total)
        if compile_blocks and importlib.util.find_spec("triton") is None:
            logger.warning("Not compiling the transformer: torch.compile needs Triton on the GPU, which is missing.")
            compile_blocks = False
        if compile_blocks:
            from .parallel import launched_with_several_processes

            if launched_with_several_processes():
                logger.info("Not compiling the transformer: compiling with context parallelism is untested.")
                compile_blocks = False
    if compile_blocks:
        # Compiling one block and reusing it for all 40 costs ~15 s per resolution (diffusers' regional
        # compilation). No fullgraph: LoRA layers added later may break the graph, which must not fail a job.
        logger.info("Compiling the transformer's repeated blocks on first use (about 15 s per resolution).")
        pipe.transformer.compile_repeated_blocks()

    pipe.wan_runtime = RuntimeInfo(
        device=str(device),
        device_name=_device_name(device),
        dtype=str(compute_dtype).removeprefix("torch."),
        memory_mode=memory_mode,
        reason=reason,
        fp8_storage=fp8_storage,
        compiled=bool(compile_blocks),
        vae_tiling=bool(vae_tiling),
    )
    logger.info("%s", pipe.wan_runtime.summary())
    report(4, "Model ready")
    return pipe


# ---------------------------------------------------------------------------------------------------------------
# The one cached pipeline of the process


class _PipelineSlot:
    """One loaded pipeline and the arguments it was loaded with; loading with others replaces it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: tuple | None = None
        self.pipeline: Any = None

    def clear(self) -> None:
        """Drop the pipeline and give its GPU memory back."""
        pipeline, self.pipeline, self.key = self.pipeline, None, None
        if pipeline is None:
            return
        if hasattr(pipeline, "remove_all_hooks"):
            pipeline.remove_all_hooks()  # accelerate's offload hooks hold references to the modules
        del pipeline
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_SLOT = _PipelineSlot()


_LOAD_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(load_pipeline).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}
"""`load_pipeline`'s defaults, so that leaving an argument out and passing its default load the same pipeline."""


def _cache_key(load_kwargs: dict[str, Any]) -> tuple:
    """The loading arguments that define a pipeline (progress aside), normalised (``"bf16"`` = ``"bfloat16"``)."""
    arguments = {**_LOAD_DEFAULTS, **load_kwargs}
    arguments.pop("progress", None)
    dtype = arguments["dtype"]
    if str(dtype).lower() != "auto":
        arguments["dtype"] = str(resolve_dtype(dtype))
    arguments["source"] = str(arguments["source"])
    arguments["device"] = None if arguments["device"] is None else str(torch.device(arguments["device"]))
    return tuple(sorted(arguments.items()))


def get_pipeline(**load_kwargs: Any) -> "WanAnimatePipeline":
    """The process's one pipeline, loaded by `load_pipeline(**load_kwargs)` on first use.

    The same arguments return the same pipeline; other arguments free the loaded one (GPU memory first) and
    load anew. ``progress`` is passed on but is not part of what identifies a pipeline.
    """
    key = _cache_key(load_kwargs)
    with _SLOT.lock:
        if _SLOT.key == key and _SLOT.pipeline is not None:
            return _SLOT.pipeline
        _SLOT.clear()
        pipeline = load_pipeline(**load_kwargs)
        _SLOT.key, _SLOT.pipeline = key, pipeline
        return pipeline


def cached_pipeline() -> "WanAnimatePipeline | None":
    """The pipeline `get_pipeline` holds now, if any (without loading)."""
    return _SLOT.pipeline


def clear_pipeline_cache() -> None:
    """Drop the cached pipeline and free its memory (the next `get_pipeline` loads again)."""
    with _SLOT.lock:
        _SLOT.clear()


def describe_runtime(**load_kwargs: Any) -> str:
    """Where the pipeline loaded with ``load_kwargs`` runs, or will run before it is loaded. Never raises.

    For the UI's runtime line: the loaded pipeline's `RuntimeInfo`, else the device, dtype and memory mode that
    `load_pipeline` would choose now.
    """
    arguments = {"dtype": "auto", "memory_mode": "auto", "fp8_storage": False, "allow_cpu": False, **load_kwargs}
    try:
        pipeline = _SLOT.pipeline
        if pipeline is not None and _SLOT.key == _cache_key(load_kwargs) and runtime_info(pipeline) is not None:
            return runtime_info(pipeline).summary()
        device = resolve_device(arguments.get("device"), allow_cpu=arguments["allow_cpu"])
        compute_dtype = str(resolve_dtype(arguments["dtype"], device)).removeprefix("torch.")
    except WanAnimateError as error:
        return f"Not available: {error}"
    if device.type == "cpu":
        return (f"Will run on CPU (slow, for tiny test models only) · {compute_dtype} · memory mode none "
                "· model not loaded yet")
    mode = arguments["memory_mode"]
    if mode == "auto":
        mode, reason = _auto_mode(device, arguments["fp8_storage"])
        mode = f"{mode} ({reason})"
    fp8 = ", fp8 weights" if arguments["fp8_storage"] else ""
    return f"Will run on GPU {_device_name(device)} · {compute_dtype}{fp8} · memory mode {mode} · model not loaded yet"
