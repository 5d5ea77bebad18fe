"""Memory policy under GPU memory caps: which configuration completes one segment, how fast, at what peak.

For each cap (``torch.cuda.set_per_process_memory_fraction``: 70 GiB = ZeroGPU's slice, 48 and 24 GiB = dedicated
Spaces and local cards) and resolution, the candidate configurations are tried fastest first until one completes:
one 77-frame segment of random conditioning through `wan_animate.generate.generate` with ``--steps`` denoising
steps on the full-size random-weight pipeline (`fullsize.py`). The first that completes is the plan for that cap
and resolution, printed in the form of `wan_animate.models.MEMORY_PLANS`. Candidates, fastest first (steps
dominate; VAE tiling costs 1.7-1.8x the VAE's time; group offload ~1.1x a step; sequential 2.5x):

    none, none+tiling, group, group+tiling, sequential, sequential+tiling

and, separately (``--fp8``: the plan for a transformer stored in fp8, which changes outputs), the same with fp8
storage. A placed pipeline is reused for every cap and resolution of its memory mode (the cap is set after placing:
a mode whose resident weights exceed the cap fails at once, which is the answer). The prompt-embedding cache is
cleared before each run, so every run pays the text encoder's peak as a new prompt does.

    python benchmarks/bench_memory.py --caps 70 48 --resolutions 720p 480p --steps 2
    python benchmarks/bench_memory.py --runs 720p:none:cap70:tiling 480p:group:cap24   # explicit runs
    python benchmarks/bench_memory.py --smoke     # tiny models on the CPU: checks the script, not memory

A run is ``RES:MODE:capN[:tiling][:fp8]``. JSON goes to ``$OUT/bench_memory.json`` after every run; the table is
printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import fullsize  # noqa: E402
from bench_pipeline import build_pipeline, random_conditioning  # noqa: E402

GiB = 2**30
MODES = ("none", "group", "sequential")


@dataclass(frozen=True)
class Candidate:
    """One configuration: memory mode, VAE tiling, fp8 storage of the transformer."""

    mode: str
    tiling: bool = False
    fp8: bool = False

    @property
    def name(self) -> str:
        return self.mode + (":tiling" if self.tiling else "") + (":fp8" if self.fp8 else "")

    @property
    def placement(self) -> tuple[str, bool]:
        """What needs a new pipeline: the memory mode and fp8 storage (tiling is switched on the placed one)."""
        return self.mode, self.fp8


def candidates(fp8: bool) -> list[Candidate]:
    """Every configuration, fastest first."""
    return [Candidate(mode, tiling, fp8) for mode in MODES for tiling in (False, True)]


@dataclass(frozen=True)
class Run:
    resolution: str
    cap_gib: float
    candidate: Candidate

    @classmethod
    def parse(cls, text: str) -> "Run":
        resolution, mode, cap, *options = text.split(":")
        if mode not in MODES or not cap.startswith("cap"):
            raise SystemExit(f"bad run {text!r}: use RES:MODE:capN[:tiling][:fp8]")
        return cls(resolution, float(cap[3:]), Candidate(mode, "tiling" in options, "fp8" in options))

    @property
    def name(self) -> str:
        mode, *options = self.candidate.name.split(":")
        return ":".join([self.resolution, mode, f"cap{self.cap_gib:g}", *options])


class Timer:
    """Times the transformer's steps and the VAE's calls of one run (GPU synchronised), removable afterwards."""

    def __init__(self, pipe, device: str) -> None:
        self.device = device
        self.times: dict[str, list[float]] = {"step": [], "vae_encode": [], "vae_decode": []}
        starts: list[float] = []
        self.handles = [
            pipe.transformer.register_forward_pre_hook(lambda *_: starts.append(self.now())),
            pipe.transformer.register_forward_hook(lambda *_: self.times["step"].append(self.now() - starts.pop())),
        ]
        self.vae = pipe.vae
        for method in ("encode", "decode"):
            original = getattr(pipe.vae, method)

            def timed(*args, _original=original, _stage=f"vae_{method}", **kwargs):
                started = self.now()
                output = _original(*args, **kwargs)
                self.times[_stage].append(self.now() - started)
                return output

            setattr(pipe.vae, method, timed)

    def now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for method in ("encode", "decode"):
            self.vae.__dict__.pop(method, None)


class Placed:
    """The one pipeline placed for a memory mode and fp8 storage, rebuilt when another is needed."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.key: tuple[str, bool] | None = None
        self.pipe = None
        self.placement_s = 0.0

    def get(self, candidate: Candidate):
        from wan_animate.models import apply_memory_mode

        if self.key == candidate.placement:
            return self.pipe
        self.drop()
        started = time.perf_counter()
        pipe = build_pipeline(self.device)
        if candidate.fp8:  # as load_pipeline(fp8_storage=True) does
            pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        apply_memory_mode(pipe, candidate.mode, self.device)
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        self.key, self.pipe, self.placement_s = candidate.placement, pipe, round(time.perf_counter() - started, 1)
        return pipe

    def drop(self) -> None:
        if self.pipe is not None:
            self.pipe.remove_all_hooks()
        self.pipe, self.key = None, None
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


