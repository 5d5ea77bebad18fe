"""Out of GPU memory mid-job: release the memory and say what to change, instead of a CUDA traceback.

Wrap the call that does the GPU work::

    with OutOfMemoryGuard(pipeline, size=(height, width)):
        output = pipeline(...)

An out-of-memory error inside becomes `GpuOutOfMemory` (a `WanAnimateError`) whose sentence names the job's size
and memory mode and what to change (480p, a leaner memory mode), after the memory the failed call held is
released, so the next job starts from the model's own footprint.

Why the guard clears the traceback's frames: the exception's traceback keeps every frame the error passed
through alive, and with them their local tensors (a segment's activations, many GiB), for as long as anyone
holds the exception, e.g. an app that shows it. The guard clears those frames before it frees the cache. The
frame that contains the ``with`` statement is still running and cannot be cleared: put the guard around the
call that allocates, not inside a function whose own locals hold the large tensors.
"""

from __future__ import annotations

import gc
import logging
import traceback
from types import TracebackType
from typing import Any

import torch

from .errors import WanAnimateError

logger = logging.getLogger("wan_animate")

LEANER_MODE = {"none": "group", "model": "group", "group": "sequential"}
"""The memory mode to suggest after running out in each mode: measured peaks at 480p were none 55.2 GiB,
model 37.7, group 13.7, sequential 9.6 (benchmarks/RESULTS.md); group is also faster than model."""

LARGEST_480P_AREA = 832 * 480
"""A job larger than this is above 480p, and 480p is the first thing to suggest."""


class GpuOutOfMemory(WanAnimateError):
    """The GPU ran out of memory during a job; the message says what to change. The memory has been released."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the GPU running out of memory (torch's error, or a CUDA/cuBLAS allocation failure)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text)


def release_memory(pipeline: Any = None) -> None:
    """Free what a failed or cancelled job left: offload hooks reset (components back to the CPU), the VAE's
    feature cache dropped, the allocator's cache emptied."""
    if pipeline is not None and hasattr(pipeline, "maybe_free_model_hooks"):
        pipeline.maybe_free_model_hooks()
    # Wan's VAE keeps the last chunk's features of every causal convolution between chunks and clears them only when
    # the next encode/decode starts: an error inside one left them (~5 GiB at 720p, measured on the H200).
    vae = getattr(pipeline, "vae", None)
    if hasattr(vae, "clear_cache"):
        vae.clear_cache()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def out_of_memory_message(size: tuple[int, int] | None, memory_mode: str | None) -> str:
    """The sentence for a job of ``size`` = ``(height, width)`` that ran out of memory in ``memory_mode``."""
    job = "" if size is None else f" at {size[1]}x{size[0]}"
    mode = "" if memory_mode is None else f" with the memory mode '{memory_mode}'"
    changes = []
    if size is not None and size[0] * size[1] > LARGEST_480P_AREA:
        changes.append("choose 480p")
    leaner = LEANER_MODE.get(memory_mode or "")
    if leaner:
        changes.append(f"the memory mode '{leaner}' (slower, far less GPU memory)")
    if not changes:
        changes.append("free the GPU from other programs or use a GPU with more memory")
    return (
        f"The GPU ran out of memory while generating{job}{mode}. To fit, {' or '.join(changes)}, then generate "
        "again. The memory was released, so the next job can run."
    )


class OutOfMemoryGuard:
    """Context manager: an out-of-memory error inside becomes `GpuOutOfMemory`, after the memory is released.

    Args:
        pipeline: The pipeline doing the work, if any: its memory mode (from `load_pipeline`) goes into the
            message and its offload hooks are reset.
        size: ``(height, width)`` of the job's frames, for the message.
        memory_mode: The memory mode, when ``pipeline`` does not carry it.

    Attributes:
        caught: Whether this guard turned an out-of-memory error into `GpuOutOfMemory`.
    """

    def __init__(self, pipeline: Any = None, *, size: tuple[int, int] | None = None, memory_mode: str | None = None) -> None:
        self.pipeline = pipeline
        self.size = size
        self.memory_mode = memory_mode
        self.caught = False

    def __enter__(self) -> "OutOfMemoryGuard":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> bool:
        if error is None or not is_out_of_memory(error):
            return False
        mode = self.memory_mode
        if mode is None and self.pipeline is not None:
            from .models import runtime_info

            runtime = runtime_info(self.pipeline)
            mode = runtime.memory_mode if runtime is not None else None
        logger.error("Out of GPU memory (job %s, memory mode %s): %s", self.size, mode, error)
        message = out_of_memory_message(self.size, mode)
        # The frames the error unwound still hold the failed call's tensors: clear them, then free the cache.
        traceback.clear_frames(trace)
        error.__traceback__ = None
        del error, trace
        release_memory(self.pipeline)
        self.caught = True
        raise GpuOutOfMemory(message) from None


__all__ = ["GpuOutOfMemory", "OutOfMemoryGuard", "is_out_of_memory", "out_of_memory_message", "release_memory"]
