"""Benchmark of the preprocessing stage (`Preprocessor.prepare`) with full-size random-weight models.

The real preprocessing weights (RT-DETRv2 R50, ViTPose-H whole-body ONNX, SAM2.1 hiera-large) cannot be
downloaded where this runs, and their cost depends only on shapes. So models of the same architectures are
built from configs with random weights, saved the way the hub stores them, and loaded back through the
package's own ``from_pretrained`` paths (as the tests do with tiny ones). They are made "confident" like
``tests/e2e_fixtures.py`` does (detector class heads fixed to say "person", pose heatmap bias raised, SAM2's
object-score head fixed to "present"), so the pipeline finds a person and a face and runs every stage.

A synthetic driving clip (a moving figure over a textured background, with an audio track) is written at the
source size and 30 fps, then ``prepare`` runs once. Reported: time to load the models, wall time per stage
(the progress callback is wrapped to timestamp description changes), total, peak RSS (``ru_maxrss``) and RSS
sampled every 50 ms from ``/proc/self/status`` (so the growth per frame can be read, no extra dependency).
Models are built in a child process, so their construction does not count in this process's peak RSS.

    python benchmarks/bench_preprocess.py --mode animate --seconds 2 --source-size 1080p --resolution 480p \
        --device cpu --sizes full --pose-size h
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCE_SIZES = {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}
POSE_SIZES = {"h": (1280, 32, 16), "l": (1024, 24, 16), "b": (768, 12, 12)}
"""ViTPose backbones: (hidden, layers, heads); the MLP is 4 x hidden (ViT-H: 5120)."""
POSE_BIAS = 0.6
DETECTOR_LOGITS = {"person": 6.0}
OTHER_CLASS_LOGIT = -20.0
SAM2_OBJECT_LOGIT = 10.0
SAM2_MASK_BIAS = 2.0
FPS = 30


# -- models ---------------------------------------------------------------------------------------------


def build_detector(folder: Path, sizes: str) -> Path:
    """RT-DETRv2 R50vd (``PekingU/rtdetr_v2_r50vd``: transformers' defaults, 80 COCO classes, 640 x 640)."""
    import torch
    from transformers import RTDetrImageProcessor, RTDetrV2Config, RTDetrV2ForObjectDetection

    if sizes == "small":
        from wan_animate.demo.preprocess_models import build_tiny_detector

        return build_tiny_detector(folder, class_logits={"person": 6.0, "bicycle": -20.0, "car": -20.0})
    labels = {0: "person", **{index: f"class_{index}" for index in range(1, 80)}}
    config = RTDetrV2Config(id2label=labels)
    torch.manual_seed(0)
    model = RTDetrV2ForObjectDetection(config).eval()
    with torch.no_grad():
        # Every query scores sigmoid(6) as a person and never anything else (as tests/e2e_fixtures.py does).
        for head in [*model.class_embed, *model.model.decoder.class_embed]:
            head.weight.zero_()
            head.bias.fill_(OTHER_CLASS_LOGIT)
            head.bias[0] = DETECTOR_LOGITS["person"]
    model.save_pretrained(folder)
    RTDetrImageProcessor(size={"height": 640, "width": 640}).save_pretrained(folder)
    return folder


def build_pose(folder: Path, sizes: str, pose_size: str) -> Path:
    """ViTPose whole-body (133 keypoints, 256 x 192 input) exported to ONNX with one external file per tensor."""
    import onnx
    import torch

    from wan_animate.demo.preprocess_models import POSE_FILE, TinyViTPose, _randomise

    torch.manual_seed(0)
    if sizes == "small":
        model = TinyViTPose().eval()
    else:
        hidden, depth, heads = POSE_SIZES[pose_size]
        model = TinyViTPose(dim=hidden, depth=depth, heads=heads).eval()
        with torch.no_grad():  # default init of a 32-layer stack is fine; keep activations bounded
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(0, 0.02)
    _randomise(model)
    with torch.no_grad():
        model.final_layer.bias.add_(POSE_BIAS)  # heatmap peaks above the 0.5 the skeleton/face rules need
    path = folder / POSE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = path.with_suffix(".export.onnx")
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 256, 192),),
        str(exported),
        dynamo=False,
        opset_version=11,
        input_names=["input_0"],
        output_names=["output_0"],
        dynamic_axes={"input_0": {0: "batch"}, "output_0": {0: "batch"}},
    )
    proto = onnx.load(str(exported))
    for stale in list(path.parent.iterdir()):
        if stale != path:
            stale.unlink()
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=False)
    return path