def run_one(run: Run, placed: Placed, steps: int) -> dict:
    """One segment under the cap; every figure of it (``ok`` False with the error when it did not complete)."""
    from wan_animate.generate import GenerationSettings, generate

    row: dict = {"run": run.name, "resolution": run.resolution, "cap_gib": run.cap_gib, "config": run.candidate.name}
    pipe = placed.get(run.candidate)
    row["placement_s"] = placed.placement_s
    (pipe.vae.enable_tiling if run.candidate.tiling else pipe.vae.disable_tiling)()
    pipe.__dict__.pop("wan_prompt_cache", None)  # generate's prompt embeddings: every run encodes its prompt
    device = placed.device
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, run.cap_gib * GiB / total))
        row["resident_gib"] = round(torch.cuda.memory_allocated() / GiB, 2)
        torch.cuda.reset_peak_memory_stats()
    timer = Timer(pipe, device)
    settings = GenerationSettings(num_inference_steps=steps, seed=0, segment_frames=fullsize.SEGMENT_FRAMES)
    started = time.perf_counter()
    try:
        result = generate(pipe, random_conditioning(run.resolution), settings)
        row.update(ok=True, frames_std=round(float(result.frames.std()), 2))
    except torch.cuda.OutOfMemoryError as error:
        row.update(ok=False, error=f"OOM: {str(error).splitlines()[0][:200]}")
    except Exception as error:  # report and go on with the other runs
        row.update(ok=False, error=f"{type(error).__name__}: {str(error)[:200]}")
    row["seconds"] = round(time.perf_counter() - started, 2)
    timer.remove()
    if not row["ok"] and run.candidate.mode != "none":
        placed.drop()  # an offloading hook stopped mid-forward may hold blocks on the GPU: start the next one clean
    steps_s = timer.times["step"]
    row.update(
        step_s=round(statistics.median(steps_s), 3) if steps_s else None,
        first_step_s=round(steps_s[0], 3) if steps_s else None,
        vae_encode_s=round(sum(timer.times["vae_encode"]), 2),
        vae_decode_s=round(sum(timer.times["vae_decode"]), 2),
    )
    if device == "cuda":
        row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 2)
        torch.cuda.set_per_process_memory_fraction(1.0)
        gc.collect()
        torch.cuda.empty_cache()
    return row


def plan_line(cap: float, resolution: str, row: dict | None) -> str:
    """The plan for a cap and resolution, as a line to compare with models.MEMORY_PLANS."""
    if row is None:
        return f"cap {cap:g} GiB, {resolution}: nothing measured completed"
    return (f"cap {cap:g} GiB, {resolution}: {row['config']} (step {row['step_s']} s, VAE {row['vae_encode_s']} + "
            f"{row['vae_decode_s']} s, peak {row.get('peak_allocated_gib')} / {row.get('peak_reserved_gib')} GiB)")


def print_table(rows: list[dict], plans: list[str]) -> None:
    print(f"\n{'run':<32} {'ok':<3} {'s':>7} {'step_s':>7} {'vae_enc':>8} {'vae_dec':>8} {'place_s':>8} "
          f"{'resident':>9} {'peak_alloc':>11} {'peak_resv':>10}  error")
    for row in rows:
        print(f"{row['run']:<32} {str(row.get('ok'))[0]:<3} {row.get('seconds', '-'):>7} {row.get('step_s') or '-':>7} "
              f"{row.get('vae_encode_s', '-'):>8} {row.get('vae_decode_s', '-'):>8} {row.get('placement_s', '-'):>8} "
              f"{row.get('resident_gib', '-'):>9} {row.get('peak_allocated_gib', '-'):>11} "
              f"{row.get('peak_reserved_gib', '-'):>10}  {row.get('error', '')[:70]}")
    if plans:
        print("\nplans (first configuration that completed, fastest first):")
        for line in plans:
            print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caps", nargs="+", type=float, default=[70, 48, 24], help="GPU memory caps in GiB")
    parser.add_argument("--resolutions", nargs="+", choices=("720p", "480p"), default=["720p", "480p"])
    parser.add_argument("--fp8", action="store_true", help="search the plans for fp8 storage instead of bf16")
    parser.add_argument("--runs", nargs="+", default=None, help="explicit runs instead of the search")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no new run after this many seconds")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_memory.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, not memory")
    args = parser.parse_args()
    device = "cuda"
    if args.smoke:
        device = "cpu"
        fullsize.shrink_for_smoke()
        args.steps = 1

    import diffusers

    started = time.perf_counter()
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "command": " ".join(sys.argv), "steps": args.steps}
    rows: list[dict] = []
    placed = Placed(device)

    def measure(run: Run) -> dict:
        if time.perf_counter() - started > args.budget_s:
            row = {"run": run.name, "ok": False, "error": "skipped: time budget spent"}
        elif device == "cpu" and run.candidate.mode != "none":
            row = {"run": run.name, "ok": False, "error": "not run: offloading needs a CUDA GPU (smoke test)"}
        else:
            row = run_one(run, placed, args.steps)
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
        return row

    plans: list[str] = []
    if args.runs:
        for text in args.runs:
            measure(Run.parse(text))
    else:
        # Candidate-major, so a placed pipeline serves every cap and resolution still without a plan; each
        # (cap, resolution) takes the first candidate that completes, which is its fastest.
        chosen: dict[tuple[float, str], dict | None] = {(cap, res): None for cap in args.caps for res in args.resolutions}
        for candidate in candidates(args.fp8):
            for key in [key for key, row in chosen.items() if row is None]:
                row = measure(Run(key[1], key[0], candidate))
                if row.get("ok"):
                    chosen[key] = row
        plans = [plan_line(cap, res, row) for (cap, res), row in chosen.items()]
    placed.drop()
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    meta["plans"] = plans
    args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    print_table(rows, plans)


if __name__ == "__main__":
    main()
