"""Context parallelism: one denoising step of the full-size Animate transformer on 1, 2, 4 or 8 GPUs.

Started by torchrun with one process per GPU; every process builds the 17.3B-parameter transformer with the
same random weights (`fullsize.build_transformer`, seeded) and the same 720p segment inputs, enables
`wan_animate.parallel.enable_context_parallel` (skipped on 1 GPU), and times one transformer forward with
CUDA events (warm-ups, then the median of ``--repeats``; a step lasts as long as its slowest rank, so the
maximum over ranks is reported). With ``--check``, rank 0 first runs the same step unsplit and the split
output is compared to it (relative L2; bf16, so expect ~1e-3, not 0). One JSON line per run is appended to
``--out``; ``--table`` prints the Markdown scaling table from those lines.

    for n in 1 2 4 8; do
        torchrun --standalone --nproc-per-node $n benchmarks/bench_context_parallel.py \
            --size 720x1280 --backend _native_cudnn --check --out benchmarks/context_parallel.jsonl
    done
    python benchmarks/bench_context_parallel.py --table benchmarks/context_parallel.jsonl

``--size`` is the output height x width (multiples of 16): 720x1280 (21 x 45 x 80 = 75 600 tokens) splits
evenly over 2/4/8 GPUs; 1104x832 (21 x 69 x 52 = 75 348 tokens) does not split over 8 and exercises the
any-length path. ``--tiny`` runs the tiny test transformer instead (CPU and gloo work: a smoke test of this
script, e.g. ``torchrun --nproc-per-node 2 benchmarks/bench_context_parallel.py --tiny --size 64x96``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

import fullsize  # noqa: E402  (this folder is on sys.path as the script's own)
from wan_animate.parallel import ContextParallelOptions, enable_context_parallel, init_distributed  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    """``"720x1280"`` -> (720, 1280); both multiples of 16 (VAE stride 8 x patch 2)."""
    height, width = (int(part) for part in text.lower().split("x"))
    if height % 16 or width % 16:
        raise SystemExit(f"--size {text}: height and width must be multiples of 16")
    return height, width


def segment_inputs(config: dict, height: int, width: int, face_size: int, text_tokens: int, clip_tokens: int, device, dtype) -> dict:
    """Seeded random transformer inputs of one 77-frame segment (the same on every rank)."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=torch.float32).to(dtype)

    latent_frames = (fullsize.SEGMENT_FRAMES - 1) // 4 + 1
    lat_h, lat_w = height // 8, width // 8
    return {
        "hidden_states": randn(1, config["in_channels"], latent_frames + 1, lat_h, lat_w),
        "timestep": torch.tensor([999.0], device=device),
        "encoder_hidden_states": randn(1, text_tokens, config["text_dim"]),
        "encoder_hidden_states_image": randn(1, clip_tokens, config["image_dim"]),
        "pose_hidden_states": randn(1, config["latent_channels"], latent_frames, lat_h, lat_w),
        "face_pixel_values": randn(1, 3, fullsize.SEGMENT_FRAMES, face_size, face_size).clamp(-1, 1),
        "return_dict": False,
    }


def build(tiny: bool, device: torch.device):
    """The transformer (full size, bf16, or the tiny test one in fp32) and its input sizes."""
    if tiny:
        from diffusers import WanAnimateTransformer3DModel

        from wan_animate.demo.checkpoint import tiny_transformer_config

        config = tiny_transformer_config()
        torch.manual_seed(0)
        model = WanAnimateTransformer3DModel(**config).to(device).eval().requires_grad_(False)
        return model, config, config["motion_encoder_size"], torch.float32
    model = fullsize.build_transformer(device, torch.bfloat16)
    return model, fullsize.TRANSFORMER_CONFIG, fullsize.FACE_SIZE, torch.bfloat16


def timed_steps(model, inputs: dict, warmups: int, repeats: int, device: torch.device) -> tuple[list[float], torch.Tensor]:
    """Seconds of each timed forward (CUDA events on GPUs, wall clock on the CPU), and the last output."""
    times, output = [], None
    for index in range(warmups + repeats):
        if dist.is_initialized():
            dist.barrier()  # every rank starts the step together, as in the pipeline
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            output = model(**inputs)[0]
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000.0
        else:
            started = time.perf_counter()
            output = model(**inputs)[0]
            seconds = time.perf_counter() - started
        if index >= warmups:
            times.append(seconds)
    return times, output


