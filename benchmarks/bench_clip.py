"""Whole clips through the package's segment loop on the full-size random-weight pipeline, and the old one-call path.

Each run builds nothing new: the full-size `WanAnimatePipeline` (`fullsize.py`, placed with
`wan_animate.models.apply_memory_mode`) is built once per process. The conditioning is written to mp4 files first
(smooth synthetic frames, so writing them is quick) and read lazily (`Conditioning.open`), as the app reads a
job's conditioning, so the clip's length costs no host memory before generation starts.

Runs (``--runs``, in order):

``memory:RES:FRAMES``
    `wan_animate.generate.generate_video` with 1 step per segment: peak GPU memory allocated / reserved
    (`torch.cuda.max_memory_*`, reset and emptied before the run) and the process's peak host RSS
    (``VmHWM``, reset through ``/proc/self/clear_refs`` before the run). E.g. ``memory:720p:77 memory:720p:300
    memory:720p:900``: goal, all three within 1 GiB of each other.
``clip:RES[:vae-bf16]``
    The fast preset (4 steps on lightx2v's schedule, `presets.LIGHTX2V_SCHEDULE`; no LoRA: it does not change
    the time) for ``--frames`` frames (300 = 10 s) through `generate_video`, end to end, with the time split:
    the denoising steps, VAE encodes, VAE decode, the rest outside the steps, and writing (the writer thread's
    total, overlapping the GPU, and the tail the call waited for after the last decode). ``vae-bf16`` runs the
    VAE in bfloat16 instead of float32 (not the package's default: measured here to decide).
``call:RES[:vae-bf16]``
    The same clip the old way: one `WanAnimatePipeline.__call__` with PIL lists (what ``generate()`` did
    before the segment loop), then `wan_animate.video.write_video` -- for the comparison, in the same process.
``chain:RES[:N]``
    The clip run's clip as a job of calls of N segments each (default 1), as the Space runs a job on ZeroGPU
    (`wan_animate.space.zerogpu`): `generate_video` again and again on one state folder with ``max_segments=N``
    until it is complete, each call timed. Against a ``clip:RES`` run before it: what each further call costs
    (resuming from the checkpoint, re-assembling the mp4, setting the job up; not ZeroGPU's worker start, which
    only a Space shows), and whether the video is the same (decoded frames, same seed).

Several GPUs: started by torchrun (one process per GPU), every process builds the same seeded pipeline; the
``memory``, ``clip`` and ``chain`` runs go through the package's leader/follower path, as the CLI and the app run
them (`wan_animate.parallel`: rank 0 shares each job and writes the video, the others follow; context
parallelism splits every step's tokens over the GPUs). A run named with ``:1gpu`` (and every ``call`` run) runs
on rank 0 alone while the others wait: the one-GPU comparison in the same processes, so these come before the
first split run (whose hooks stay on the transformer). Each row records the SHA-256 of its decoded frames
(``video_sha256``): the split and the one-GPU run of a clip give the same video when they are equal.

Goals (issue 11): 77/300/900 frames within 1 GiB; outside the steps <= 40 s for the 10-s 720p fast clip.

    python benchmarks/bench_clip.py --runs memory:720p:77 memory:720p:300 memory:720p:900
    python benchmarks/bench_clip.py --runs clip:720p call:720p
    python benchmarks/bench_clip.py --runs clip:480p call:480p clip:720p:vae-bf16
    python benchmarks/bench_clip.py --runs clip:720p chain:720p chain:720p:2
    torchrun --standalone --nproc-per-node 2 benchmarks/bench_clip.py --runs clip:720p:1gpu clip:720p

``--budget-s``: generation stops cleanly (resumably, `generate_video`'s ``deadline``) before the budget is
spent, and a run is not started once it is; JSON goes to ``$OUT`` (or ``--out``) after every run; a table is
printed last. ``--smoke``: tiny models on the CPU, short clips (checks the script, not speed).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import fullsize  # noqa: E402
from bench_pipeline import StageTimer, build_pipeline  # noqa: E402

from wan_animate.parallel import (  # noqa: E402
    ParallelContext,
    enable_context_parallel,
    init_distributed,
    launched_with_several_processes,
    run_follower,
    share_job,
    shutdown,
)

GiB = 2**30
SMOKE_FRAMES = {77: 3, 300: 13, 900: 37}
"""Clip lengths of a smoke run (5-frame segments): 1, 3 and 9 segments like 77, 300 and 900 frames of 77."""


@dataclass(frozen=True)
class RunSpec:
    """One run: kind (``memory``, ``clip``, ``call`` or ``chain``), resolution, frames, VAE dtype, segments per call,
    and whether it runs on rank 0 alone when several processes were started (``:1gpu``)."""

    kind: str
    resolution: str
    frames: int
    vae_bf16: bool = False
    segments_per_call: int | None = None
    one_gpu: bool = False

    @classmethod
    def parse(cls, text: str, clip_frames: int) -> "RunSpec":
        kind, resolution, *rest = text.split(":")
        one_gpu = "1gpu" in rest
        rest = [part for part in rest if part != "1gpu"]
        if kind not in ("memory", "clip", "call", "chain") or resolution not in fullsize.RESOLUTIONS:
            raise SystemExit(
                f"unknown run {text!r}: memory:RES:FRAMES, clip:RES[:vae-bf16], call:RES[:vae-bf16] or chain:RES[:N], "
                "each with an optional :1gpu"
            )
        if kind == "memory":
            return cls(kind, resolution, int(rest[0]), one_gpu=one_gpu)
        if kind == "chain":
            return cls(kind, resolution, clip_frames, segments_per_call=int(rest[0]) if rest else 1, one_gpu=one_gpu)
        return cls(kind, resolution, clip_frames, vae_bf16="vae-bf16" in rest, one_gpu=one_gpu or kind == "call")

    @property
    def name(self) -> str:
        if self.kind == "memory":
            name = f"memory:{self.resolution}:{self.frames}"
        elif self.kind == "chain":
            name = f"chain:{self.resolution}:{self.segments_per_call}"
        else:
            name = f"{self.kind}:{self.resolution}" + (":vae-bf16" if self.vae_bf16 else "")
        return name + (":1gpu" if self.one_gpu and self.kind != "call" else "")


# -- host memory ---------------------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux: ``5`` into ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_gib(field: str = "VmHWM") -> float | None:
    """``VmHWM`` (peak since the last reset) or ``VmRSS`` (now) of this process, in GiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) * 1024 / GiB, 3)
    except OSError:
        pass
    return None


