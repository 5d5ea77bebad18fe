"""One denoising step of the full-size Animate transformer (one 77-frame segment), per speed lever.

Levers: diffusers attention backends, regional compilation (`compile_repeated_blocks`), torchao float8
(dynamic activations + weights) on the blocks' Linear layers with compilation, fp8 weight storage
(`enable_layerwise_casting`), and diffusers' step caches over a 20-step schedule. Each variant is
timed with CUDA events (one warm-up step, then the median of ``--repeats``), its peak GPU memory is
recorded, and its output is compared to the plain ``native`` backend on the same weights and inputs
(relative L2). Weights are random (see `fullsize.py`), so cache *skip counts* say nothing about the real
model; their per-step costs do.

    python benchmarks/bench_transformer.py --resolutions 720p 480p \
        --variants native _native_cudnn _native_flash sage layerwise_fp8:_native_cudnn --out results.json

Variant names: an attention backend name (``native``, ``_native_cudnn``, ``_native_flash``, ``sage``,
``_native_efficient``, ``flex``...), or ``compile:<backend>``, ``fp8ao:<backend>``,
``layerwise_fp8:<backend>``, ``motion_encoder`` (the face motion encoder alone, which runs every step),
``steps20:<backend>`` (20-step schedule, no cache) and ``fbc:<backend>``, ``mag:<backend>``,
``taylor:<backend>``, ``taylorlite:<backend>`` (20-step schedule with that cache).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fullsize  # noqa: E402

ATTENTION_BACKENDS = (
    "native",
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "flex",
    "sage",
    "_flash_3",
    "flash",
)
SCHEDULE_STEPS = 20


def enable_sage_v1() -> bool:
    """Let diffusers' ``sage`` backend use SageAttention 1.0.x (Triton; the only release on PyPI).

    diffusers requires sageattention >= 2.1.1, which ships no wheels; 1.0.6's ``sageattn`` takes the same
    arguments (``tensor_layout="NHD"``, ``is_causal``, ``sm_scale``; ``return_lse`` is swallowed by its
    ``**kwargs`` and diffusers only asks for it under context parallelism). Returns False if not installed.
    """
    try:
        import sageattention
    except ImportError:
        return False
    import diffusers.models.attention_dispatch as dispatch

    dispatch.sageattn = sageattention.sageattn
    dispatch._CAN_USE_SAGE_ATTN = True
    return True


def register_animate_blocks_for_caches() -> None:
    """Let FirstBlockCache and MagCache hook the Animate transformer's blocks.

    `transformer_wan_animate` has its own copy of `WanTransformerBlock`, which diffusers 0.42.1 does not
    register in `TransformerBlockRegistry` ("Model class ... not registered"); it returns the hidden states
    like the Wan block, so it takes the same metadata.
    """
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.models.transformers.transformer_wan_animate import WanTransformerBlock

    TransformerBlockRegistry.register(
        model_class=WanTransformerBlock,
        metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
    )


def relative_l2(output: torch.Tensor, reference: torch.Tensor) -> float:
    """||output - reference|| / ||reference|| in float32."""
    output, reference = output.float(), reference.float()
    return float(torch.linalg.vector_norm(output - reference) / torch.linalg.vector_norm(reference))


DEVICE = "cuda"
DTYPE = torch.bfloat16


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else 0.0


def time_call(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Seconds one call takes on the GPU (CUDA events), and its output."""
    if DEVICE != "cuda":  # CPU smoke test of the script itself
        started = time.perf_counter()
        output = fn()
        return time.perf_counter() - started, output
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    output = fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0, output


