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


# ---------------------------------------------------------------------------------------------------------------
# Memory policy: what `auto` does with a GPU memory budget


@dataclass(frozen=True)
class MemoryPlan:
    """How the full-size pipeline runs within a GPU memory budget: one row of `MEMORY_PLANS`."""

    budget_gib: float
    """The row applies to budgets of at least this much usable GPU memory (see `MEMORY_PLANS` for the rule)."""
    memory_mode: str
    """``none``, ``group`` or ``sequential`` (see `apply_memory_mode`), the same for every resolution: it is set
    once per process, at load, before the jobs' resolutions are known."""
    vae_tiling: tuple[str, ...]
    """The resolutions whose VAE works in tiles (switched per job by `apply_vae_tiling`)."""
    fp8_storage: bool
    """Whether the row is for a transformer stored in fp8 (``fp8_storage=True``, asked for by the user: it
    changes the outputs, so `auto` never turns it on)."""
    measured: str
    """The measurement behind the row: where, under which cap, peak allocated / reserved."""


MEMORY_PLANS: tuple[MemoryPlan, ...] = (
    # bf16 transformer. Figures: benchmarks/RESULTS.md section 4 (one H200, diffusers 0.42.1, caps set with
    # torch.cuda.set_per_process_memory_fraction, one 77-frame segment, 2 steps, bf16 transformer and UMT5, fp32 VAE
    # and CLIP) and section 2 (one H100). Step times under the caps: none 3.6 s (480p) / 12.7 s (720p); group 1.15x /
    # 1.06x that; sequential 2.5x; VAE tiling costs 1.7-1.8x the VAE's time, not the steps'. A row's budget is the
    # usable memory of the GPUs it is for (a "48 GB" card has 44-47 GiB, a "24 GB" one 22.5-23.5 GiB), at least the
    # reserved peak measured for it. Model offload is never a plan: slower and larger than group offload (480p: 57.6
    # vs 25.9 s, 37.7 vs 13.7 GiB; the transformer is copied in and out every segment).
    MemoryPlan(75, "none", (), False,
               "H100, no cap: 720p 67.2 GiB allocated / 74.2 reserved, 480p 55.2 / 58.2 (RESULTS.md section 2)"),
    MemoryPlan(70, "none", ("720p",), False,
               "H200, cap 70 GiB: untiled 720p completes at 65.3 / 69.8 GiB, 480p 54.5 / 58.1 (section 4); 720p's VAE "
               "stays tiled for the Space's LoRAs (~2.2 GB more) and a reserved peak at the cap"),
    MemoryPlan(40, "group", (), False,
               "H200, cap 48 GiB: none cannot (45.8 GiB resident); group 720p 21.8 / 31.8 GiB, 480p 13.8 / 16.8 "
               "(section 4)"),
    MemoryPlan(22.5, "group", ("720p",), False,
               "H200, cap 24 GiB: 720p group OOM untiled, tiled 14.6 / 20.2 GiB; 480p group 13.7 / 16.7 (section 4)"),
    MemoryPlan(0, "sequential", ("480p", "720p"), False,
               "H100, cap 12 GiB: 480p sequential 9.6 / 10.9 GiB; group does not fit (OOM in prompt encoding; section 2)"),
    # fp8 storage (layerwise casting) halves the transformer's weights, 34 -> 17 GB (section 1: the 720p transformer
    # peaks at 26.2 instead of 42.1 GiB) at no speed change; what it buys is mode none with less memory.
    MemoryPlan(60, "none", (), True,
               "expected: 720p 67.2 - 16 = ~51 GiB allocated (sections 1, 2; bench_memory.py 720p:none:cap70:fp8)"),
    MemoryPlan(44, "none", ("480p", "720p"), True,
               "expected: 480p ~39 GiB allocated untiled, so tiled (bench_memory.py 720p:none:cap48:fp8:tiling)"),
    MemoryPlan(22.5, "group", ("720p",), True, "as bf16 group offload (its streamed blocks are smaller)"),
    MemoryPlan(0, "sequential", ("480p", "720p"), True, "as bf16 sequential offload"),
)
"""The memory policy `auto` follows: for a budget, the row with the largest ``budget_gib`` it reaches. The fp8 rows
marked "expected" are derived from the bf16 figures and wait for ``benchmarks/bench_memory.py --fp8``."""