def build_sam2(folder: Path, sizes: str) -> Path:
    """SAM2.1 hiera-large shapes (``facebook/sam2.1-hiera-large``): Hiera 144 wide, stages (2, 6, 36, 4), 1024 px."""
    import torch
    from transformers import Sam2ImageProcessor, Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    if sizes == "small":
        from wan_animate.demo.sam2 import build_tiny_sam2

        return build_tiny_sam2(folder, mask_bias=SAM2_MASK_BIAS)
    backbone = Sam2HieraDetConfig(
        hidden_size=144,
        num_attention_heads=2,
        image_size=[1024, 1024],
        blocks_per_stage=[2, 6, 36, 4],
        embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16],
        window_size_per_stage=[8, 4, 16, 8],
        global_attention_blocks=[23, 33, 43],
        window_positional_embedding_background_size=[7, 7],
    )
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[1152, 576, 288, 144])
    config = Sam2VideoConfig(vision_config=vision)
    torch.manual_seed(0)
    model = Sam2VideoModel(config).eval()
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.weight.zero_()
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(SAM2_OBJECT_LOGIT)
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.bias.add_(SAM2_MASK_BIAS)
    model.save_pretrained(folder)
    Sam2VideoProcessor(image_processor=Sam2ImageProcessor(), video_processor=Sam2VideoVideoProcessor()).save_pretrained(
        folder
    )
    return folder


def _build_all(folder: str, sizes: str, pose_size: str, with_sam2: bool) -> None:
    root = Path(folder)
    started = time.perf_counter()
    build_detector(root / "detector", sizes)
    print(f"detector built in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    build_pose(root / "pose", sizes, pose_size)
    print(f"pose built in {time.perf_counter() - started:.1f} s", flush=True)
    if with_sam2:
        started = time.perf_counter()
        build_sam2(root / "sam2", sizes)
        print(f"sam2 built in {time.perf_counter() - started:.1f} s", flush=True)


def ensure_models(folder: Path, sizes: str, pose_size: str, with_sam2: bool) -> dict[str, Path]:
    """Build the models (in a child process) unless ``folder`` already holds them."""
    from wan_animate.demo.preprocess_models import POSE_FILE

    paths = {"detector": folder / "detector", "pose": folder / "pose" / POSE_FILE, "sam2": folder / "sam2"}
    missing = not (paths["detector"] / "config.json").exists() or not paths["pose"].exists()
    missing = missing or (with_sam2 and not (paths["sam2"] / "config.json").exists())
    if missing:
        context = multiprocessing.get_context("spawn")
        child = context.Process(target=_build_all, args=(str(folder), sizes, pose_size, with_sam2))
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"building the models failed (exit {child.exitcode})")
    return paths


def _weight_bytes(path: Path) -> int:
    folder = path if path.is_dir() else path.parent
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())


# -- media ----------------------------------------------------------------------------------------------


