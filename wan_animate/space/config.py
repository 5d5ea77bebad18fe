"""How the app was started: `AppConfig`, made from ``app.py``'s flags (or a Space's environment variables)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..jobs import DEFAULT_CLEAN_INTERVAL_SECONDS, DEFAULT_MAX_AGE_SECONDS, DEFAULT_MAX_BYTES
from ..models import DEFAULT_MODEL_ID

if TYPE_CHECKING:
    from ..demo import TinyModels


@dataclass(frozen=True)
class AppConfig:
    """How the app was started (command line flags, environment variables on a Space).

    Attributes:
        model: Diffusers checkpoint: hub repo id or local folder.
        detector: Person detector (hub id or folder), ``None`` for the package default.
        pose_model: ViTPose whole-body ONNX (hub id, folder or file), ``None`` for the default.
        sam2: SAM2 video model (hub id or folder), ``None`` for the default.
        memory_mode: ``auto``, ``none``, ``model``, ``group`` or ``sequential``.
        dtype: Compute dtype (``auto`` picks bf16 where supported).
        fp8: Store transformer weights in fp8.
        aot_blocks: An ahead-of-time compiled package of the transformer's blocks (a ``.pt2`` file or
            ``owner/repo::file.pt2``, `wan_animate.aot`), loaded with the pipeline; ``None`` keeps
            `load_pipeline`'s own choice (``compile_blocks="auto"``).
        allow_cpu: Allow running without CUDA (tiny test models).
        fast_lora: Few-step LoRA (``hub/repo::file`` or a file) that enables the fast preset and drafts.
        relight_lora: Relighting LoRA (file, folder or hub id); ``None`` = the official file from the hub.
        gpu_concurrency: GPU jobs run at once.
        preprocess_concurrency: Extractions run at once.
        max_queue: Longest queue before new jobs are turned away.
        work_dir: Folder for job files (`wan_animate.space.studio.jobs_folder`); by default ``wan_animate_jobs``
            in the temporary folder. Never served: the page gets Gradio's copies of previews and results.
        max_job_age: Seconds after which unused job folders are deleted (``None``: no age limit).
        max_job_bytes: Size the job folders are cleaned down to, least recently used first (``None``: no limit).
        clean_interval: Seconds between cleanings of the job folders (also cleaned at start and before each job).
        keep_results: Results (with their side-by-side videos) a job keeps; older ones are deleted.
        preload: Load the pipeline at start (ZeroGPU wants models loaded before the first GPU call).
        demo: The models are `wan_animate.demo`'s tiny random ones: the page says that the output is noise.
        zerogpu: Running on ZeroGPU: each generation runs as GPU calls of at most 300 s
            (`wan_animate.space.zerogpu`), and the page defaults to the fast preset.
    """

    model: str = DEFAULT_MODEL_ID
    detector: str | None = None
    pose_model: str | None = None
    sam2: str | None = None
    memory_mode: str = "auto"
    dtype: str = "auto"
    fp8: bool = False
    aot_blocks: str | None = None
    allow_cpu: bool = False
    fast_lora: str | None = None
    relight_lora: str | None = None
    gpu_concurrency: int = 1
    preprocess_concurrency: int = 2
    max_queue: int = 20
    work_dir: Path | None = None
    max_job_age: float | None = DEFAULT_MAX_AGE_SECONDS
    max_job_bytes: int | None = DEFAULT_MAX_BYTES
    clean_interval: float = DEFAULT_CLEAN_INTERVAL_SECONDS
    keep_results: int = 1
    preload: bool = False
    demo: bool = False
    zerogpu: bool = False

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Arguments of `wan_animate.models.get_pipeline` (the one cached pipeline)."""
        kwargs: dict[str, Any] = dict(
            source=self.model,
            dtype=self.dtype,
            memory_mode=self.memory_mode,
            fp8_storage=self.fp8,
            keep_bf16_copy=False,
            allow_cpu=self.allow_cpu,
        )
        if self.aot_blocks:
            kwargs["compile_blocks"] = f"aot:{self.aot_blocks}"
        return kwargs

    def with_tiny_models(self, models: TinyModels) -> AppConfig:
        """This configuration running the tiny random models on the CPU in fp32 (demo mode and the tests)."""
        return replace(
            self,
            model=str(models.checkpoint),
            detector=str(models.detector),
            pose_model=str(models.pose),
            sam2=str(models.sam2),
            relight_lora=str(models.relight_lora),
            fast_lora=str(models.fast_lora),
            allow_cpu=True,
            memory_mode="none",
            dtype="float32",
            fp8=False,
            aot_blocks=None,
            preload=False,
            demo=True,
        )