ZEROGPU_SLICE = 70 * GiB
"""GPU memory a ZeroGPU call may use: the H200 reports all its 141 GB, but a call gets a slice of about 70 GB."""
COMPILE_FROM = 75 * GiB
"""Budgets of this much (H100 80 GB, a dedicated H200) compile the transformer's blocks with ``torch.compile`` by
default in mode ``none``: measured 11.5 s instead of 12.9 s per 720p step (-11 %, -16 % at 480p) for ~15 s of
compilation per resolution. Not on ZeroGPU: its slice is smaller, and every call would compile again."""


def on_zerogpu() -> bool:
    """Whether this process runs on a ZeroGPU Space (``SPACES_ZERO_GPU``, set by the platform; read as `spaces`
    reads it)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def gpu_memory_budget(device: str | torch.device) -> tuple[int, str]:
    """GPU memory the pipeline may use, in bytes, and where the figure comes from.

    On ZeroGPU it is the slice (`ZEROGPU_SLICE`), not what the GPU reports (the whole H200, and in the main
    process no real GPU at all); elsewhere the device's free memory.
    """
    if on_zerogpu():
        return ZEROGPU_SLICE, "ZeroGPU slice"
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return free, "free on the GPU"


def choose_memory_plan(budget_bytes: int, fp8_storage: bool = False) -> MemoryPlan:
    """The row of `MEMORY_PLANS` for a budget: the largest ``budget_gib`` that the budget reaches.

    Args:
        budget_bytes: Usable GPU memory (`gpu_memory_budget`).
        fp8_storage: Whether the transformer is stored in fp8.
    """
    rows = sorted((row for row in MEMORY_PLANS if row.fp8_storage == fp8_storage), key=lambda row: -row.budget_gib)
    return next(row for row in rows if budget_bytes >= row.budget_gib * GiB)


def choose_memory_mode(budget_bytes: int, fp8_storage: bool = False) -> tuple[str, str]:
    """The memory mode `auto` picks for a budget (`choose_memory_plan`) and a human-readable reason."""
    plan = choose_memory_plan(budget_bytes, fp8_storage)
    tiling = f", VAE tiling at {'/'.join(plan.vae_tiling)}" if plan.vae_tiling else ""
    return plan.memory_mode, f"{budget_bytes / GiB:.1f} GiB budget: plan for {plan.budget_gib:g}+ GiB{tiling}"


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
    """Whether the transformer's repeated blocks are compiled (``torch.compile``, or ahead of time)."""
    vae_tiling: bool = False
    """Whether the VAE encodes and decodes in tiles (less memory, slower) after loading."""
    vae_tiling_auto: tuple[str, ...] | None = None
    """With ``vae_tiling="auto"``: the resolutions whose jobs tile the VAE (`apply_vae_tiling`); else None."""
    compiled_ahead: str = ""
    """The ahead-of-time compiled blocks package in use and what it was built for, if any."""

    def summary(self) -> str:
        """One line for the UI, e.g. ``GPU NVIDIA H100 · bfloat16 · memory mode none (...)``."""
        where = "CPU (slow, for tiny test models only)" if self.device == "cpu" else f"GPU {self.device_name}"
        if self.vae_tiling_auto is None:
            tiling, tiles = "VAE tiling", self.vae_tiling
        else:  # per job, as the memory plan says
            tiling, tiles = f"VAE tiling at {'/'.join(self.vae_tiling_auto)}", bool(self.vae_tiling_auto)
        compiled = f"AoT-compiled blocks ({self.compiled_ahead})" if self.compiled_ahead else "compiled"
        extras = [name for name, on in (("fp8 weights", self.fp8_storage), (compiled, self.compiled),
                                         (tiling, tiles)) if on]
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


