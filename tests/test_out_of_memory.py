"""Out of GPU memory mid-job (wan_animate.out_of_memory), on the CPU: a fake component raises torch's
`OutOfMemoryError` after allocating, as a CUDA kernel would; the guard must turn it into a sentence, release what the
failed call held, and let the next job run."""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import pytest
import torch

from wan_animate.errors import GenerationCancelled, WanAnimateError
from wan_animate.out_of_memory import GpuOutOfMemory, OutOfMemoryGuard, is_out_of_memory


class FakePipeline:
    """Runs out of memory on its first call (holding a big activation in its frame), works afterwards."""

    def __init__(self, memory_mode: str | None = None) -> None:
        self.calls = 0
        self.activations: list[weakref.ref] = []
        self.hooks_freed = 0
        if memory_mode is not None:
            self.wan_runtime = SimpleNamespace(memory_mode=memory_mode)

    def maybe_free_model_hooks(self) -> None:
        self.hooks_freed += 1

    def __call__(self) -> str:
        self.calls += 1
        activation = torch.ones(4_000_000)  # 16 MB held by this frame when the error unwinds it
        self.activations.append(weakref.ref(activation))
        if self.calls == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 139.8 GiB total)")
        return "frames"


def run_job(pipeline: FakePipeline, size: tuple[int, int]) -> str:
    with OutOfMemoryGuard(pipeline, size=size):
        return pipeline()


def test_oom_becomes_a_sentence_the_memory_is_released_and_the_next_job_runs():
    pipeline = FakePipeline(memory_mode="none")
    with pytest.raises(GpuOutOfMemory) as caught:
        run_job(pipeline, (720, 1280))
    message = str(caught.value)
    assert isinstance(caught.value, WanAnimateError)
    assert "ran out of memory while generating at 1280x720 with the memory mode 'none'" in message
    assert "choose 480p or the memory mode 'group'" in message and "released" in message
    assert "Tried to allocate" not in message and "GiB total" not in message  # the CUDA detail goes to the log
    # The error is still held (as an app showing it would), yet the failed call's tensor is gone.
    assert pipeline.activations[0]() is None
    assert pipeline.hooks_freed == 1
    assert run_job(pipeline, (720, 1280)) == "frames"


@pytest.mark.parametrize(
    "size,mode,advice",
    [
        ((480, 832), "group", "the memory mode 'sequential'"),
        ((720, 1280), "sequential", "choose 480p, then"),
        ((480, 832), "sequential", "free the GPU from other programs"),
        ((480, 832), None, "free the GPU from other programs"),
    ],
)
def test_oom_advice_follows_the_job_size_and_memory_mode(size, mode, advice):
    pipeline = FakePipeline(memory_mode=mode)
    with pytest.raises(GpuOutOfMemory, match=advice):
        run_job(pipeline, size)


def test_oom_from_a_cuda_runtime_error_is_caught_other_errors_pass_unchanged():
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    for error in (ValueError("a bug"), GenerationCancelled("stopped"), WanAnimateError("bad input")):
        guard = OutOfMemoryGuard(size=(480, 832))
        with pytest.raises(type(error)) as caught:
            with guard:
                raise error
        assert caught.value is error and not guard.caught
