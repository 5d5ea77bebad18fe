"""One job through the package on the full-size random-weight pipeline: time per stage, peak GPU memory.

Each run builds the full-size `WanAnimatePipeline` (see `fullsize.py`), places it with
`wan_animate.models.apply_memory_mode`, optionally caps the process's GPU memory
(`torch.cuda.set_per_process_memory_fraction`) and runs `wan_animate.generate.generate` on one 77-frame
segment of random conditioning, then `wan_animate.video.write_video`. Stages are timed by wrapping the
components (synchronising the GPU around each call): prompt encoding (UMT5), image encoding (CLIP),
VAE encodes, every denoising step, VAE decode, video writing; "other" is the rest of the wall time
(the pipeline's pre/post-processing on the CPU).

    python benchmarks/bench_pipeline.py --runs 480p:none:2 480p:model:2 480p:group:2 480p:sequential:2 \
        480p:group:2:cap12 720p:group:2:cap24:tiling --out results.json

A run is ``RES:MODE:STEPS[:capN][:tiling]`` (cap in GiB; ``tiling`` turns on VAE tiling).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import fullsize  # noqa: E402

GiB = 2**30


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run: resolution, memory mode, steps, optional GPU memory cap and VAE tiling."""

    resolution: str
    mode: str
    steps: int
    cap_gib: float | None = None
    tiling: bool = False

    @classmethod
    def parse(cls, text: str) -> "RunSpec":
        resolution, mode, steps, *options = text.split(":")
        cap = next((float(o[3:]) for o in options if o.startswith("cap")), None)
        return cls(resolution, mode, int(steps), cap, "tiling" in options)

    @property
    def name(self) -> str:
        extra = (f":cap{self.cap_gib:g}" if self.cap_gib else "") + (":tiling" if self.tiling else "")
        return f"{self.resolution}:{self.mode}:{self.steps}{extra}"


class StageTimer:
    """Wraps pipeline components so every call is timed (GPU synchronised before and after)."""

    def __init__(self, sync: bool = True) -> None:
        self.sync = sync
        self.calls: dict[str, list[float]] = {}
        self.nonfinite: list[str] = []

    def _now(self) -> float:
        if self.sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap_method(self, owner: object, method: str, stage: str, check=None) -> None:
        """Replace ``owner.method`` by a timed call of the original bound method (offload hooks stay)."""
        original = getattr(owner, method)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = self._now()
            output = original(*args, **kwargs)
            self.calls.setdefault(stage, []).append(self._now() - started)
            if check is not None and not check(output):
                self.nonfinite.append(stage)
            return output

        setattr(owner, method, timed)

    def hook_module(self, module: torch.nn.Module, stage: str, check=None) -> None:
        """Time every call of ``module`` with forward pre/post hooks.

        Unlike replacing ``forward``, this survives offloading hooks that rewire ``forward`` later (diffusers'
        group offloading with streams does after its first pass).
        """
        starts: list[float] = []

        def before(_module, _args):
            starts.append(self._now())

        def after(_module, _args, output):
            self.calls.setdefault(stage, []).append(self._now() - starts.pop())
            if check is not None and not check(output):
                self.nonfinite.append(stage)

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def summary(self) -> dict:
        return {
            stage: {"calls": len(times), "total_s": round(sum(times), 3), "each_s": [round(t, 3) for t in times]}
            for stage, times in self.calls.items()
        }


def _finite_first(output) -> bool:
    tensor = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", None)
    if tensor is None:
        tensor = getattr(output, "latent_dist", None)
        tensor = getattr(tensor, "mode", lambda: None)() if tensor is not None else None
    return tensor is None or bool(torch.isfinite(tensor).all())


def _finite_hidden(output) -> bool:
    tensor = getattr(output, "last_hidden_state", None)
    if tensor is None and isinstance(output, (tuple, list)):
        tensor = output[0]
    return tensor is None or bool(torch.isfinite(tensor).all())


def random_conditioning(resolution: str, frames: int | None = None, seed: int = 0):
    """Animation-mode conditioning of random (never zero) pixels at the contract's output size."""
    from wan_animate.conditioning import Conditioning

    frames = frames or fullsize.SEGMENT_FRAMES
    height, width = fullsize.RESOLUTIONS[resolution]
    rng = np.random.default_rng(seed)
    return Conditioning(
        mode="animate",
        reference_image=rng.integers(1, 255, (height, width, 3), dtype=np.uint8),
        pose_frames=rng.integers(1, 255, (frames, height, width, 3), dtype=np.uint8),
        face_frames=rng.integers(1, 255, (frames, fullsize.FACE_SIZE, fullsize.FACE_SIZE, 3), dtype=np.uint8),
        fps=30.0,
    )


def build_pipeline(device: str):
    """Full-size pipeline with the package's per-component dtypes (CLIP and VAE in float32)."""
    from wan_animate.models import component_dtypes

    dtypes = component_dtypes(torch.bfloat16 if device == "cuda" else torch.float32)
    pipe = fullsize.build_pipeline(
        device=device, transformer_dtype=dtypes["default"], vae_dtype=dtypes.get("vae", torch.float32)
    )
    image_dtype = dtypes.get("image_encoder", dtypes["default"])
    if pipe.image_encoder.dtype != image_dtype:
        pipe.image_encoder.to(image_dtype)
    return pipe


def place_group_leaf_text_encoder(pipe, device: str) -> None:
    """Candidate fix of the ``group`` memory mode, measured here before it goes into the package.

    `apply_group_offloading(text_encoder, offload_type="block_level")` finds no block list among
    `UMT5EncoderModel`'s direct children (``shared``, ``encoder``), so the whole 10.6 GiB encoder is one group
    and is onloaded at once. Leaf-level offloading with streams streams it layer by layer instead.
    """
    from diffusers.hooks import apply_group_offloading

    common = dict(onload_device=torch.device(device), offload_device=torch.device("cpu"), use_stream=True)
    pipe.transformer.enable_group_offload(offload_type="block_level", num_blocks_per_group=1, **common)
    apply_group_offloading(pipe.text_encoder, offload_type="leaf_level", **common)
    for name in ("vae", "image_encoder"):
        getattr(pipe, name).to(device)