def _auto_mode(device: torch.device, fp8_storage: bool, budget: tuple[int, str] | None = None) -> tuple[str, str]:
    """The mode `auto` picks and why; ``budget``: `gpu_memory_budget`'s reading when the caller has one."""
    if device.type != "cuda":
        return "none", "on the CPU there is no GPU memory to manage"
    budget, where = budget or gpu_memory_budget(device)
    mode, reason = choose_memory_mode(budget, fp8_storage)
    return mode, f"{reason} ({where})"


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def should_compile(memory_mode: str, budget_bytes: int) -> bool:
    """Whether ``compile_blocks="auto"`` compiles the transformer: mode ``none`` with a budget of `COMPILE_FROM`.

    That is where compiling was measured to be the fastest configuration. Under offloading the blocks move
    between devices through hooks, and on the CPU compiling is not worth it for the tiny models that run there.
    """
    return memory_mode == "none" and budget_bytes >= COMPILE_FROM


def resolution_of(height: int, width: int) -> str:
    """The named resolution (``"720p"``, ``"480p"``) whose target area is nearest to a ``height x width`` frame."""
    from .preprocess.sizing import RESOLUTION_AREAS

    return min(RESOLUTION_AREAS, key=lambda name: abs(RESOLUTION_AREAS[name] - height * width))


def apply_vae_tiling(pipe: "WanAnimatePipeline", resolution: str) -> bool:
    """Switch the VAE's tiling for a job at ``resolution``, as the memory plan says (``vae_tiling="auto"``).

    A pipeline loaded with ``vae_tiling`` set explicitly (or not by `load_pipeline`) is left as it is. Call it
    before each job: the plan can tile 720p and not 480p (`MEMORY_PLANS`), and tiling costs 1.7-1.8x the VAE's time.

    Returns:
        Whether the VAE tiles now.
    """
    info = runtime_info(pipe)
    if info is not None and info.vae_tiling_auto is not None:
        if resolution in info.vae_tiling_auto:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
    return bool(getattr(pipe.vae, "use_tiling", False))