# -- conditioning on disk ------------------------------------------------------------------------------------


def write_conditioning(folder: Path, resolution: str, frames: int) -> Path:
    """An Animation conditioning folder of ``frames`` smooth, moving synthetic frames (written frame by frame)."""
    from wan_animate.conditioning import FACE_FILE, FACE_SIZE, METADATA_FILE, POSE_FILE, REFERENCE_FILE
    from wan_animate.video import FAST_PRESET, write_video

    height, width = fullsize.RESOLUTIONS[resolution]
    folder.mkdir(parents=True, exist_ok=True)

    def moving(h: int, w: int):
        y, x = np.mgrid[0:h, 0:w]
        for t in range(frames):
            level = (x + 2 * y + 4 * t) % 256
            yield np.stack([level, (level + 85) % 256, (255 - level)], axis=-1).astype(np.uint8)

    Image.fromarray(next(moving(height, width))).save(folder / REFERENCE_FILE)
    write_video(folder / POSE_FILE, moving(height, width), 30.0, preset=FAST_PRESET)
    write_video(folder / FACE_FILE, moving(FACE_SIZE, FACE_SIZE), 30.0, preset=FAST_PRESET)
    (folder / METADATA_FILE).write_text(json.dumps({"mode": "animate", "fps": 30.0, "num_frames": frames}))
    return folder


# -- the runs ------------------------------------------------------------------------------------------------