def write_driving_clip(path: Path, seconds: float, size: tuple[int, int]) -> int:
    """A figure (head, torso, swinging arms and legs) dancing over a textured background, plus a tone track.

    Frames are made and encoded one at a time (x264, crf 18), so a long 1080p clip is never held in memory.
    """
    import av
    import cv2

    height, width = size
    count = int(round(seconds * FPS))
    rng = np.random.default_rng(0)
    background = cv2.resize(rng.integers(20, 90, (height // 16, width // 16, 3), np.uint8), (width, height))
    unit = height / 1080
    with av.open(str(path), mode="w") as output:
        stream = output.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        audio = output.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for index in range(count):
            frame = background.copy()
            phase = 2 * np.pi * index / FPS
            cx = int(width / 2 + 200 * unit * np.sin(phase / 2))
            top = int(180 * unit + 20 * unit * np.sin(phase))
            skin, shirt, legs = (225, 185, 155), (60, 90, 200), (40, 40, 60)
            s = lambda v: int(v * unit)  # noqa: E731 - pixel sizes at 1080p, scaled to the clip
            cv2.circle(frame, (cx, top), s(60), skin, -1)
            cv2.circle(frame, (cx - s(22), top - s(10)), s(8), (30, 30, 30), -1)
            cv2.circle(frame, (cx + s(22), top - s(10)), s(8), (30, 30, 30), -1)
            cv2.rectangle(frame, (cx - s(90), top + s(70)), (cx + s(90), top + s(400)), shirt, -1)
            for side in (-1, 1):
                swing = side * np.sin(phase)
                shoulder = (cx + side * s(90), top + s(90))
                hand = (int(shoulder[0] + side * s(150)), int(shoulder[1] + s(200) * swing))
                cv2.line(frame, shoulder, hand, skin, s(35))
                hip = (cx + side * s(50), top + s(400))
                foot = (int(hip[0] + s(80) * swing), top + s(780))
                cv2.line(frame, hip, foot, legs, s(50))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
        samples = int(count / FPS * 48000)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, start
            for packet in audio.encode(chunk):
                output.mux(packet)
        for packet in audio.encode():
            output.mux(packet)
    return count


def write_photo(path: Path) -> Path:
    """A portrait character photo (720 x 1280), a figure on a plain background."""
    import cv2

    image = np.full((1280, 720, 3), 200, np.uint8)
    cv2.circle(image, (360, 250), 110, (225, 185, 155), -1)
    cv2.rectangle(image, (200, 380), (520, 1000), (180, 60, 60), -1)
    cv2.imwrite(str(path), image[..., ::-1])
    return path


# -- measuring ------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``interval`` seconds; ``peak`` and the samples are kept."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.peak = interval, [], 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            value = rss_bytes()
            self.samples.append((time.perf_counter(), value))
            self.peak = max(self.peak, value)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


class StageClock:
    """A progress callback that timestamps the first and last report of each description."""

    def __init__(self, sampler: RssSampler) -> None:
        self.sampler = sampler
        self.stages: dict[str, dict] = {}
        self.current: str | None = None
        self.last = time.perf_counter()

    def __call__(self, done: int, total: int, description: str) -> None:
        now = time.perf_counter()
        if description != self.current:
            # Time between the previous stage's last report and this one's first belongs to this stage.
            self.stages.setdefault(description, {"seconds": 0.0, "peak_rss": 0, "frames": total})
            self.current = description
            print(f"[{time.strftime('%H:%M:%S')}] stage: {description}", file=sys.stderr, flush=True)
        stage = self.stages[description]
        stage["seconds"] += now - self.last
        stage["peak_rss"] = max(stage["peak_rss"], self.sampler.peak, rss_bytes())
        stage["frames"] = total
        self.last = now


def run_once(preprocessor, args: argparse.Namespace, photo: Path, video: Path, workdir: Path, sampler: RssSampler) -> dict:
    """One timed ``prepare`` call: total seconds, per-stage seconds and RSS, CUDA peak, the quality report."""
    import torch

    from wan_animate.preprocess.prepare import PreprocessOptions

    options = PreprocessOptions(resolution=args.resolution)
    if args.detect_every is not None:
        options = PreprocessOptions(resolution=args.resolution, detect_every=args.detect_every)
    clock = StageClock(sampler)
    started = clock.last = time.perf_counter()
    result = preprocessor.prepare(args.mode, photo, video, workdir, options, progress=clock)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    total = time.perf_counter() - started
    return {
        "total_s": round(total, 2),
        "stages": {
            name: {"seconds": round(stage["seconds"], 2), "peak_rss_gib": round(stage["peak_rss"] / 2**30, 2)}
            for name, stage in clock.stages.items()
        },
        "cuda_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0.0,
        "output_frames": result.conditioning.num_frames,
        "report": result.report.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["animate", "replace"], default="animate")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--source-size", choices=sorted(SOURCE_SIZES), default="1080p")
    parser.add_argument("--resolution", choices=["480p", "720p"], default="480p")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sizes", choices=["full", "small"], default="full")
    parser.add_argument("--pose-size", choices=sorted(POSE_SIZES), default="h", help="ViTPose backbone (full sizes)")
    parser.add_argument("--pose-backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--models", type=Path, default=None, help="folder to build/reuse the models in")
    parser.add_argument("--extrapolate-to", type=float, default=10.0, help="clip seconds to extrapolate to")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=0, help="untimed runs first (CUDA kernels, cuDNN plans)")
    parser.add_argument("--detect-every", type=int, default=None, help="run the detector on every N-th frame")
    args = parser.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    models_dir = args.models or Path(tempfile.gettempdir()) / f"bench_preprocess_models_{args.sizes}_{args.pose_size}"
    models_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = ensure_models(models_dir, args.sizes, args.pose_size, with_sam2=args.mode == "replace")
    build_seconds = time.perf_counter() - started

    started = time.perf_counter()
    video = work / "driving.mp4"
    frames = write_driving_clip(video, args.seconds, SOURCE_SIZES[args.source_size])
    photo = write_photo(work / "character.png")
    media_seconds = time.perf_counter() - started

    from wan_animate.preprocess import Preprocessor

    sampler = RssSampler()
    sampler.start()
    rss_start = rss_bytes()
    preprocessor = Preprocessor(
        paths["detector"], paths["pose"], paths["sam2"], pose_backend=args.pose_backend, device=args.device
    )
    started = time.perf_counter()
    preprocessor.detector
    preprocessor.pose_estimator
    if args.mode == "replace":
        preprocessor.segmenter
    load_seconds = time.perf_counter() - started
    rss_loaded = rss_bytes()

    runs = []
    for index in range(args.warmup + args.repeats):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        run = run_once(preprocessor, args, photo, video, work / f"job{index}", sampler)
        run["warmup"] = index < args.warmup
        runs.append(run)
        print(f"run {index}: {run['total_s']} s{' (warm-up)' if run['warmup'] else ''}", file=sys.stderr, flush=True)
    sampler.stop()
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timed = [run for run in runs if not run["warmup"]]
    total = statistics.median(run["total_s"] for run in timed)
    stages = {
        name: {
            "seconds": round(statistics.median(run["stages"][name]["seconds"] for run in timed), 2),
            "per_frame_s": round(statistics.median(run["stages"][name]["seconds"] for run in timed) / max(1, frames), 3),
            "peak_rss_gib": max(run["stages"][name]["peak_rss_gib"] for run in timed),
        }
        for name in timed[0]["stages"]
    }

    scale = args.extrapolate_to / args.seconds
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores_visible": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "python": platform.python_version(),
        },
        "versions": {name: __import__(name).__version__ for name in ("torch", "transformers", "onnx", "av", "numpy")},
        "command": " ".join(sys.argv),
        "models": {name: f"{_weight_bytes(path) / 2**20:.0f} MiB" for name, path in paths.items() if path.exists()},
        "pose_size": args.pose_size if args.sizes == "full" else "tiny",
        "frames": frames,
        "output_frames": timed[-1]["output_frames"],
        "report": timed[-1]["report"],
        "build_models_s": round(build_seconds, 1),
        "write_media_s": round(media_seconds, 1),
        "load_models_s": round(load_seconds, 2),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "runs_total_s": [run["total_s"] for run in runs],
        "stages_median": stages,
        "total_s": round(total, 2),
        "total_extrapolated_s": round(total * scale, 1),
        "extrapolated_to_s": args.extrapolate_to,
        "rss_start_gib": round(rss_start / 2**30, 2),
        "rss_after_load_gib": round(rss_loaded / 2**30, 2),
        "peak_rss_sampled_gib": round(sampler.peak / 2**30, 2),
        "ru_maxrss_gib": round(ru_maxrss / 2**30, 2),
        "peak_growth_per_frame_mib": round((max(sampler.peak, ru_maxrss) - rss_loaded) / frames / 2**20, 2),
        "cuda_peak_allocated_gib": max(run["cuda_peak_gib"] for run in runs),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
