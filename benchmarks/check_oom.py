"""Out of GPU memory mid-job, on the real GPU: our sentence, memory released, and the next job succeeds.

The full-size random-weight pipeline (`fullsize.py`) is placed all on the GPU (memory mode ``none``), and the
process's GPU memory is capped (`torch.cuda.set_per_process_memory_fraction`, 63 GiB) between the measured peaks of
a 480p and a 720p segment in that mode (480p 55.2 GiB allocated / 58.2 reserved, 720p 67.2 / 74.2; RESULTS.md). Then, through
`wan_animate.generate.generate` wrapped in `wan_animate.out_of_memory.OutOfMemoryGuard` (the guard the segment
engine wraps around its loop; if `generate` already raises our sentence itself, the JSON says so):

1. a 720p segment must end in `GpuOutOfMemory` whose sentence names 480p and a leaner memory mode;
2. the GPU memory allocated afterwards must be back near the model's own footprint (``--tolerance-gib``);
3. a 480p 1-step segment right after, under the same cap, must succeed.

    python benchmarks/check_oom.py                  # on the GPU, ~3 min (build ~1 min, 480p job ~1 min)
    python benchmarks/check_oom.py --smoke          # tiny model on the CPU, the OOM faked at the 720p step

JSON goes to ``$OUT/check_oom.json`` (or the current folder); a table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import weakref
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_pipeline  # noqa: E402
import fullsize  # noqa: E402

GiB = 2**30


def fake_out_of_memory_at(pipe, resolution: str, held: list) -> None:
    """Smoke mode: the transformer raises torch's OutOfMemoryError on a ``resolution`` latent, after allocating (as a
    CUDA kernel that runs out part-way does); the allocation's weakref goes into ``held`` to check its release."""
    _, lat_h, lat_w = fullsize.latent_shape(resolution)
    original = pipe.transformer.forward

    def forward(hidden_states, *args, **kwargs):
        if tuple(hidden_states.shape[-2:]) == (lat_h, lat_w):
            activation = torch.ones(hidden_states.numel() * 64)
            held.append(weakref.ref(activation))
            raise torch.OutOfMemoryError(f"CUDA out of memory (faked by check_oom.py --smoke at {resolution}).")
        return original(hidden_states, *args, **kwargs)

    pipe.transformer.forward = forward


def run_job(pipe, resolution: str, steps: int, device: str) -> dict:
    """One segment through `generate` inside the guard; returns what happened."""
    from wan_animate.errors import WanAnimateError
    from wan_animate.generate import GenerationSettings, generate
    from wan_animate.out_of_memory import GpuOutOfMemory, OutOfMemoryGuard

    conditioning = bench_pipeline.random_conditioning(resolution)
    settings = GenerationSettings(num_inference_steps=steps, seed=0, segment_frames=fullsize.SEGMENT_FRAMES)
    row: dict = {"job": f"{resolution}, {steps} step(s)"}
    started = time.perf_counter()
    guard = OutOfMemoryGuard(pipe, size=fullsize.RESOLUTIONS[resolution], memory_mode="none")
    try:
        with guard:
            result = generate(pipe, conditioning, settings)
        row.update(ok=True, frames=list(result.frames.shape), frames_std=round(float(result.frames.std()), 2))
    except GpuOutOfMemory as error:
        row.update(ok=False, error_type="GpuOutOfMemory", message=str(error))
        row["sentence_from"] = "the outer guard (generate does not wrap its loop yet)" if guard.caught else "generate"
    except WanAnimateError as error:
        row.update(ok=False, error_type=type(error).__name__, message=str(error))
    except Exception as error:  # anything else is a failure of the check: record it, go on
        row.update(ok=False, error_type=type(error).__name__, message=str(error)[:300])
    row["seconds"] = round(time.perf_counter() - started, 1)
    gc.collect()
    if device == "cuda":
        row["allocated_after_gib"] = round(torch.cuda.memory_allocated() / GiB, 2)
        row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
        torch.cuda.reset_peak_memory_stats()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-gib", type=float, default=63.0, help="GPU memory cap: above the 480p peak (58.2 reserved), below the 720p one (67.2 allocated)")
    parser.add_argument("--tolerance-gib", type=float, default=2.0, help="allowed allocation above the model's after the OOM (a 720p segment's activations are far more)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "check_oom.json")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip the 480p job if this much time has passed")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, the OOM faked at the 720p step")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    held: list = []
    if args.smoke:
        fullsize.shrink_for_smoke()

    from wan_animate.models import apply_memory_mode, runtime_info
    from wan_animate.out_of_memory import out_of_memory_message

    started = time.perf_counter()
    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }
    pipe = bench_pipeline.build_pipeline(device)
    apply_memory_mode(pipe, "none", device)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        resident = torch.cuda.memory_allocated()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GiB / total))
        torch.cuda.reset_peak_memory_stats()
        meta.update(model_gib=round(resident / GiB, 2), cap_gib=args.cap_gib, total_gib=round(total / GiB, 1))
    else:
        fake_out_of_memory_at(pipe, "720p", held)
    meta["build_s"] = round(time.perf_counter() - started, 1)

    rows = [run_job(pipe, "720p", 2, device)]
    oom = rows[0]
    # generate's own guard names the memory mode only of a pipeline `load_pipeline` made (this one is built directly).
    runtime = runtime_info(pipe)
    expected = out_of_memory_message(fullsize.RESOLUTIONS["720p"], runtime.memory_mode if runtime is not None else None)
    checks = {"720p ends in our sentence": oom.get("error_type") == "GpuOutOfMemory" and oom.get("message") == expected}
    if device == "cuda":
        oom["above_model_gib"] = round(oom["allocated_after_gib"] - resident / GiB, 2)
        checks["memory released"] = oom["above_model_gib"] <= args.tolerance_gib
    else:
        checks["memory released"] = bool(held) and all(ref() is None for ref in held)
    if time.perf_counter() - started < args.budget_s:
        rows.append(run_job(pipe, "480p", 1, device))
        checks["next job (480p, 1 step) succeeds"] = rows[-1].get("ok") is True
    else:
        rows.append({"job": "480p, 1 step(s)", "ok": False, "message": "skipped: time budget spent"})
        checks["next job (480p, 1 step) succeeds"] = False
    if device == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0)
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    report = {"meta": meta, "jobs": rows, "checks": checks, "passed": all(checks.values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))

    print(json.dumps(report, indent=1))
    print(f"\n{'job':<20} {'ok':<5} {'seconds':>7} {'alloc_after':>11} {'peak':>7}  message")
    for row in rows:
        print(
            f"{row['job']:<20} {str(row.get('ok')):<5} {row.get('seconds', '-'):>7} {row.get('allocated_after_gib', '-'):>11} "
            f"{row.get('peak_allocated_gib', '-'):>7}  {row.get('message', '')[:110]}"
        )
    print(f"{'check':<40} result")
    for name, passed in checks.items():
        print(f"{name:<40} {'PASS' if passed else 'FAIL'}")
    print(f"model {meta.get('model_gib', '-')} GiB, cap {meta.get('cap_gib', '-')} GiB, wall {meta['wall_s']} s: {'PASSED' if report['passed'] else 'FAILED'}")
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