class Bench:
    """The pipeline of this process, its timers, and the conditioning folders made so far."""

    def __init__(self, device: str, memory_mode: str, compile_blocks: bool, scratch: Path, parallel: ParallelContext | None = None) -> None:
        from wan_animate.models import apply_memory_mode

        self.device = device
        self.parallel = parallel
        self.scratch = scratch
        self.folders: dict[tuple[str, int], Path] = {}
        self.video_shas: dict[str, str | None] = {}  # run name -> its decoded frames' SHA-256
        started = time.perf_counter()
        self.pipe = build_pipeline(device)
        apply_memory_mode(self.pipe, memory_mode, device)
        if compile_blocks:
            self.pipe.transformer.compile_repeated_blocks()
        self.build_s = round(time.perf_counter() - started, 1)
        self.timer = StageTimer(sync=device == "cuda")
        self.timer.hook_module(self.pipe.text_encoder, "prompt_encoding")
        self.timer.hook_module(self.pipe.image_encoder, "image_encoding")
        self.timer.wrap_method(self.pipe.vae, "encode", "vae_encode")
        self.timer.wrap_method(self.pipe.vae, "decode", "vae_decode")
        self.timer.hook_module(self.pipe.transformer, "denoising_step")

    def conditioning(self, resolution: str, frames: int) -> Path:
        key = (resolution, frames)
        if key not in self.folders:
            self.folders[key] = write_conditioning(self.scratch / f"conditioning_{resolution}_{frames}", resolution, frames)
        return self.folders[key]

    def _row(self, spec: RunSpec) -> dict:
        gpus = 1 if self.parallel is None or spec.one_gpu else self.parallel.world_size
        return {"run": spec.name, "gpus": gpus, "frames": spec.frames, "vae_dtype": "bf16" if spec.vae_bf16 else "fp32"}

    def _start(self, spec: RunSpec) -> None:
        """Reset the timers and the memory peaks; put the VAE in the run's dtype."""
        vae_dtype = torch.bfloat16 if spec.vae_bf16 else torch.float32
        if self.pipe.vae.dtype != vae_dtype:
            self.pipe.vae.to(vae_dtype)
        self.timer.calls.clear()
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def _finish(self, row: dict, wall_s: float) -> dict:
        stages = {name: sum(times) for name, times in self.timer.calls.items()}
        steps = self.timer.calls.get("denoising_step", [])
        row.update(
            wall_s=round(wall_s, 2),
            steps=len(steps),
            steps_s=round(sum(steps), 2),
            step_s_median=round(statistics.median(steps), 3) if steps else None,
            outside_steps_s=round(wall_s - sum(steps), 2),
            vae_encode_s=round(stages.get("vae_encode", 0.0), 2),
            vae_decode_s=round(stages.get("vae_decode", 0.0), 2),
            image_encode_s=round(stages.get("image_encoding", 0.0), 2),
            prompt_encode_s=round(stages.get("prompt_encoding", 0.0), 2),
            host_peak_rss_gib=rss_gib(),
        )
        if self.device == "cuda":
            row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
            row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GiB, 2)
        return row

    def run_engine(self, spec: RunSpec, deadline: float) -> dict:
        """`generate_video` on the lazily read conditioning (the package's path), split over every process unless
        the run is a ``:1gpu`` one."""
        from wan_animate.conditioning import Conditioning
        from wan_animate.generate import GenerationSettings, generate_video
        from wan_animate.presets import LIGHTX2V_SCHEDULE

        folder = self.conditioning(spec.resolution, spec.frames)
        state = self.scratch / f"state_{spec.name.replace(':', '_')}"
        shutil.rmtree(state, ignore_errors=True)
        settings = GenerationSettings(seed=0, relight=False, segment_frames=fullsize.SEGMENT_FRAMES)
        if spec.kind == "memory":
            settings = replace(settings, num_inference_steps=1)
        else:
            settings = replace(settings, num_inference_steps=LIGHTX2V_SCHEDULE.steps, scheduler=LIGHTX2V_SCHEDULE)
        marks: dict[str, float] = {}

        def progress(done: int, total: int, description: str) -> None:
            if "writing the video" in description:
                marks["last_decode_done"] = time.perf_counter()

        split = self.parallel is not None and not spec.one_gpu
        row = self._row(spec)
        self._start(spec)
        row["host_rss_before_gib"] = rss_gib("VmRSS")
        reset_peak_rss()
        started = time.perf_counter()
        calls: list[float] = []  # a chain run's calls (one for the others)
        while True:
            call_started = time.perf_counter()
            conditioning, job_settings, job_progress, cancel = Conditioning.open(folder), settings, progress, None
            if split:  # as the CLI and the app do it: share the job, then enable (collective), then generate
                job_settings, job_progress, cancel = share_job(
                    self.parallel, conditioning, settings, progress=progress, state_dir=state, max_segments=spec.segments_per_call
                )
                enable_context_parallel(self.pipe, self.parallel.options)
            result = generate_video(
                self.pipe, conditioning, self.scratch / f"{spec.name.replace(':', '_')}.mp4", job_settings,
                progress=job_progress, cancel=cancel, state_dir=state, deadline=None if self.parallel else deadline,
                max_segments=spec.segments_per_call,
            )
            calls.append(round(time.perf_counter() - call_started, 2))
            if result.complete or time.monotonic() > deadline or spec.kind != "chain":
                break
        ended = time.perf_counter()
        times = torch.load(state / "checkpoint.pt", weights_only=True)["times"]
        row = self._finish(row, ended - started)
        row.update(
            ok=True,
            complete=result.complete,
            segments=f"{result.segments_done}/{result.segments_total}",
            frames_written=result.num_frames,
            inputs_wait_s=round(sum(t["inputs"] for t in times), 2),
            write_total_s=round(sum(t["write"] for t in times), 2),
            write_tail_s=round(ended - marks.get("last_decode_done", ended), 2),
            video_bytes=result.video_path.stat().st_size if result.video_path else 0,
            video_sha256=frames_sha256(result.video_path) if result.video_path else None,
        )
        row["other_s"] = round(row["outside_steps_s"] - row["vae_encode_s"] - row["vae_decode_s"] - row["write_tail_s"], 2)
        if spec.kind == "chain":
            row["calls_s"] = calls
            clip_sha = self.video_shas.get(f"clip:{spec.resolution}")  # a clip run's video of the same clip and seed
            if result.complete and clip_sha is not None:
                row["same_video_as_clip"] = row["video_sha256"] == clip_sha
        self.video_shas[spec.name] = row["video_sha256"]
        return row

    def run_call(self, spec: RunSpec) -> dict:
        """The same clip through one `WanAnimatePipeline.__call__`, then `write_video`: the path before the loop."""
        from wan_animate.conditioning import Conditioning
        from wan_animate.generate import GenerationSettings
        from wan_animate.presets import LIGHTX2V_SCHEDULE
        from wan_animate.video import write_video

        conditioning = Conditioning.load(self.conditioning(spec.resolution, spec.frames))
        settings = GenerationSettings(
            num_inference_steps=LIGHTX2V_SCHEDULE.steps, scheduler=LIGHTX2V_SCHEDULE, seed=0, relight=False,
            segment_frames=fullsize.SEGMENT_FRAMES,
        )
        row = self._row(spec)
        self._start(spec)
        row["host_rss_before_gib"] = rss_gib("VmRSS")
        reset_peak_rss()
        started = time.perf_counter()
        frames = pipeline_call(self.pipe, conditioning, settings)
        generated = time.perf_counter()
        path = write_video(self.scratch / f"{spec.name.replace(':', '_')}.mp4", frames, conditioning.fps)
        ended = time.perf_counter()
        row = self._finish(row, ended - started)
        row.update(
            ok=True, complete=True, frames_written=len(frames), write_tail_s=round(ended - generated, 2), video_bytes=path.stat().st_size,
            video_sha256=frames_sha256(path),
        )
        row["other_s"] = round(row["outside_steps_s"] - row["vae_encode_s"] - row["vae_decode_s"] - row["write_tail_s"], 2)
        return row


