"""Step caches (`wan_animate.caching`) on the full-size Animate transformer: seconds per 20-step segment.

For each resolution the transformer (random weights, bf16, on the GPU: `fullsize.build_transformer`) runs
one 77-frame segment's denoising loop as the pipeline does (UniPC flow matching, shift 5, inside
``cache_context("cond")``), with no cache and with each cache of `wan_animate.caching`. Every step is timed
with CUDA events (`bench_transformer.time_call`) and marked computed or skipped (a hook on the last block's
feed-forward, which runs only when the blocks are really computed). Reported per resolution and cache:

- steps computed / skipped, and the fraction skipped;
- seconds per 20-step segment: measured (the loop's sum) and from medians (computed steps x median computed
  step + skipped steps x median skipped step, each median over >= 3 steps);
- speed-up against no cache (from the medians);
- relative L2 of the final latents against the uncached loop;
- peak GPU memory of the loop (the caches keep residuals of the hidden states: ~0.8 GB each at 720p).

Two modes, chosen per resolution by ``--steps RES=N``:

``N > 0`` (default 480p = 20): whole N-step loops, one per variant. The uncached loop runs with MagCache in
    calibration mode (every block computed, output bit-identical to no cache), and its ratios feed the
    ``mag`` loop: MagCache gets ratios calibrated on this (random) model, none are made up.
``N = 0`` (default 720p): per-step costs only, to stay within a few minutes (a 720p step is ~13 s; twenty
    of them per variant would take over 4 min each). The uncached step is timed, and each cache is forced to
    skip (FirstBlockCache threshold 1e9, MagCache ratios 1.0 with no retention, TaylorSeer one computed step)
    for ``--repeats`` steps after one computed step. The 20-step segment time uses the skip pattern measured
    at the resolution run in loops (same schedule and cache settings). No output difference is measured.

Random weights: the step costs hold for the real checkpoint; how many steps FirstBlockCache and MagCache skip
does not (it depends on the weights), and neither does the output difference. TaylorSeer's pattern is fixed
by its schedule (steps 0-2 and every 5th computed), so it holds.

    python benchmarks/bench_caches.py                                   # H100: ~4.5 min (estimate below)
    python benchmarks/bench_caches.py --caches first_block taylorseer   # ~3.8 min
    python benchmarks/bench_caches.py --tiny                            # tiny, on the CPU: checks the script

Estimated H100 time from benchmarks/RESULTS.md's step costs (3.6 s at 480p, 12.9 s at 720p, ~0.2 s skipped):
720p per-step costs ~70 s (warm-up + 3 forced runs of 1 computed + 3 skipped steps + 1 uncached step); 480p
loops ~3 min (uncached 72 s, FirstBlockCache ~44 s, MagCache ~30 s, TaylorSeer ~27 s); build ~20 s. With
``--caches first_block taylorseer`` ~3.8 min. ``--budget-s`` stops starting runs after that many seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_transformer
import fullsize

from wan_animate.caching import (
    STEP_CACHES,
    disable_step_cache,
    enable_step_cache,
    mag_calibration_ratios,
)
from wan_animate.errors import WanAnimateError

SEGMENT_STEPS = 20
"""Steps per segment of the contract's default: the segment time is reported for this many."""
CACHES = tuple(name for name in STEP_CACHES if name != "none")


def forced_skip_options(cache: str, steps: int) -> dict:
    """Settings that make ``cache`` skip every step after the first (per-step mode: skipped-step cost)."""
    if cache == "first_block":
        return {"threshold": 1e9}
    if cache == "mag":
        # Test ratios of exactly 1 ("nothing changes"): a measuring device for the skip cost, not real ratios.
        return {"mag_ratios": [1.0] * steps, "retention_ratio": 0.0, "threshold": 1e9, "max_skip_steps": steps}
    return {"disable_cache_before_step": 1, "cache_interval": 10**6}


@dataclass
class Loop:
    """One denoising loop: per-step seconds, which steps computed the blocks, final latents."""

    seconds: list[float]
    computed: list[bool]
    latents: torch.Tensor
    mag_ratios: list[float] | None = None
    peak_gib: float | None = None

    def computed_times(self) -> list[float]:
        return [s for s, c in zip(self.seconds, self.computed) if c]

    def skipped_times(self) -> list[float]:
        return [s for s, c in zip(self.seconds, self.computed) if not c]