def relative_l2(output: torch.Tensor, reference: torch.Tensor) -> float:
    output, reference = output.float(), reference.float()
    return float(torch.linalg.vector_norm(output - reference) / torch.linalg.vector_norm(reference))


def run(args: argparse.Namespace) -> None:
    options = ContextParallelOptions(ring_degree=args.ring_degree, any_length=args.any_length, attention_backend=args.backend)
    parallel = init_distributed(options)
    world_size = parallel.world_size if parallel else 1
    rank = parallel.rank if parallel else 0
    device = parallel.device if parallel else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    height, width = parse_size(args.size)

    model, config, face_size, dtype = build(args.tiny, device)
    if args.backend:
        model.set_attention_backend(args.backend)
    text_tokens, clip_tokens = (fullsize.TEXT_TOKENS, fullsize.CLIP_TOKENS) if not args.tiny else (512, 5)
    inputs = segment_inputs(config, height, width, face_size, text_tokens, clip_tokens, device, dtype)
    tokens = inputs["hidden_states"].shape[2] * (height // 16) * (width // 16)

    with torch.inference_mode():
        reference = None
        if args.check and parallel is not None:
            if rank == 0:
                reference = model(**inputs)[0].float().cpu()
            dist.barrier()
        cp_config = enable_context_parallel(model, options) if parallel is not None else None
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times, output = timed_steps(model, inputs, args.warmups, args.repeats, device)

    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    if parallel is not None:
        slowest = torch.tensor([median, peak], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=parallel.control_group)
        median, peak = slowest.tolist()
    if rank == 0:
        row = {
            "gpus": world_size,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "model": "tiny" if args.tiny else "full",
            "size": f"{height}x{width}",
            "tokens": tokens,
            "ulysses": cp_config.ulysses_degree if cp_config else 1,
            "ring": cp_config.ring_degree if cp_config else 1,
            "any_length": bool(cp_config and (cp_config.ulysses_anything or cp_config.ring_anything)),
            "backend": args.backend or "default",
            "step_s": round(median, 3),
            "step_s_rank0_all": [round(t, 3) for t in times],
            "peak_gib_max": round(peak, 2),
            "rel_l2_vs_one_gpu": round(relative_l2(output.cpu(), reference), 6) if reference is not None else None,
            "torch": torch.__version__,
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with Path(args.out).open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    if parallel is not None:
        dist.destroy_process_group()  # every rank is a peer here: no followers to stop


def table(path: Path) -> str:
    """Markdown table: step time, speed-up and efficiency against the 1-GPU row of the same size and model."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    single = {(r["model"], r["size"], r["device"]): r["step_s"] for r in rows if r["gpus"] == 1}
    lines = [
        "| GPUs | device | size (tokens) | Ulysses x ring | backend | step (s) | speed-up | efficiency | peak GiB | rel. L2 vs 1 GPU |",
        "|---:|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["size"], r["gpus"])):
        base = single.get((r["model"], r["size"], r["device"]))
        speedup = f"{base / r['step_s']:.2f}x" if base else "n/a"
        efficiency = f"{100 * base / r['step_s'] / r['gpus']:.0f}%" if base else "n/a"
        lines.append(
            f"| {r['gpus']} | {r['device']} | {r['size']} ({r['tokens']}) | {r['ulysses']} x {r['ring']}"
            f"{' (any length)' if r['any_length'] else ''} | {r['backend']} "
            f"| {r['step_s']} | {speedup} | {efficiency} | {r['peak_gib_max']} | {r['rel_l2_vs_one_gpu']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="720x1280", help="Output height x width, multiples of 16 (default 720x1280).")
    parser.add_argument("--backend", default=None, help="diffusers attention backend (native, _native_cudnn, flash, ...).")
    parser.add_argument("--ring-degree", type=int, default=1, help="GPUs in each ring; the rest is Ulysses (default 1).")
    parser.add_argument("--any-length", action=argparse.BooleanOptionalAction, default=True, help="Allow token counts that do not divide by the GPU count.")
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="Compare with the unsplit step on rank 0 (needs the memory of one unsplit step on GPU 0).")
    parser.add_argument("--tiny", action="store_true", help="The tiny test transformer (a CPU smoke test of this script).")
    parser.add_argument("--out", type=Path, default=None, help="Append one JSON line per run here.")
    parser.add_argument("--table", type=Path, default=None, help="Print the Markdown table of a results file and exit.")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    run(args)


if __name__ == "__main__":
    main()