class Bench:
    """Holds the model (rebuilt after destructive variants), inputs, references and results."""

    def __init__(self, repeats: int, out: Path | None, deadline: float) -> None:
        self.repeats = repeats
        self.out = out
        self.deadline = deadline
        self.model = None
        self.model_state = "none"  # "clean" (plain bf16 model) or the destructive variant applied
        self.inputs: dict[str, fullsize.SegmentInputs] = {}
        self.references: dict[str, torch.Tensor] = {}
        self.schedule_reference: dict[str, torch.Tensor] = {}
        self.results: list[dict] = []
        self.meta = {
            "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
        import diffusers

        self.meta["diffusers"] = diffusers.__version__

    # -- model management -------------------------------------------------------------------------
    def clean_model(self):
        """The plain bf16 model; rebuilt (same seed, same weights) if a destructive variant changed it."""
        if self.model is None or self.model_state != "clean":
            self.drop_model()
            started = time.perf_counter()
            self.model = fullsize.build_transformer(DEVICE, DTYPE)
            torch.cuda.synchronize() if DEVICE == "cuda" else None
            self.meta.setdefault("build_seconds", round(time.perf_counter() - started, 1))
            self.meta.setdefault("parameters_billion", round(fullsize.parameter_count(self.model) / 1e9, 3))
            self.model_state = "clean"
        return self.model

    def drop_model(self) -> None:
        self.model = None
        self.model_state = "none"
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache() if DEVICE == "cuda" else None

    def segment_inputs(self, resolution: str) -> fullsize.SegmentInputs:
        if resolution not in self.inputs:
            self.inputs[resolution] = fullsize.make_segment_inputs(resolution, device=DEVICE, dtype=DTYPE)
        return self.inputs[resolution]

    # -- measurements -----------------------------------------------------------------------------
    def step_times(self, resolution: str, warmups: int = 1) -> tuple[list[float], list[float], torch.Tensor]:
        """Warm-up and timed step durations of the current model, and the last output."""
        inputs = self.segment_inputs(resolution)
        run = lambda: self.model(**inputs.kwargs())[0]  # noqa: E731
        warm = []
        for _ in range(warmups):
            started = time.perf_counter()
            seconds, output = time_call(run)
            warm.append(time.perf_counter() - started)
        timed = []
        for _ in range(self.repeats):
            seconds, output = time_call(run)
            timed.append(seconds)
        return warm, timed, output

    def record(self, variant: str, resolution: str, **fields) -> None:
        row = {"variant": variant, "resolution": resolution, **fields}
        self.results.append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        if self.out is not None:
            self.out.write_text(json.dumps({"meta": self.meta, "results": self.results}, indent=1))

    def reference(self, resolution: str) -> torch.Tensor:
        """Output of the plain model with the ``native`` backend (computed once per resolution)."""
        if resolution not in self.references:
            model = self.clean_model()
            model.set_attention_backend("native")
            with torch.inference_mode():
                self.references[resolution] = model(**self.segment_inputs(resolution).kwargs())[0].float()
        return self.references[resolution]

    def finish_step_variant(self, variant: str, resolution: str, warm, timed, output, **extra) -> None:
        reference = self.reference(resolution)
        median = statistics.median(timed)
        flops = sum(fullsize.transformer_flops(resolution).values())
        self.record(
            variant,
            resolution,
            step_s=round(median, 3),
            step_s_all=[round(t, 3) for t in timed],
            tflops=round(flops / median / 1e12),
            first_call_s=round(warm[0], 2),
            peak_gib=peak_gib(),
            finite=bool(torch.isfinite(output).all()),
            rel_l2_vs_native=round(relative_l2(output, reference), 5),
            **extra,
        )

    # -- variants ---------------------------------------------------------------------------------
    def run_backend(self, backend: str, resolution: str) -> None:
        model = self.clean_model()
        self.reference(resolution)
        model.set_attention_backend(backend)
        reset_peak()
        with torch.inference_mode():
            warm, timed, output = self.step_times(resolution)
        self.finish_step_variant(backend, resolution, warm, timed, output, backend=backend)

    def run_compiled(self, kind: str, backend: str, resolution: str) -> None:
        """``compile`` (bf16) or ``fp8ao`` (torchao float8 rowwise + compile) or ``layerwise_fp8``."""
        state = f"{kind}:{backend}"
        self.reference(resolution)  # needs the clean model, so before the model is changed
        if self.model_state != state:
            model = self.clean_model()
            self.model_state = state
            if kind == "fp8ao":
                from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

                quantize_(
                    model,
                    Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                    filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear) and fqn.startswith("blocks."),
                )
            if kind == "layerwise_fp8":
                model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
            model.set_attention_backend(backend)
            if kind in ("compile", "fp8ao"):
                model.compile_repeated_blocks(fullgraph=True)
            gc.collect()
            torch.cuda.empty_cache() if DEVICE == "cuda" else None
        else:
            torch._dynamo.reset()  # recompile with static shapes for this resolution
        reset_peak()
        with torch.inference_mode():
            warm, timed, output = self.step_times(resolution)
        median = statistics.median(timed)
        self.finish_step_variant(
            state, resolution, warm, timed, output, backend=backend, compile_s=round(warm[0] - median, 1)
        )

    def run_motion_encoder(self, resolution: str) -> None:
        """The face motion encoder + face encoder on 77 face crops: recomputed at every step."""
        model = self.clean_model()
        faces = self.segment_inputs(resolution).face_pixel_values
        batch = model.config.motion_encoder_batch_size

        def encode() -> torch.Tensor:
            pixels = faces.permute(0, 2, 1, 3, 4).reshape(-1, *faces.shape[1:2], *faces.shape[3:])
            motion = torch.cat([model.motion_encoder(chunk) for chunk in torch.split(pixels, batch)])
            return model.face_encoder(motion.view(1, faces.shape[2], -1))

        with torch.inference_mode():
            time_call(encode)
            timed = [time_call(encode)[0] for _ in range(self.repeats)]
        self.record(
            "motion_encoder",
            resolution,
            step_s=round(statistics.median(timed), 3),
            step_s_all=[round(t, 3) for t in timed],
        )

    def run_schedule(self, kind: str, backend: str, resolution: str) -> None:
        """A 20-step UniPC schedule as the pipeline runs it, optionally with a diffusers step cache."""
        model = self.clean_model()
        model.set_attention_backend(backend)
        config = None
        if kind in ("fbc", "mag"):
            register_animate_blocks_for_caches()
        if kind == "fbc":
            from diffusers import FirstBlockCacheConfig

            config = FirstBlockCacheConfig(threshold=0.05)
        elif kind == "mag":
            from diffusers import MagCacheConfig

            # Placeholder ratios (1.0 = "no change"): MagCache then skips as often as max_skip_steps and
            # retention_ratio allow. Real ratios are checkpoint-dependent and must be calibrated on real weights.
            config = MagCacheConfig(
                threshold=0.06,
                max_skip_steps=3,
                retention_ratio=0.2,
                num_inference_steps=SCHEDULE_STEPS,
                mag_ratios=[1.0] * SCHEDULE_STEPS,
            )
        elif kind == "taylorlite":
            from diffusers import TaylorSeerCacheConfig

            # Lite mode: only proj_out's output is predicted; the blocks are skipped on cached steps.
            config = TaylorSeerCacheConfig(
                cache_interval=5, disable_cache_before_step=3, max_order=1, use_lite_mode=True
            )
        elif kind == "taylor":
            from diffusers import TaylorSeerCacheConfig

            # The default identifiers ("^blocks.*attn", full match) match no module of this model (attn1,
            # attn2): name the blocks' attention and feed-forward layers explicitly.
            config = TaylorSeerCacheConfig(
                cache_interval=5,
                disable_cache_before_step=3,
                max_order=1,
                cache_identifiers=[r"^blocks\.\d+\.(attn1|attn2|ffn)$"],
            )
        if config is not None:
            model.enable_cache(config)
        inputs = self.segment_inputs(resolution)
        scheduler = fullsize.build_scheduler()
        scheduler.set_timesteps(SCHEDULE_STEPS, device=DEVICE)
        generator = torch.Generator(device=DEVICE).manual_seed(123)
        latents = torch.randn(
            inputs.hidden_states[:, :16].shape, generator=generator, device=DEVICE, dtype=torch.float32
        )
        condition = inputs.hidden_states[:, 16:]
        computed = []  # the second block's feed-forward runs only on fully computed steps
        counter = model.blocks[1].ffn.net[-1].register_forward_pre_hook(lambda *_: computed.append(1))
        times = []
        reset_peak()
        try:
            with torch.inference_mode():
                for t in scheduler.timesteps:
                    kwargs = inputs.kwargs()
                    kwargs["hidden_states"] = torch.cat([latents.to(condition.dtype), condition], dim=1)
                    kwargs["timestep"] = t.expand(1)
                    with model.cache_context("cond"):
                        seconds, noise = time_call(lambda: model(**kwargs)[0])
                    times.append(seconds)
                    latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        finally:
            counter.remove()
            if config is not None:
                model.disable_cache()
        row = {
            "backend": backend,
            "steps": SCHEDULE_STEPS,
            "total_s": round(sum(times), 2),
            "avg_step_s": round(sum(times) / len(times), 3),
            "step_s_all": [round(t, 3) for t in times],
            "computed_steps": len(computed),
            "peak_gib": peak_gib(),
            "finite": bool(torch.isfinite(latents).all()),
        }
        if kind == "steps20":
            self.schedule_reference[resolution] = latents
        elif resolution in self.schedule_reference:
            row["rel_l2_vs_steps20"] = round(relative_l2(latents, self.schedule_reference[resolution]), 5)
        self.record(f"{kind}:{backend}", resolution, **row)

    def run(self, variant: str, resolution: str) -> None:
        kind, _, backend = variant.partition(":")
        if variant in ATTENTION_BACKENDS:
            self.run_backend(variant, resolution)
        elif kind in ("compile", "fp8ao", "layerwise_fp8"):
            self.run_compiled(kind, backend or "_native_cudnn", resolution)
        elif kind == "motion_encoder":
            self.run_motion_encoder(resolution)
        elif kind in ("steps20", "fbc", "mag", "taylor", "taylorlite"):
            self.run_schedule(kind, backend or "_native_cudnn", resolution)
        else:
            raise SystemExit(f"unknown variant {variant!r}")


