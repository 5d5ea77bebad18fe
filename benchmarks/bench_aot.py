"""Ahead-of-time compiled blocks (`wan_animate.aot`) on the full-size random transformer: build, load, step, error.

Every run measures one transformer step (one denoising step's forward, CUDA events, median of ``--repeats`` after
one warm-up) at the given resolutions, and its output's relative L2 distance to the eager bf16 output of the same
inputs (computed first, by the ``eager`` run). Runs (``--runs``, in order):

- ``eager``: plain bf16 blocks (the reference).
- ``jit``: diffusers' ``compile_repeated_blocks(fullgraph=True)`` (``torch.compile``); ``first_call_s`` includes
  the just-in-time compilation, which a ZeroGPU worker would pay on every call.
- ``aot``: a package with a dynamic token count (one for every resolution and aspect ratio): build time, package
  size, load time (`CompiledBlocks.load`, what a fresh worker pays), step time.
- ``aot-static``: one package per resolution, specialised on its token count (is dynamic slower?).
- ``lora``: random LoRAs of the relighting (r 128) and few-step (r 64) shapes on the blocks' 12 linear layers:
  eager PEFT step, and the package's ``plain`` graph (LoRAs off) and ``lora`` graph (relight 1.0; relight 0.5 +
  fast 1.0) with their errors against eager with the same weights: what passing LoRAs through costs.
- ``fp8``: torchao float8 (dynamic activations, per-row weights) blocks in an AOT package: build, step, error
  against eager bf16. Quantises the model in place, so it runs last.

    python benchmarks/bench_aot.py --runs eager jit aot --resolutions 480p 720p
    python benchmarks/bench_aot.py --smoke      # tiny model on the CPU: checks this script, not speed
    python benchmarks/bench_aot.py --smoke --device cuda   # the tiny model on the GPU, in bf16

JSON goes to ``$OUT/bench_aot.json`` (or ``--out``) after every run; the table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import fullsize  # noqa: E402

from wan_animate import aot  # noqa: E402

RUNS = ("eager", "jit", "aot", "aot-static", "lora", "fp8")
LORA_TARGETS = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
    "attn2.to_out.0", "attn2.add_k_proj", "attn2.add_v_proj", "ffn.net.0.proj", "ffn.net.2",
)
"""Every linear layer of a block: what the relighting LoRA adapts (wan_animate.lora.BLOCK_MODULE_MAP)."""
LORA_RANKS = {"relight": 128, "fast": 64}


def relative_l2(output: torch.Tensor, reference: torch.Tensor) -> float:
    output, reference = output.float(), reference.float()
    return round(float(torch.linalg.vector_norm(output - reference) / torch.linalg.vector_norm(reference)), 5)


class Bench:
    """The transformer, its inputs and eager references, and the rows measured so far."""

    def __init__(self, args: argparse.Namespace, device: str, dtype: torch.dtype, folder: Path) -> None:
        self.args = args
        self.device = device
        self.dtype = dtype
        self.folder = folder
        self.deadline = time.perf_counter() + args.budget_s
        self.rows: list[dict] = []
        self.meta = {
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__,
            "command": " ".join(sys.argv),
        }
        started = time.perf_counter()
        self.transformer = fullsize.build_transformer(device, dtype)
        self.meta["build_s"] = round(self._sync_time() - started, 1)
        self.inputs = {res: fullsize.make_segment_inputs(res, device, dtype) for res in args.resolutions}
        self.references: dict[str, torch.Tensor] = {}

    # -- helpers --------------------------------------------------------------------------------------------

    def _sync_time(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def _call(self, resolution: str) -> torch.Tensor:
        with torch.inference_mode():
            return self.transformer(**self.inputs[resolution].kwargs())[0]

    def step(self, resolution: str) -> tuple[float, float, torch.Tensor]:
        """(first call s, median step s, output): one warm-up call, then ``--repeats`` timed ones."""
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        output = self._call(resolution)
        first = self._sync_time() - started
        times = []
        for _ in range(self.args.repeats):
            if self.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                output = self._call(resolution)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                started = time.perf_counter()
                output = self._call(resolution)
                times.append(time.perf_counter() - started)
        return round(first, 3), round(statistics.median(times), 3), output

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device == "cuda" else None

    def record(self, run: str, resolution: str, **figures) -> None:
        row = {"run": run, "resolution": resolution, **figures}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1))

    def measure(self, run: str, resolution: str, reference: torch.Tensor | None = None,
                runtime: aot.CompiledBlocks | None = None, **extra) -> torch.Tensor:
        """Time one step and record it, with its error against ``reference`` (default: eager) and, with
        ``runtime``, how many block calls went through each graph (or ran eagerly)."""
        before = dict(runtime.calls) if runtime is not None else {}
        first, step, output = self.step(resolution)
        if runtime is not None:
            extra["block_calls"] = {path: runtime.calls[path] - before[path] for path in runtime.calls}
        reference = self.references.get(resolution) if reference is None else reference
        self.record(run, resolution, first_call_s=first, step_s=step, peak_gib=self.peak_gib(),
                    rel_l2_vs_eager=relative_l2(output, reference) if reference is not None else None,
                    finite=bool(torch.isfinite(output).all()), **extra)
        return output

    def compile_package(self, name: str, **options) -> tuple[aot.PackageInfo, float, float]:
        """Build a package; returns its description, build seconds and size in MB."""
        path = self.folder / f"{name}.pt2"
        started = time.perf_counter()
        info = aot.compile_blocks_aot(self.transformer, path, frames=fullsize.SEGMENT_FRAMES, **options)
        return info, round(time.perf_counter() - started, 1), round(path.stat().st_size / 1e6, 2)

    def load_package(self, name: str) -> tuple[aot.CompiledBlocks, float]:
        """Bind a package to the blocks and load its graphs as a fresh worker does; returns the load seconds."""
        started = time.perf_counter()
        runtime = aot.load_compiled_blocks(self.transformer, self.folder / f"{name}.pt2")
        runtime.load()
        return runtime, round(self._sync_time() - started, 2)

    def size_of(self, resolution: str) -> tuple[int, int]:
        return fullsize.RESOLUTIONS[resolution]

    # -- runs -----------------------------------------------------------------------------------------------

    def run_eager(self) -> None:
        for resolution in self.args.resolutions:
            self.references[resolution] = self.measure("eager", resolution).clone()

    def run_jit(self) -> None:
        self.transformer.compile_repeated_blocks(fullgraph=True)
        try:
            for resolution in self.args.resolutions:
                self.measure("jit", resolution, note="first call includes torch.compile")
        finally:
            for block in self.transformer.blocks:
                block._compiled_call_impl = None
            torch._dynamo.reset()

    def run_aot(self) -> None:
        info, build_s, size_mb = self.compile_package("dynamic", size=self.size_of(self.args.resolutions[0]))
        runtime, load_s = self.load_package("dynamic")
        try:
            for resolution in self.args.resolutions:
                self.measure("aot", resolution, runtime=runtime, build_s=build_s, load_s=load_s,
                             package_mb=size_mb, package=info.describe())
        finally:
            aot.unload_compiled_blocks(self.transformer)

    def run_aot_static(self) -> None:
        for resolution in self.args.resolutions:
            if time.perf_counter() > self.deadline:
                self.record("aot-static", resolution, error="skipped: time budget spent")
                continue
            name = f"static-{resolution}"
            info, build_s, size_mb = self.compile_package(name, shapes="static", size=self.size_of(resolution))
            runtime, load_s = self.load_package(name)
            try:
                self.measure("aot-static", resolution, runtime=runtime, build_s=build_s, load_s=load_s,
                             package_mb=size_mb, package=info.describe())
            finally:
                aot.unload_compiled_blocks(self.transformer)

    def add_loras(self) -> None:
        """Random LoRAs of the relighting and few-step shapes, small enough to keep 40 random blocks finite."""
        from peft import LoraConfig

        for adapter, rank in LORA_RANKS.items():
            targets = [f"blocks.{index}.{name}" for index in range(len(self.transformer.blocks)) for name in LORA_TARGETS]
            config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
            self.transformer.add_adapter(config, adapter_name=adapter)
        with torch.no_grad():
            for name, parameter in self.transformer.named_parameters():
                if ".lora_" in name:
                    parameter.data = parameter.data.to(self.device, self.dtype) * (0.01 if ".lora_B." in name else 1)

    def set_loras(self, weights: dict[str, float]) -> None:
        active = {name: weight for name, weight in weights.items() if weight}
        if not active:
            self.transformer.disable_adapters()
            return
        self.transformer.enable_adapters()
        self.transformer.set_adapters(list(active), list(active.values()))

    def run_lora(self) -> None:
        self.add_loras()
        states = {"loras off": {}, "relight 1.0": {"relight": 1.0}, "relight 0.5 + fast 1.0": {"relight": 0.5, "fast": 1.0}}
        eager: dict[tuple[str, str], torch.Tensor] = {}
        for resolution in self.args.resolutions:
            for label, weights in states.items():
                self.set_loras(weights)
                eager[label, resolution] = self.measure(
                    f"lora eager: {label}", resolution, note="relL2 against eager without LoRAs: the LoRAs' effect"
                ).clone()
        info, build_s, size_mb = self.compile_package("lora", size=self.size_of(self.args.resolutions[0]))
        runtime, load_s = self.load_package("lora")
        try:
            for resolution in self.args.resolutions:
                for label, weights in states.items():
                    self.set_loras(weights)
                    self.measure(f"lora aot: {label}", resolution, reference=eager[label, resolution],
                                 runtime=runtime, build_s=build_s, load_s=load_s, package_mb=size_mb,
                                 package=info.describe())
        finally:
            aot.unload_compiled_blocks(self.transformer)
            self.transformer.delete_adapters(list(LORA_RANKS))

    def run_fp8(self) -> None:
        if self.device != "cuda":
            for resolution in self.args.resolutions:
                self.record("fp8", resolution, error="not run: torchao float8 kernels need a CUDA GPU (8.9+)")
            return
        info, build_s, size_mb = self.compile_package("fp8", size=self.size_of(self.args.resolutions[0]), fp8=True)
        gc.collect()
        torch.cuda.empty_cache()
        runtime, load_s = self.load_package("fp8")
        for resolution in self.args.resolutions:
            self.measure("fp8", resolution, runtime=runtime, build_s=build_s, load_s=load_s, package_mb=size_mb,
                         package=info.describe(), note="rel. L2 against eager bf16; the model stays quantised")


def shrink_for_smoke_test() -> None:
    """Tiny transformer and segments on the CPU, to check this script's code paths in a few minutes."""
    fullsize.TRANSFORMER_CONFIG.update(
        num_attention_heads=2, num_layers=4, ffn_dim=64, added_kv_proj_dim=24, text_dim=32, image_dim=16,
        motion_encoder_size=32, attention_head_dim=12, inject_face_latents_blocks=2,
    )
    fullsize.RESOLUTIONS.update({"480p": (64, 64), "720p": (64, 96)})  # 48 and 72 tokens: within a package's
    fullsize.SEGMENT_FRAMES = 5
    fullsize.FACE_SIZE = 32