@dataclass
class Bench:
    """The model, the device, and every row measured so far."""

    device: str
    dtype: torch.dtype
    repeats: int
    deadline: float
    out: Path | None
    model: torch.nn.Module | None = None
    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def transformer(self) -> torch.nn.Module:
        if self.model is None:
            started = time.perf_counter()
            self.model = fullsize.build_transformer(self.device, self.dtype)
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.meta["build_s"] = round(time.perf_counter() - started, 1)
            self.meta["parameters_billion"] = round(fullsize.parameter_count(self.model) / 1e9, 3)
        return self.model

    def denoise(self, inputs: fullsize.SegmentInputs, steps: int, cache: str = "none", **options) -> Loop:
        """``steps`` UniPC steps from seeded noise with ``cache`` on (the pipeline's loop, transformer only)."""
        model = self.transformer()
        scheduler = fullsize.build_scheduler()
        scheduler.set_timesteps(steps, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(123)
        condition = inputs.hidden_states[:, 16:]
        latents = torch.randn(
            inputs.hidden_states[:, :16].shape, generator=generator, device=self.device, dtype=torch.float32
        )
        computed: list[bool] = []
        counter = model.blocks[-1].ffn.register_forward_pre_hook(lambda *_: computed.__setitem__(-1, True))
        seconds: list[float] = []
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        enable_step_cache(model, cache, num_inference_steps=steps, **options)
        try:
            with torch.inference_mode():
                for t in scheduler.timesteps:
                    kwargs = inputs.kwargs()
                    kwargs["hidden_states"] = torch.cat([latents.to(condition.dtype), condition], dim=1)
                    kwargs["timestep"] = t.expand(1)
                    computed.append(False)
                    with model.cache_context("cond"):
                        step_s, noise = bench_transformer.time_call(lambda kwargs=kwargs: model(**kwargs)[0])
                    seconds.append(step_s)
                    latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            ratios = mag_calibration_ratios(model)
        finally:
            counter.remove()
            disable_step_cache(model)
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device == "cuda" else None
        return Loop(seconds, computed, latents.float(), ratios, peak)

    def warm_up(self, inputs: fullsize.SegmentInputs) -> float:
        """One uncached step at a new shape (kernel selection, allocator growth); returns its seconds."""
        return self.denoise(inputs, 1).seconds[0]

    def record(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.out is not None:
            self.out.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1))

    def out_of_time(self, resolution: str, cache: str) -> bool:
        if time.perf_counter() < self.deadline:
            return False
        self.record({"resolution": resolution, "cache": cache, "error": "skipped: time budget spent"})
        return True


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def loop_row(resolution: str, cache: str, loop: Loop, reference: Loop | None) -> dict:
    """Figures of one whole loop."""
    steps = len(loop.seconds)
    computed = sum(loop.computed)
    row = {
        "resolution": resolution,
        "cache": cache,
        "mode": "loop",
        "steps": steps,
        "steps_computed": computed,
        "fraction_skipped": round(1 - computed / steps, 3),
        "computed_step_s": median(loop.computed_times()),
        "skipped_step_s": median(loop.skipped_times()),
        "computed_samples": computed,
        "skipped_samples": steps - computed,
        "loop_s_measured": round(sum(loop.seconds), 2),
        "peak_gib": loop.peak_gib,
        "step_s_all": [round(s, 3) for s in loop.seconds],
        "finite": bool(torch.isfinite(loop.latents).all()),
    }
    if reference is not None and cache != "none":
        row["rel_l2_vs_none"] = round(bench_transformer.relative_l2(loop.latents, reference.latents), 5)
    return row


def run_loops(bench: Bench, resolution: str, steps: int, caches: list[str]) -> None:
    """Whole ``steps``-step loops: uncached (with MagCache calibration) and each cache."""
    inputs = fullsize.make_segment_inputs(resolution, device=bench.device, dtype=bench.dtype)
    bench.meta.setdefault("warm_up_s", {})[resolution] = round(bench.warm_up(inputs), 2)
    if bench.out_of_time(resolution, "none"):
        return
    calibrate = {"calibrate": True} if "mag" in caches else {}
    reference = bench.denoise(inputs, steps, "mag" if calibrate else "none", **calibrate)
    row = loop_row(resolution, "none", reference, None)
    row["mag_ratios_calibrated"] = [round(r, 5) for r in reference.mag_ratios] if reference.mag_ratios else None
    bench.record(row)
    for cache in caches:
        if bench.out_of_time(resolution, cache):
            continue
        options = {"mag_ratios": reference.mag_ratios} if cache == "mag" else {}
        try:
            bench.record(loop_row(resolution, cache, bench.denoise(inputs, steps, cache, **options), reference))
        except (RuntimeError, ValueError, WanAnimateError) as error:  # e.g. out of memory: keep the others
            bench.record({"resolution": resolution, "cache": cache, "error": f"{type(error).__name__}: {error}"[:300]})