def frames_sha256(path: Path) -> str:
    """SHA-256 of a video's decoded frames (equal for two runs that made the same video)."""
    from wan_animate.video import iter_video

    digest = hashlib.sha256()
    for frame in iter_video(path, fps=None, max_seconds=None):
        digest.update(np.ascontiguousarray(frame).data)
    return digest.hexdigest()


def pipeline_call(pipe, conditioning, settings) -> np.ndarray:
    """What ``generate()`` did before the segment loop: one pipeline call with every frame as a PIL image."""
    from wan_animate.generate import prompt_embeddings

    needed = settings.overlap_frames + 1

    def images(frames: np.ndarray) -> list[Image.Image]:
        if len(frames) < needed:
            frames = np.concatenate([frames, np.repeat(frames[-1:], needed - len(frames), axis=0)])
        return [Image.fromarray(frame) for frame in frames]

    embeds, _ = prompt_embeddings(pipe, settings.prompt, None)
    generator = torch.Generator().manual_seed(settings.seed)
    own = pipe.scheduler
    pipe.scheduler = settings.scheduler.build(generator)
    try:
        output = pipe(
            image=Image.fromarray(conditioning.reference_image),
            pose_video=images(conditioning.pose_frames),
            face_video=images(conditioning.face_frames),
            prompt_embeds=embeds,
            height=conditioning.height,
            width=conditioning.width,
            segment_frame_length=settings.segment_frames,
            num_inference_steps=settings.num_inference_steps,
            mode=conditioning.mode,
            prev_segment_conditioning_frames=settings.overlap_frames,
            generator=generator,
            output_type="np",
        )
    finally:
        pipe.scheduler = own
    frames = np.asarray(output.frames[0])[: conditioning.num_frames]
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)