def _aot_package(compile_blocks: bool | str) -> str | None:
    """The package source of ``compile_blocks="aot:<package>"``, None for the other values.

    Raises:
        WanAnimateError: A string that is neither ``auto`` nor ``aot:<package>``.
    """
    if not isinstance(compile_blocks, str) or compile_blocks == "auto":
        return None
    kind, _, package = compile_blocks.partition(":")
    if kind != "aot" or not package:
        raise WanAnimateError(f"compile_blocks={compile_blocks!r}: use True, False, 'auto' or 'aot:<package .pt2 file "
                              "or owner/repo::file.pt2>'.")
    return package


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
    compile_blocks: bool | str = "auto",
    vae_tiling: bool | Literal["auto"] = "auto",
    progress: ProgressCallback | None = None,
) -> "WanAnimatePipeline":
    """Load Wan2.2-Animate-14B as a ready `WanAnimatePipeline` (``pipe.wan_runtime`` says how it runs).

    Args:
        source: A hub repo id (downloaded into the Hugging Face cache) or a local folder in the same layout.
        revision: Branch, tag or commit of a hub repo.
        dtype: Compute dtype of the transformer and text encoder (`resolve_dtype`); VAE and CLIP stay float32.
        memory_mode: ``auto`` (the row of `MEMORY_PLANS` for the GPU memory budget: the free memory, or the slice
            on ZeroGPU; `gpu_memory_budget`), ``none``, ``model``, ``group`` or ``sequential`` (see
            `apply_memory_mode`). Always ``none`` on the CPU.
        fp8_storage: Store the transformer's weights in float8 (e4m3) and compute in ``dtype``, layer by layer
            (halves its memory; a small quality cost).
        keep_bf16_copy: With a bf16 compute dtype, save the transformer in bf16 on the first load (the repo
            stores it in fp32) and load that copy afterwards, without fetching the fp32 files again.
        allow_cpu: Allow running without a CUDA GPU (float32, only sensible for tiny test models).
        device: The device; defaults to the current CUDA GPU.
        compile_blocks: Compile the transformer's repeated blocks (``torch.compile``, once per resolution and LoRA
            weight seen, ~15 s each). ``auto``: on in mode ``none`` with a budget of at least 75 GiB
            (`should_compile`), with Triton installed, in a process that is not one of several (torchrun).
            ``"aot:<package>"``: run them through an ahead-of-time compiled package instead, a ``.pt2`` file or
            ``owner/repo::file.pt2`` on the Hub (`wan_animate.aot.load_compiled_blocks`; mode ``none`` only).
        vae_tiling: Encode and decode with the VAE in tiles. ``auto``: as the memory plan says for each job's
            resolution (`apply_vae_tiling`; until then as for 720p).
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
    aot_package = _aot_package(compile_blocks)
    if aot_package is not None and fp8_storage:
        raise WanAnimateError("Ahead-of-time compiled blocks cannot run with fp8 storage: drop one of the two (an fp8 "
                              "package stores the blocks in fp8 itself).")

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
    # Read before placing anything: the budget is the memory the pipeline may take.
    measured = gpu_memory_budget(device) if device.type == "cuda" else None
    budget = measured[0] if measured else 0
    plan = choose_memory_plan(budget, fp8_storage) if measured else None
    if memory_mode == "auto":
        memory_mode, reason = _auto_mode(device, fp8_storage, measured)
    elif device.type == "cpu":
        reason = "on the CPU there is no GPU memory to manage"
    else:
        reason = "chosen explicitly"
    logger.info("Memory mode %s: %s", memory_mode, reason)
    if aot_package is not None and memory_mode != "none":
        raise WanAnimateError(f"Ahead-of-time compiled blocks need memory mode none (every block on the GPU), not "
                              f"{memory_mode!r}: a GPU budget of 70 GiB or more, or memory_mode='none'.")
    apply_memory_mode(pipe, memory_mode, device)

    tiling_auto = None
    if vae_tiling == "auto":
        tiling_auto = plan.vae_tiling if plan is not None else ()
        vae_tiling = "720p" in tiling_auto  # until a job says its resolution (apply_vae_tiling)
    if vae_tiling:
        logger.info("VAE tiling on (%s): less memory, slower encoding and decoding.",
                    f"plan for {plan.budget_gib:g}+ GiB" if tiling_auto is not None and plan else "asked for")
        pipe.vae.enable_tiling()
    compiled_ahead = ""
    if aot_package is not None:
        from .aot import load_compiled_blocks

        runtime = load_compiled_blocks(pipe, aot_package, check_device=not on_zerogpu())
        compiled_ahead = f"{runtime.path.name}: {runtime.info.describe()}"
        compile_blocks = True
    elif compile_blocks == "auto":
        compile_blocks = device.type == "cuda" and should_compile(memory_mode, budget)
        if compile_blocks and importlib.util.find_spec("triton") is None:
            logger.warning("Not compiling the transformer: torch.compile needs Triton on the GPU, which is missing.")
            compile_blocks = False
        if compile_blocks:
            from .parallel import launched_with_several_processes

            if launched_with_several_processes():
                logger.info("Not compiling the transformer: compiling with context parallelism is untested.")
                compile_blocks = False
    if compile_blocks and not compiled_ahead:
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
        vae_tiling_auto=tiling_auto,
        compiled_ahead=compiled_ahead,
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