def run_step_costs(bench: Bench, resolution: str, caches: list[str]) -> None:
    """Per-step costs only: uncached steps, and each cache forced to skip ``repeats`` steps after computing one.

    The caches' computed steps are full steps too, so they count as samples of the computed-step cost; the
    uncached loop only adds what is missing to reach ``repeats`` samples.
    """
    inputs = fullsize.make_segment_inputs(resolution, device=bench.device, dtype=bench.dtype)
    bench.meta.setdefault("warm_up_s", {})[resolution] = round(bench.warm_up(inputs), 2)
    loops: dict[str, Loop] = {}
    for cache in caches:
        if bench.out_of_time(resolution, cache):
            continue
        steps = 1 + bench.repeats
        loops[cache] = bench.denoise(inputs, steps, cache, **forced_skip_options(cache, steps))
    missing = max(1, bench.repeats - len(loops))
    if not bench.out_of_time(resolution, "none"):
        loops["none"] = bench.denoise(inputs, missing)
    computed = [s for loop in loops.values() for s in loop.computed_times()]
    for cache, loop in loops.items():
        bench.record(
            {
                "resolution": resolution,
                "cache": cache,
                "mode": "step_costs",
                "computed_step_s": median(computed),
                "skipped_step_s": median(loop.skipped_times()),
                "computed_samples": len(computed),
                "skipped_samples": len(loop.skipped_times()),
                "peak_gib": loop.peak_gib,
                "step_s_all": [round(s, 3) for s in loop.seconds],
                "steps_computed_in_run": sum(loop.computed),
            }
        )


def segment_estimates(rows: list[dict]) -> list[dict]:
    """Seconds per 20-step segment and speed-up for every (resolution, cache) measured, uncached rows first.

    The skip pattern (computed steps of 20) comes from the loop of the same cache at the resolution itself, or
    else from a resolution run in 20-step loops; the step costs always come from the resolution itself. A
    cache that computed fewer than 3 steps takes the uncached loop's median computed step (the same work).
    """
    patterns = {
        row["cache"]: (row["steps_computed"], row["resolution"])
        for row in rows
        if row.get("mode") == "loop" and row["steps"] == SEGMENT_STEPS
    }
    uncached = {
        row["resolution"]: row["computed_step_s"] for row in rows if row.get("cache") == "none" and "error" not in row
    }
    order = {name: index for index, name in enumerate(STEP_CACHES)}
    resolutions = list(dict.fromkeys(row["resolution"] for row in rows))
    table = []
    for row in sorted(rows, key=lambda r: (resolutions.index(r["resolution"]), order.get(r["cache"], 99))):
        if "error" in row:
            table.append({"resolution": row["resolution"], "cache": row["cache"], "note": row["error"]})
            continue
        if row["mode"] == "loop" and row["steps"] == SEGMENT_STEPS:
            computed, source = row["steps_computed"], row["resolution"]
        elif row["cache"] == "none":
            computed, source = SEGMENT_STEPS, row["resolution"]
        elif row["cache"] in patterns:
            computed, source = patterns[row["cache"]]
        else:
            computed, source = None, None
        computed_cost = row["computed_step_s"]
        if row["computed_samples"] < 3 and uncached.get(row["resolution"]) is not None:
            computed_cost = uncached[row["resolution"]]
        estimate = None
        if computed is not None and computed_cost is not None:
            skipped_cost = row["skipped_step_s"] if row["skipped_step_s"] is not None else 0.0
            estimate = round(computed * computed_cost + (SEGMENT_STEPS - computed) * skipped_cost, 1)
        table.append(
            {
                "resolution": row["resolution"],
                "cache": row["cache"],
                "steps_computed_of_20": computed,
                "fraction_skipped": None if computed is None else round(1 - computed / SEGMENT_STEPS, 3),
                "pattern_from": source,
                "segment_s": estimate,
                "segment_s_measured": row.get("loop_s_measured") if row.get("steps") == SEGMENT_STEPS else None,
                "computed_step_s": computed_cost,
                "skipped_step_s": row["skipped_step_s"],
                "rel_l2_vs_none": row.get("rel_l2_vs_none"),
                "peak_gib": row.get("peak_gib"),
            }
        )
    baseline = {r["resolution"]: r["segment_s"] for r in table if r["cache"] == "none" and r.get("segment_s")}
    for entry in table:
        base = baseline.get(entry["resolution"])
        if base and entry.get("segment_s"):
            entry["speed_up"] = round(base / entry["segment_s"], 2)
    return table