def print_table(rows: list[dict]) -> None:
    """Every row in a short table (printed last, so it is in the output's tail)."""
    print(f"\n{'run':<34} {'res':<5} {'step_s':>7} {'first_s':>8} {'build_s':>8} {'load_s':>7} {'MB':>6} "
          f"{'peak':>6} {'relL2':>8}  note")
    for row in rows:
        note = row.get("error") or " ".join(
            str(part) for part in (row.get("package"), row.get("block_calls"), row.get("note")) if part
        )
        if row.get("finite") is False:
            note = "NOT FINITE " + note
        print(f"{row['run']:<34} {row['resolution']:<5} {row.get('step_s', '-'):>7} {row.get('first_call_s', '-'):>8} "
              f"{row.get('build_s', '-'):>8} {row.get('load_s', '-'):>7} {row.get('package_mb', '-'):>6} "
              f"{row.get('peak_gib', '-') or '-':>6} {row.get('rel_l2_vs_eager', '-') if row.get('rel_l2_vs_eager') is not None else '-':>8}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=["eager", "jit", "aot"])
    parser.add_argument("--resolutions", nargs="+", choices=("480p", "720p"), default=["480p", "720p"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no new run after this many seconds")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_aot.json")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script, not speed")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda, or cpu with --smoke")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.smoke:
        shrink_for_smoke_test()
        args.repeats = 1
    device = args.device or ("cpu" if args.smoke else "cuda")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if "eager" not in args.runs:
        args.runs.insert(0, "eager")  # every error is measured against it
    order = sorted(args.runs, key=RUNS.index)  # fp8 quantises the model: it goes last

    with tempfile.TemporaryDirectory() as folder:
        bench = Bench(args, device, dtype, Path(folder))
        runners: dict[str, Callable[[], None]] = {
            "eager": bench.run_eager, "jit": bench.run_jit, "aot": bench.run_aot, "aot-static": bench.run_aot_static,
            "lora": bench.run_lora, "fp8": bench.run_fp8,
        }
        for run in order:
            if time.perf_counter() > bench.deadline:
                bench.record(run, "-", error="skipped: time budget spent")
                continue
            try:
                runners[run]()
            except Exception as error:  # one failing run must not lose the others' figures
                bench.record(run, "-", error=f"{type(error).__name__}: {str(error)[:400]}")
                aot.unload_compiled_blocks(bench.transformer)
        bench.meta["wall_s"] = round(time.perf_counter() - (bench.deadline - args.budget_s), 1)
        bench.save()
    print_table(bench.rows)


if __name__ == "__main__":
    main()