def run_job(spec: RunSpec, device: str, video_dir: Path) -> dict:
    """Build, place, (cap), generate one segment, write the video; returns every figure of the run."""
    from wan_animate.generate import GenerationSettings, generate
    from wan_animate.models import apply_memory_mode
    from wan_animate.video import write_video

    row: dict = {
        "run": spec.name,
        "resolution": spec.resolution,
        "mode": spec.mode,
        "steps": spec.steps,
        "cap_gib": spec.cap_gib,
        "vae_tiling": spec.tiling,
    }
    started = time.perf_counter()
    pipe = build_pipeline(device)
    if device == "cuda":
        torch.cuda.synchronize()
    row["build_s"] = round(time.perf_counter() - started, 1)

    placed = time.perf_counter()
    if spec.mode == "group-leafte":
        place_group_leaf_text_encoder(pipe, device)
    else:
        apply_memory_mode(pipe, spec.mode, device)
    if spec.tiling:
        pipe.vae.enable_tiling()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        row["placement_s"] = round(time.perf_counter() - placed, 1)
        row["resident_gib_after_placement"] = round(torch.cuda.memory_allocated() / GiB, 2)
        if spec.cap_gib:
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, spec.cap_gib * GiB / total))
        torch.cuda.reset_peak_memory_stats()

    timer = StageTimer(sync=device == "cuda")
    timer.hook_module(pipe.text_encoder, "prompt_encoding", _finite_hidden)
    timer.hook_module(pipe.image_encoder, "image_encoding", _finite_hidden)
    timer.wrap_method(pipe.vae, "encode", "vae_encode", _finite_first)
    timer.wrap_method(pipe.vae, "decode", "vae_decode", _finite_first)
    timer.hook_module(pipe.transformer, "denoising_step", _finite_first)

    conditioning = random_conditioning(spec.resolution)
    settings = GenerationSettings(num_inference_steps=spec.steps, seed=0, segment_frames=fullsize.SEGMENT_FRAMES)
    job_started = time.perf_counter()
    try:
        result = generate(pipe, conditioning, settings)
        job_s = time.perf_counter() - job_started
        written = time.perf_counter()
        path = write_video(video_dir / f"{spec.name.replace(':', '_')}.mp4", result.frames, result.fps)
        write_s = time.perf_counter() - written
        row.update(
            ok=True,
            generate_s=round(job_s, 2),
            write_video_s=round(write_s, 2),
            video_bytes=path.stat().st_size,
            frames=list(result.frames.shape),
            frames_std=round(float(result.frames.std()), 2),
        )
    except torch.cuda.OutOfMemoryError as error:
        row.update(
            ok=False,
            error=f"OutOfMemoryError: {str(error)[:240]}",
            failed_after_s=round(time.perf_counter() - job_started, 1),
        )
    except Exception as error:  # report and go on with the other runs
        row.update(
            ok=False,
            error=f"{type(error).__name__}: {str(error)[:240]}",
            failed_after_s=round(time.perf_counter() - job_started, 1),
        )
    row["stages"] = timer.summary()
    row["nonfinite_stages"] = sorted(set(timer.nonfinite))
    if row.get("ok"):
        staged = sum(v["total_s"] for v in row["stages"].values())
        row["other_s"] = round(row["generate_s"] - staged, 2)
        steps = timer.calls.get("denoising_step", [])
        row["step_s_median"] = round(float(np.median(steps)), 3) if steps else None
        row["outside_steps_s"] = round(row["generate_s"] - sum(steps), 2)
    if device == "cuda":
        row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 2)
        torch.cuda.set_per_process_memory_fraction(1.0)
    del pipe
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def print_table(rows: list[dict]) -> None:
    print(
        "\nrun                         ok  gen_s  step_s  outside_s  prompt  image  vae_enc  vae_dec  write  peak_alloc  peak_resv"
    )
    for row in rows:
        stages = row.get("stages", {})
        total = lambda name: stages.get(name, {}).get("total_s", "-")  # noqa: E731
        print(
            f"{row['run']:<27} {str(row.get('ok'))[0]:<3} {row.get('generate_s', '-'):>5} {row.get('step_s_median', '-'):>7} "
            f"{row.get('outside_steps_s', '-'):>10} {total('prompt_encoding'):>7} {total('image_encoding'):>6} "
            f"{total('vae_encode'):>8} {total('vae_decode'):>8} {row.get('write_video_s', '-'):>6} "
            f"{row.get('peak_allocated_gib', '-'):>11} {row.get('peak_reserved_gib', '-'):>10}  {row.get('error', '')[:80]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", nargs="+", default=["480p:none:2", "480p:model:2", "480p:group:2", "480p:sequential:2"]
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_pipeline.json")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no new run after this many seconds")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, not speed")
    args = parser.parse_args()
    if args.smoke:
        args.device = "cpu"
        fullsize.shrink_for_smoke()

    import diffusers

    started = time.perf_counter()
    meta = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "command": " ".join(sys.argv),
    }
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as video_dir:
        for text in args.runs:
            spec = RunSpec.parse(text)
            if time.perf_counter() - started > args.budget_s:
                rows.append({"run": spec.name, "ok": False, "error": "skipped: time budget spent"})
                continue
            row = run_job(spec, args.device, Path(video_dir))
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    print_table(rows)


if __name__ == "__main__":
    main()