# -- report ------------------------------------------------------------------------------------------------


COLUMNS = (
    ("run", 22), ("ok", 3), ("segments", 8), ("wall_s", 7), ("steps_s", 7), ("outside_steps_s", 9), ("vae_encode_s", 7),
    ("vae_decode_s", 7), ("other_s", 7), ("write_tail_s", 6), ("write_total_s", 6), ("peak_allocated_gib", 6),
    ("peak_reserved_gib", 6), ("host_peak_rss_gib", 6),
)
HEADERS = ("run", "ok", "segments", "wall", "steps", "outside", "vae_enc", "vae_dec", "other", "tail", "write", "alloc", "resv", "rss")


def print_table(rows: list[dict]) -> None:
    """Seconds and GiB per run (printed last, so it ends the output)."""
    print("\n" + " ".join(f"{header:>{width}}" if index else f"{header:<{width}}" for index, (header, (_, width)) in enumerate(zip(HEADERS, COLUMNS))))
    for row in rows:
        cells = []
        for index, (key, width) in enumerate(COLUMNS):
            value = row.get(key, "-")
            value = str(value)[0] if key == "ok" else str(value)
            cells.append(f"{value:<{width}}" if index == 0 else f"{value:>{width}}")
        print(" ".join(cells) + (f"  {row['error'][:90]}" if row.get("error") else ""))
    memory = [row for row in rows if row["run"].startswith("memory:") and row.get("ok")]
    if len(memory) > 1 and "peak_allocated_gib" in memory[0]:
        spread = max(r["peak_allocated_gib"] for r in memory) - min(r["peak_allocated_gib"] for r in memory)
        print(f"memory runs: peak allocated spread {spread:.2f} GiB (goal <= 1 GiB)")
    one_gpu = {row["run"].removesuffix(":1gpu"): row for row in rows if row["run"].endswith(":1gpu") and row.get("complete")}
    for row in rows:
        alone = one_gpu.get(row["run"])
        if alone is not None and row.get("complete"):
            print(
                f"{row['run']}: {row['gpus']} GPUs {row['wall_s']} s (steps {row['steps_s']} s) against 1 GPU {alone['wall_s']} s "
                f"(steps {alone['steps_s']} s): {alone['wall_s'] / row['wall_s']:.2f}x the clip, "
                f"{alone['steps_s'] / row['steps_s']:.2f}x the steps; same video: {alone['video_sha256'] == row['video_sha256']}"
            )
    for row in rows:
        if row["run"].startswith("clip:720p") and row.get("ok"):
            print(f"{row['run']}: outside the steps {row['outside_steps_s']} s (goal <= 40 s; before the loop: 84 s)")
    clips = {row["run"].split(":")[1]: row for row in rows if row["run"].startswith("clip:") and row.get("complete")}
    for row in rows:
        clip = clips.get(row["run"].split(":")[1])
        if row["run"].startswith("chain:") and row.get("complete") and clip is not None and len(row["calls_s"]) > 1:
            extra = (row["wall_s"] - clip["wall_s"]) / (len(row["calls_s"]) - 1)
            print(f"{row['run']}: {len(row['calls_s'])} calls {row['calls_s']} s; {extra:.1f} s more per further call than "
                  f"one call ({clip['wall_s']} s); same video: {row.get('same_video_as_clip')}")