def print_markdown(table: list[dict], meta: dict) -> None:
    """The summary table, printed last so it is in the tail of the output."""
    print(f"\n{meta.get('device')}, diffusers {meta.get('diffusers')}, torch {meta.get('torch')}, wall {meta.get('wall_s')} s")
    print(
        "\n| resolution | cache | steps computed / 20 | skipped | s per 20-step segment | measured | speed-up "
        "| computed step s | skipped step s | rel. L2 vs none | peak GiB | pattern from |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for e in table:
        if "note" in e:
            print(f"| {e['resolution']} | {e['cache']} | {e['note']} | | | | | | | | | |")
            continue
        cells = [
            e["resolution"], e["cache"], e["steps_computed_of_20"], e["fraction_skipped"], e["segment_s"],
            e["segment_s_measured"], e.get("speed_up"), e["computed_step_s"], e["skipped_step_s"],
            e["rel_l2_vs_none"], e["peak_gib"], e["pattern_from"],
        ]
        print("| " + " | ".join("–" if c is None else str(c) for c in cells) + " |")


def parse_steps(items: list[str]) -> dict[str, int]:
    steps = {}
    for item in items:
        resolution, _, count = item.partition("=")
        if resolution not in fullsize.RESOLUTIONS or not count.isdigit():
            raise SystemExit(f"--steps takes RES=N with RES in {sorted(fullsize.RESOLUTIONS)}, got {item!r}")
        steps[resolution] = int(count)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="+", default=["720p=0", "480p=20"],
                        help="RES=N: N-step loops at RES, or 0 for per-step costs only (run in this order)")
    parser.add_argument("--caches", nargs="+", default=list(CACHES), choices=CACHES)
    parser.add_argument("--repeats", type=int, default=3, help="samples of each per-step cost (>= 3)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no new run after this many seconds")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_caches.json")
    parser.add_argument("--tiny", action="store_true", help="tiny model and frames on the CPU: checks the script")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda, or cpu with --tiny")
    args = parser.parse_args()
    if args.tiny:
        bench_transformer.shrink_for_smoke_test()  # also switches bench_transformer.time_call to the CPU clock
        # The default motion-encoder widths (512 channels) make even this tiny model take ~1 s a step on 2 cores.
        fullsize.TRANSFORMER_CONFIG["motion_encoder_channel_sizes"] = {str(2**i): 8 for i in range(2, 7)}
    if args.device:
        bench_transformer.DEVICE = args.device  # e.g. --tiny --device cuda checks the CUDA-event timing path
    steps = parse_steps(args.steps)

    import diffusers

    started = time.perf_counter()
    bench = Bench(
        device=bench_transformer.DEVICE,
        dtype=bench_transformer.DTYPE,
        repeats=max(3, args.repeats),
        deadline=started + args.budget_s,
        out=args.out,
    )
    bench.meta.update(
        device=torch.cuda.get_device_name() if bench.device == "cuda" else "cpu",
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        command=" ".join(sys.argv),
        dtype=str(bench.dtype),
    )
    for resolution, count in steps.items():
        if count > 0:
            run_loops(bench, resolution, count, args.caches)
        else:
            run_step_costs(bench, resolution, args.caches)
    bench.meta["wall_s"] = round(time.perf_counter() - started, 1)
    table = segment_estimates(bench.rows)
    if args.out is not None:
        args.out.write_text(json.dumps({"meta": bench.meta, "rows": bench.rows, "table": table}, indent=1))
    print_markdown(table, bench.meta)


if __name__ == "__main__":
    main()
