"""Command line: ``python -m wan_animate {animate,replace,preprocess} ...``.

Examples::

    python -m wan_animate animate --image photo.jpg --video dance.mp4 -o out.mp4
    python -m wan_animate replace --image photo.jpg --video scene.mp4 --resolution 480p -o out.mp4
    python -m wan_animate preprocess animate --image photo.jpg --video dance.mp4 -o conditioning_dir/
    python -m wan_animate animate --conditioning conditioning_dir/ -o out.mp4
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from . import validation
from .errors import GenerationCancelled, WanAnimateError
from .progress import ProgressCallback


class _Bar:
    """A tqdm bar per stage, driven by our ``progress(done, total, description)`` callbacks."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.stage = ""

    def __call__(self, done: int, total: int, description: str) -> None:
        # Generation reports "Segment k/n · step i/m · about 2 min left" in per mille of the job: one bar for
        # all of it, the detail as its postfix.
        stage = "Generating" if description.startswith("Segment") else description
        if self.bar is None or stage != self.stage or total != self.bar.total:
            self.close()
            if stage == "Generating":
                bar = tqdm(total=total, desc=stage, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
            else:
                bar = tqdm(total=total, desc=stage, unit="frame")
            self.bar, self.stage = bar, stage
        self.bar.set_postfix_str(description if stage == "Generating" else "", refresh=False)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inputs (raw photo + video, or a conditioning folder)")
    group.add_argument("--image", type=Path, help="Character photo (jpg/png/webp). Transparency is composited on white.")
    group.add_argument("--video", type=Path, help="Driving video (mp4/mov/webm/mkv), one clearly visible person.")
    group.add_argument("--start", type=validation.START.parse, default=0.0, help="First second of the video to use (default 0).")
    group.add_argument("--end", type=validation.END.parse, default=None, help="Last second of the video to use (default: the end).")
    group.add_argument("--max-seconds", type=validation.MAX_SECONDS.parse, default=30.0, help="Refuse longer clips (default 30).")
    group.add_argument("--resolution", choices=["720p", "480p"], default="720p", help="Output area: 1280x720 or 832x480, aspect kept (default 720p).")
    group.add_argument("--source-fps", action="store_true", help="Keep the video's frame rate instead of resampling to 30 fps.")
    group.add_argument("--retarget", action="store_true", help="Animation: scale the driver's bones to the character's proportions.")
    group.add_argument("--mask-kernel", type=validation.MASK_KERNEL.parse, default=7, help="Replacement: mask dilation kernel size (default 7).")
    group.add_argument("--mask-iterations", type=validation.MASK_ITERATIONS.parse, default=3, help="Replacement: mask dilation iterations (default 3).")
    group.add_argument("--blockify", type=validation.BLOCKIFY.parse, nargs=2, default=(1, 1), metavar=("W", "H"), help="Replacement: mask grid; 1 1 = filled box (default), 8-32 = blocky silhouette.")
    group.add_argument("--detector", default=None, help="Person detector: hub id or folder (default: RT-DETR).")
    group.add_argument("--pose-model", default=None, help="ViTPose whole-body ONNX: hub id, folder or .onnx file.")
    group.add_argument("--sam2", default=None, help="SAM2 video model: hub id or folder (Replacement).")
    group.add_argument("--pose-backend", choices=["torch", "onnxruntime"], default="torch", help="Run the pose model in torch (default) or onnxruntime.")
    group.add_argument("--detect-every", type=validation.DETECT_EVERY.parse, default=None, metavar="N", help="Run the person detector on every N-th frame, boxes in between interpolated (default: 1 on a GPU, 1/6 s of frames on the CPU).")


def _add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--conditioning", type=Path, help="Use a conditioning folder (src_pose.mp4, src_face.mp4, ...) instead of --image/--video.")
    group.add_argument("-o", "--output", type=Path, required=True, help="Output mp4 path (holds every finished segment while generating).")
    group.add_argument("--state-dir", type=Path, default=None, help="Job folder for a checkpoint after every segment: run the same command again to go on from the last finished segment.")
    group.add_argument("--max-segments", type=int, default=None, metavar="N", help="Stop after N segments (go on later with the same --state-dir).")
    group.add_argument("--model", default=None, help="Diffusers checkpoint: hub id or local folder (default Wan-AI/Wan2.2-Animate-14B-Diffusers).")
    group.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"], help="Compute dtype (auto: bf16 where supported, else fp16).")
    group.add_argument("--memory-mode", default="auto", choices=["auto", "none", "model", "group", "sequential"], help="GPU memory mode: none = all on GPU, model/group/sequential = CPU offload, from fastest to leanest.")
    group.add_argument("--fp8", action="store_true", help="Store transformer weights in fp8, compute in bf16 (less memory, slightly lower quality).")
    group.add_argument("--keep-bf16-copy", action="store_true", help="Keep a bf16 copy of the fp32 transformer next to the cache for faster later starts.")
    group.add_argument("--allow-cpu", action="store_true", help="Allow running without CUDA (only sensible for tiny test models).")
    group.add_argument("--steps", type=validation.STEPS.parse, default=20, help="Denoising steps per segment (default 20).")
    group.add_argument("--guidance", type=validation.GUIDANCE.parse, default=1.0, help="Classifier-free guidance; 1.0 = off (default), >1 doubles the time.")
    group.add_argument("--shift", type=validation.FLOW_SHIFT.parse, default=5.0, help="Flow shift of the schedule (default 5.0).")
    group.add_argument("--seed", type=validation.SEED.parse, default=None, help="Random seed (default: random, printed).")
    group.add_argument("--overlap", type=int, choices=[1, 5], default=1, help="Frames of the previous segment that condition the next (default 1).")
    group.add_argument("--prompt", default=None, help="Text prompt (the pose and face videos matter far more).")
    group.add_argument("--relight", action=argparse.BooleanOptionalAction, default=None, help="Relighting LoRA (default: on for replace, off for animate).")
    group.add_argument("--relight-weight", type=validation.RELIGHT_WEIGHT.parse, default=1.0, help="Relighting LoRA strength (default 1.0).")
    group.add_argument("--relight-lora", default=None, help="Local relighting_lora.ckpt instead of the hub file.")
    group.add_argument("--lora", action="append", default=[], metavar="SOURCE[::FILE]=WEIGHT", help="Another Wan LoRA (hub id with ::file name, or a file path) and its weight; repeatable.")
    group.add_argument("--color-match", action="store_true", help="Match each segment's colours to the frames it continues from (long clips).")
    group.add_argument("--step-cache", choices=["none", "first_block", "taylorseer"], default="none", help="Opt-in step cache: skips parts of some steps (first_block: ~1.6x at 480p); quality cost unknown (default none).")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="Compile the transformer's blocks (default: on with all on a GPU of >= 75 GiB).")
    group.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=None, help="VAE in tiles (default: on when offloading with < 32 GiB free).")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m wan_animate``."""
    parser = argparse.ArgumentParser(prog="python -m wan_animate", description="Wan2.2-Animate-14B: make a character perform a video's motion.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log more detail.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("animate", "Animation: the character performs the video's motion and expressions."), ("replace", "Replacement: the character replaces the person in the video, in the scene's light.")):
        sub = commands.add_parser(name, help=text, description=text)
        _add_input_arguments(sub)
        _add_generation_arguments(sub)
    pre = commands.add_parser("preprocess", help="Only make the conditioning folder and previews.", description="Make the conditioning (skeleton, face crops, mask, background) and previews without generating.")
    pre.add_argument("mode", choices=["animate", "replace"])
    _add_input_arguments(pre)
    pre.add_argument("-o", "--output", type=Path, required=True, help="Output folder for the conditioning and previews.")
    return parser


def _preprocess(args: argparse.Namespace, mode: str, workdir: Path, progress: ProgressCallback):
    from .preprocess import PreprocessOptions, Preprocessor

    if args.image is None or args.video is None:
        raise WanAnimateError("Give --image and --video (or --conditioning with a prepared folder).")
    sources = {key: value for key, value in (("detector", args.detector), ("pose", args.pose_model), ("sam2", args.sam2)) if value}
    preprocessor = Preprocessor(**sources, pose_backend=args.pose_backend)
    options = PreprocessOptions(
        resolution=args.resolution,
        fps=None if args.source_fps else 30.0,
        start=args.start,
        end=args.end,
        max_seconds=args.max_seconds,
        retarget=args.retarget,
        mask_kernel=args.mask_kernel,
        mask_iterations=args.mask_iterations,
        blockify=tuple(args.blockify),
        detect_every=args.detect_every,
    )
    result = preprocessor.prepare(mode, args.image, args.video, workdir, options, progress=progress)
    print(result.report.to_markdown())
    return result


def _parse_lora(spec: str) -> tuple[str, str | None, float]:
    source, _, weight = spec.rpartition("=")
    if not source:
        source, weight = weight, "1.0"
    repo, _, file_name = source.partition("::")
    try:
        return repo, file_name or None, validation.LORA_WEIGHT.check(float(weight))
    except ValueError as error:
        raise WanAnimateError(f"--lora {spec!r}: the weight after '=' must be a number.") from error


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    bar = _Bar()
    try:
        if args.command == "preprocess":
            _preprocess(args, args.mode, args.output, bar)
            print(f"Conditioning and previews written to {args.output}")
            return 0
        return _generate(args, bar)
    except WanAnimateError as error:
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (GenerationCancelled, KeyboardInterrupt):
        bar.close()
        print("cancelled", file=sys.stderr)
        return 130
    finally:
        bar.close()


def _generate(args: argparse.Namespace, bar: _Bar) -> int:
    from .conditioning import Conditioning
    from .generate import DEFAULT_PROMPT, GenerationSettings, generate_video
    from .lora import load_lora, load_relighting_lora
    from .models import DEFAULT_MODEL_ID, load_pipeline
    from .parallel import enable_context_parallel, init_distributed, run_follower, share_job, shutdown

    # Under torchrun with several GPUs, process 0 runs the command and the others follow its jobs.
    parallel = init_distributed()
    try:
        with tempfile.TemporaryDirectory(prefix="wan_animate_") as scratch:
            if parallel is None or parallel.is_leader:
                if args.conditioning is not None:
                    conditioning = Conditioning.open(args.conditioning, mode=args.command)
                else:
                    conditioning = _preprocess(args, args.command, Path(scratch) / "preprocess", bar).conditioning
            pipeline = load_pipeline(
                args.model or DEFAULT_MODEL_ID,
                dtype=args.dtype,
                memory_mode=args.memory_mode,
                fp8_storage=args.fp8,
                keep_bf16_copy=args.keep_bf16_copy,
                allow_cpu=args.allow_cpu,
                compile_blocks="auto" if args.compile is None else args.compile,
                vae_tiling="auto" if args.vae_tiling is None else args.vae_tiling,
                progress=bar,
            )
            if args.relight_lora:
                load_relighting_lora(pipeline, args.relight_lora)
            weights = {}
            for index, spec in enumerate(args.lora):
                source, file_name, weight = _parse_lora(spec)
                name = load_lora(pipeline, source, weight_name=file_name, adapter_name=f"lora_{index}", weight=weight)
                weights[name] = weight
            if parallel is not None and parallel.is_follower:
                run_follower(parallel, lambda: pipeline)
                return 0
            settings = GenerationSettings(
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                flow_shift=args.shift,
                seed=args.seed,
                overlap_frames=args.overlap,
                prompt=args.prompt or DEFAULT_PROMPT,
                relight=args.relight,
                relight_weight=args.relight_weight,
                lora_weights=weights,
                color_match=args.color_match,
                step_cache=args.step_cache,
            )
            job = share_job(parallel, conditioning, settings, progress=bar, state_dir=args.state_dir, max_segments=args.max_segments)
            if parallel is not None:
                enable_context_parallel(pipeline, parallel.options)
            result = generate_video(
                pipeline, conditioning, args.output, job.settings, progress=job.progress, cancel=job.cancel,
                state_dir=args.state_dir, max_segments=args.max_segments,
            )
    finally:
        shutdown(parallel)
    bar.close()
    print(f"Wrote {result.video_path} ({result.num_frames} frames at {result.fps:g} fps, seed {result.seed}, {result.seconds:.0f} s)")
    if not result.complete:
        print(f"Stopped after segment {result.segments_done} of {result.segments_total}: run the same command again to go on.")
    return 0