def shrink_for_smoke() -> None:
    """Tiny models on the CPU: checks the code paths in seconds (timings and memory meaningless)."""
    import bench_transformer

    bench_transformer.shrink_for_smoke_test()  # transformer, sizes, 5-frame segments
    fullsize.UMT5_CONFIG.update(d_model=64, num_layers=2, d_ff=128, num_heads=2, d_kv=32, vocab_size=1000)
    fullsize.CLIP_VISION_CONFIG.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    fullsize.TRANSFORMER_CONFIG.update(text_dim=64, image_dim=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["memory:720p:77", "memory:720p:300", "memory:720p:900"])
    parser.add_argument("--frames", type=int, default=300, help="frames of the clip and call runs (default 300 = 10 s)")
    parser.add_argument("--memory-mode", default="none", choices=["none", "model", "group", "sequential"])
    parser.add_argument("--compile", action="store_true", help="compile the transformer's blocks (adds ~15 s per resolution)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop generating and start no run after this many seconds")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_clip.json")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, short clips: checks the script")
    args = parser.parse_args()
    started = time.perf_counter()
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        shrink_for_smoke()
    specs = [RunSpec.parse(text, args.frames) for text in args.runs]
    if args.smoke:
        specs = [replace(spec, frames=SMOKE_FRAMES.get(spec.frames, 5)) for spec in specs]
    parallel = init_distributed() if launched_with_several_processes() else None
    if parallel is not None:
        first_split = next((index for index, spec in enumerate(specs) if not spec.one_gpu), len(specs))
        if any(spec.one_gpu for spec in specs[first_split:]):
            raise SystemExit("--runs: the :1gpu and call runs come before the first split run (its hooks stay on the transformer)")
    try:
        run_all(args, specs, device, parallel, started)
    finally:
        shutdown(parallel)


def fits(spec: RunSpec, left: float, clip_wall: float, parallel: ParallelContext | None) -> bool:
    """Whether a run may start with ``left`` seconds of the budget. A run that cannot stop early needs the time the
    same clip took through the loop before (``clip_wall``): the old path, and with several processes every run
    (`generate_video` refuses a deadline once a process group exists); a split run that time over the GPUs."""
    if left < 10:
        return False
    if spec.kind == "call":
        return left >= clip_wall
    if parallel is not None:
        return left >= (clip_wall if spec.one_gpu else clip_wall / parallel.world_size)
    return True


def run_all(args: argparse.Namespace, specs: list[RunSpec], device: str, parallel: ParallelContext | None, started: float) -> None:
    """Rank 0 (or the only process): every run, the JSON and the table. The other ranks follow its split jobs."""
    if parallel is not None and parallel.is_follower:
        bench = Bench(device, args.memory_mode, args.compile, Path(tempfile.gettempdir()), parallel)
        run_follower(parallel, lambda: bench.pipe)
        return

    import diffusers

    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "memory_mode": args.memory_mode,
        "compile": args.compile,
        "command": " ".join(sys.argv),
        "world_size": 1 if parallel is None else parallel.world_size,
        "peak_rss_resettable": reset_peak_rss(),
    }
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_clip_") as scratch:
        bench = Bench(device, args.memory_mode, args.compile, Path(scratch), parallel)
        meta["build_s"] = bench.build_s
        deadline = time.monotonic() - (time.perf_counter() - started) + args.budget_s
        engine_walls: dict[tuple[str, bool], float] = {}  # (resolution, bf16 VAE) -> wall of the clip run
        for spec in specs:
            left = deadline - time.monotonic()
            if not fits(spec, left, engine_walls.get((spec.resolution, spec.vae_bf16), 0.0), parallel):
                rows.append({"run": spec.name, "ok": False, "error": f"skipped: {left:.0f} s of the time budget left"})
                continue
            try:
                row = bench.run_call(spec) if spec.kind == "call" else bench.run_engine(spec, deadline)
            except Exception as error:  # report and go on with the other runs
                row = {"run": spec.name, "ok": False, "error": f"{type(error).__name__}: {str(error)[:300]}"}
            if spec.kind == "clip" and row.get("complete"):
                engine_walls.setdefault((spec.resolution, spec.vae_bf16), row["wall_s"])
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    print_table(rows)


if __name__ == "__main__":
    # The writer and input threads are the package's; keep their errors visible in the output.
    threading.excepthook = lambda hook: print(f"thread {hook.thread.name}: {hook.exc_type.__name__}: {hook.exc_value}", flush=True)
    main()