def shrink_for_smoke_test() -> None:
    """Tiny transformer and frames on the CPU, to check this script's code paths in seconds."""
    global DEVICE, DTYPE
    DEVICE, DTYPE = "cpu", torch.float32  # bf16 convolutions are very slow on the CPU
    fullsize.TRANSFORMER_CONFIG.update(
        num_attention_heads=2,
        num_layers=5,
        ffn_dim=256,
        added_kv_proj_dim=256,
        text_dim=64,
        image_dim=32,
        motion_encoder_size=64,
    )
    fullsize.RESOLUTIONS.update({"480p": (32, 32), "720p": (48, 32)})
    fullsize.SEGMENT_FRAMES = 5
    fullsize.FACE_SIZE = 64
    fullsize.TEXT_TOKENS = 16


def print_table(results: list[dict]) -> None:
    """Short table of every result (printed last, so it is in the reply's tail)."""
    print("\nvariant                          res    step_s  first_s  peak_GiB  relL2     note")
    for row in results:
        step = row.get("step_s", row.get("avg_step_s"))
        note = row.get("error", "")
        if "computed_steps" in row:
            note = f"total {row['total_s']} s, {row['computed_steps']}/{row['steps']} steps computed"
            if "rel_l2_vs_steps20" in row:
                note += f", relL2 vs 20-step {row['rel_l2_vs_steps20']}"
        if "compile_s" in row:
            note = f"compile {row['compile_s']} s"
        print(
            f"{row['variant']:<32} {row['resolution']:<6} {step if step is not None else '-':>7} "
            f"{row.get('first_call_s', '-'):>8} {row.get('peak_gib', '-'):>9} {row.get('rel_l2_vs_native', '-'):>8}  {note}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", nargs="+", default=["720p", "480p"], choices=sorted(fullsize.RESOLUTIONS))
    parser.add_argument("--variants", nargs="+", default=["native", "_native_cudnn", "_native_flash", "sage"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_transformer.json")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no new variant after this many seconds")
    parser.add_argument("--by-resolution", action="store_true", help="loop resolutions outside variants")
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU: checks the script, not speed")
    args = parser.parse_args()
    if args.smoke:
        shrink_for_smoke_test()

    started = time.perf_counter()
    bench = Bench(args.repeats, args.out, started + args.budget_s)
    bench.meta["sage_v1"] = enable_sage_v1()
    bench.meta["command"] = " ".join(sys.argv)
    for resolution in args.resolutions:  # references need the clean model: compute them before any lever
        bench.reference(resolution)
    order = (
        [(v, r) for r in args.resolutions for v in args.variants]
        if args.by_resolution
        else [(v, r) for v in args.variants for r in args.resolutions]
    )
    for variant, resolution in order:
        if time.perf_counter() > bench.deadline:
            bench.record(variant, resolution, error="skipped: time budget spent")
            continue
        try:
            bench.run(variant, resolution)
        except Exception as error:  # one failing lever must not lose the others' numbers
            bench.record(variant, resolution, error=f"{type(error).__name__}: {str(error)[:300]}")
            if "out of memory" in str(error).lower():
                bench.drop_model()
    bench.meta["wall_s"] = round(time.perf_counter() - started, 1)
    bench.save()
    print_table(bench.results)


if __name__ == "__main__":
    main()
