"""Benchmark of preprocessing (`Preprocessor.prepare`) with full-size random-weight models (issue 16's table).

The real preprocessing weights (RT-DETRv2 R50, ViTPose-H whole-body ONNX, SAM2.1 hiera-large) cannot be
downloaded where this runs, and their cost depends only on shapes. So models of the same architectures are
built from configs with random weights (in a child process, while the driving clips are written), saved the
way the hub stores them, and loaded back through the package's own ``from_pretrained`` paths (as the tests do
with tiny ones). They are made "confident" like ``wan_animate.demo`` does (detector class heads fixed to
say "person", pose heatmap bias raised, SAM2's object-score head fixed to "present"), so every stage runs.
A random detector sees a person in each of RT-DETR's 300 queries; a real clip has a few people, so only the
`--max-people` best boxes per frame are kept (the detector's own cost is unchanged; following 300 "people"
through a clip would add seconds no real clip costs).

One call measures, for a synthetic driving clip (a moving figure over a textured background, with sound):

- Animation and Replacement: `--warmup` untimed runs, then the median of `--repeats` timed runs; each stage's
  time (`Preprocessed.timings`: a timer per stage, so they add up to the run), CUDA peak, host peak RSS
  (sampled every 50 ms during the run);
- SAM2's masks on the same clip and prompts, as prepare made them (bf16, batched image encoder) and in float16,
  against float32: IoU per frame;
- SAM2's cost per frame by part (preprocessing, image encoder, tracking, mask to frame size), with the image
  encoder one frame at a time (as before) and in batches (`--profile-frames` frames, synchronised timers), and
  with `--compile-sam2` also with the image encoder and memory attention under ``torch.compile`` (none of the
  SAM2 sections with `--skip-sam2-checks`);
- a longer clip (`--long-seconds`) in each mode measured: its time and host peak RSS (goal <= 6 GiB at 30 s),
  skipped (and listed as skipped) only when the budget is short.

`--budget-s` skips what would not end in time and says so in the JSON. JSON goes to ``$OUT`` (or ``--json``),
a table is printed last. The lead's command on one GPU (about 6 minutes, all included)::

    python benchmarks/bench_preprocess.py --device cuda --resolution 720p --seconds 10 --repeats 3 --warmup 1

``--smoke`` runs every section on the CPU with tiny models (checks the script; timings mean nothing).
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
from collections import defaultdict
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
        # Every query scores sigmoid(6) as a person and never anything else (as wan_animate.demo does).
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


def start_building(folder: Path, sizes: str, pose_size: str, with_sam2: bool) -> tuple[dict[str, Path], object]:
    """Start building the models in a child process unless ``folder`` already holds them.

    Returns:
        The model paths, and the child process to `join` (``None`` when nothing is built).
    """
    from wan_animate.demo.preprocess_models import POSE_FILE

    paths = {"detector": folder / "detector", "pose": folder / "pose" / POSE_FILE, "sam2": folder / "sam2"}
    missing = not (paths["detector"] / "config.json").exists() or not paths["pose"].exists()
    missing = missing or (with_sam2 and not (paths["sam2"] / "config.json").exists())
    if not missing:
        return paths, None
    child = multiprocessing.get_context("spawn").Process(target=_build_all, args=(str(folder), sizes, pose_size, with_sam2))
    child.start()
    return paths, child


def join(child) -> None:
    if child is not None:
        child.join()
        if child.exitcode:
            raise SystemExit(f"building the models failed (exit {child.exitcode})")


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

GiB = 2**30
GOALS_S = {"animate": 12.0, "replace": 20.0}
"""Issue 16: a 10-s 1080p clip in <= 12 s (Animation) and <= 20 s (Replacement) on one GPU."""
RSS_GOAL_GIB = 6.0


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``interval`` seconds; `peak` is the highest since the last `reset`."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak = interval, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = rss_bytes()

    def stop(self) -> None:
        self._halt.set()
        self.join()


class Budget:
    """Seconds left of ``--budget-s``; a section whose estimate does not fit is skipped and noted."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started, self.skipped = seconds, time.perf_counter(), []

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def allows(self, what: str, estimate_s: float) -> bool:
        if estimate_s <= self.left():
            return True
        self.skipped.append({"what": what, "estimated_s": round(estimate_s, 1), "left_s": round(self.left(), 1)})
        log(f"skipped (time budget): {what}, estimated {estimate_s:.0f} s, {self.left():.0f} s left")
        return False


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cuda_synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Sam2Capture:
    """Keeps the frames, prompts and masks of the segmenter's next call (the masks bit-packed, so that holding
    them does not weigh on the run's RSS), for the IoU and per-part measurements."""

    def __init__(self, segmenter) -> None:
        self.segmenter, self.original = segmenter, segmenter.segment
        self.armed, self.frames, self.prompts, self.packed = False, None, None, None
        segmenter.segment = self

    def __call__(self, frames, prompts, **kwargs):
        masks = self.original(frames, prompts, **kwargs)
        if self.armed:
            self.frames, self.prompts, self.packed, self.armed = frames, list(prompts), np.packbits(masks, axis=-1), False
        return masks

    def masks(self) -> np.ndarray:
        return np.unpackbits(self.packed, axis=-1, count=self.frames.shape[2]).astype(bool)

    def remove(self) -> None:
        del self.segmenter.segment
        self.frames = self.packed = None


def keep_few_people(detector, count: int) -> None:
    """Keep the ``count`` best person boxes per frame (see the module docstring)."""
    boxes = detector._person_boxes
    detector._person_boxes = lambda result, size: boxes(result, size)[:count]


def run_once(preprocessor, mode: str, args, photo: Path, video: Path, workdir: Path, sampler: RssSampler) -> dict:
    """One timed ``prepare``: total and per-stage seconds, CUDA peak, host peak RSS, the quality report."""
    import shutil

    import torch

    from wan_animate.preprocess import PreprocessOptions

    options = PreprocessOptions(resolution=args.resolution, detect_every=args.detect_every)
    labels: list[str] = []

    def progress(done: int, total: int, label: str) -> None:
        if not labels or labels[-1] != label:
            labels.append(label)
            log(f"  {mode}: {label}")

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sampler.reset()
    started = time.perf_counter()
    result = preprocessor.prepare(mode, photo, video, workdir, options, progress=progress)
    cuda_synchronize()
    total = time.perf_counter() - started
    peak_rss = max(sampler.peak, rss_bytes())
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "total_s": round(total, 2),
        "stages_s": {name: round(seconds, 3) for name, seconds in result.timings.items()},
        "other_s": round(total - sum(result.timings.values()), 3),
        "cuda_peak_gib": round(torch.cuda.max_memory_allocated() / GiB, 2) if torch.cuda.is_available() else 0.0,
        "peak_rss_gib": round(peak_rss / GiB, 2),
        "frames": result.conditioning.num_frames,
        "report": result.report.to_dict(),
    }


def measure_mode(preprocessor, mode: str, args, media: dict, work: Path, sampler, budget: Budget, capture) -> dict:
    """`--warmup` runs, then up to `--repeats` timed ones (fewer when the budget says so); their medians."""
    runs: list[dict] = []
    count = args.warmup + args.repeats
    for index in range(count):
        warmup = index < args.warmup
        estimate = runs[-1]["total_s"] * 1.2 if runs else 60.0
        if runs and not budget.allows(f"{mode} run {index + 1} of {count}", estimate):
            break
        # SAM2's inputs are kept from the last run only (held during a later run, they would add to its RSS).
        if capture is not None and (index == count - 1 or budget.left() < 2 * estimate):
            capture.armed = True
        run = run_once(preprocessor, mode, args, media["photo"], media["video"], work / f"{mode}{index}", sampler)
        run["warmup"] = warmup
        runs.append(run)
        log(f"{mode} run {index + 1}/{count}: {run['total_s']} s{' (warm-up)' if warmup else ''}, stages {run['stages_s']}")
    timed = [run for run in runs if not run["warmup"]] or runs[-1:]
    stages = {name: round(statistics.median(run["stages_s"][name] for run in timed), 3) for name in timed[0]["stages_s"]}
    return {
        "runs_total_s": [run["total_s"] for run in runs],
        "warmup_runs": sum(run["warmup"] for run in runs),
        "timed_runs": len([run for run in runs if not run["warmup"]]),
        "median_total_s": round(statistics.median(run["total_s"] for run in timed), 2),
        "stages_median_s": stages,
        "other_median_s": round(statistics.median(run["other_s"] for run in timed), 3),
        "cuda_peak_gib": max(run["cuda_peak_gib"] for run in timed),
        "peak_rss_gib": max(run["peak_rss_gib"] for run in timed),
        "frames": timed[-1]["frames"],
        "report": timed[-1]["report"],
        "runs": runs,
    }


def segment_with(sam2_path: Path, device: str, dtype, frames: np.ndarray, prompts: list) -> tuple[np.ndarray, float]:
    """Masks of a SAM2 loaded in ``dtype`` (and the seconds `segment` took)."""
    import torch

    from wan_animate.preprocess.mask import PersonSegmenter

    segmenter = PersonSegmenter.from_pretrained(sam2_path, device=device, dtype=dtype)
    started = time.perf_counter()
    masks = segmenter.segment(frames, prompts)
    cuda_synchronize()
    seconds = time.perf_counter() - started
    del segmenter
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return masks, seconds


def mask_iou(masks: np.ndarray, reference: np.ndarray) -> dict:
    """IoU per frame of two (T, H, W) bool mask clips (1 where both are empty): mean, min, 5th percentile."""
    intersection = (masks & reference).sum(axis=(1, 2))
    union = (masks | reference).sum(axis=(1, 2))
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return {
        "frames": len(iou),
        "mean": round(float(iou.mean()), 4),
        "min": round(float(iou.min()), 4),
        "p5": round(float(np.percentile(iou, 5)), 4),
        "mask_coverage": round(float(masks.mean()), 4),
    }


def sam2_parts(segmenter, frames: np.ndarray, prompts: list, encoder_batch: int) -> dict:
    """SAM2's milliseconds per frame by part, timers synchronised around each call (so a little slower overall).

    Parts: preprocessing (the processor's resize and normalisation), image encoder (Hiera + FPN), tracking (the
    model's step: memory attention, mask decoder, memory encoder), mask to frame size (upsampling and copy to
    the CPU); other = the rest of `segment`.
    """
    parts: dict[str, float] = defaultdict(float)

    def timed(name: str, function):
        def run(*args, **kwargs):
            cuda_synchronize()
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                cuda_synchronize()
                parts[name] += time.perf_counter() - started

        return run

    processor = segmenter.processor

    class TimedProcessor:
        __call__ = staticmethod(timed("preprocessing", processor))

        def __getattr__(self, name: str):
            return getattr(processor, name)

    saved_batch = segmenter.encoder_batch
    segmenter.processor, segmenter.encoder_batch = TimedProcessor(), encoder_batch
    segmenter._full_size_mask = timed("mask to frame size", segmenter._full_size_mask)
    segmenter.model.get_image_features = timed("image encoder", segmenter.model.get_image_features)
    segmenter.model.forward = timed("tracking", segmenter.model.forward)
    try:
        cuda_synchronize()
        started = time.perf_counter()
        segmenter.segment(frames, prompts)
        cuda_synchronize()
        total = time.perf_counter() - started
    finally:
        segmenter.processor, segmenter.encoder_batch = processor, saved_batch
        del segmenter._full_size_mask, segmenter.model.get_image_features, segmenter.model.forward
    per_frame = {name: round(seconds / len(frames) * 1000, 2) for name, seconds in parts.items()}
    per_frame["other"] = round((total - sum(parts.values())) / len(frames) * 1000, 2)
    return {"encoder_batch": encoder_batch, "frames": len(frames), "total_ms_per_frame": round(total / len(frames) * 1000, 2), "parts_ms_per_frame": per_frame}


# -- the table --------------------------------------------------------------------------------------------


def print_table(results: dict) -> None:
    modes = results["modes"]
    clip = results["clip"]
    print(
        f"\nPreprocessing, {clip['seconds']:g}-s {clip['source_size']} clip ({clip['frames']} frames) -> {clip['resolution']}, "
        f"median of {max([m['timed_runs'] for m in modes.values()] or [0])} after {results['warmup']} warm-up "
        f"({results['machine']['gpu'] or 'CPU'})"
    )
    longest = max((list(mode["stages_median_s"]) for mode in modes.values()), key=len, default=[])
    names = longest + [name for mode in modes.values() for name in mode["stages_median_s"] if name not in longest]
    print(f"{'stage (s)':<34}" + "".join(f"{mode:>12}" for mode in modes))
    for name in names + ["other"]:
        cells = [m["stages_median_s"].get(name, "-") if name != "other" else m["other_median_s"] for m in modes.values()]
        print(f"{name:<34}" + "".join(f"{cell:>12}" for cell in cells))
    rows = [
        ("total", "median_total_s"),
        ("CUDA peak (GiB)", "cuda_peak_gib"),
        ("host peak RSS (GiB)", "peak_rss_gib"),
    ]
    for label, key in rows:
        print(f"{label:<34}" + "".join(f"{m[key]:>12}" for m in modes.values()))
    print(f"{'goal (s)':<34}" + "".join(f"{'<= ' + format(GOALS_S[mode], 'g'):>12}" for mode in modes))
    for mode, m in modes.items():
        print(f"{mode} runs (s, warm-up first): {' '.join(map(str, m['runs_total_s']))}")
    parts = results.get("sam2_parts") or {}
    if parts:
        headers = [f"{name} (batch {value['encoder_batch']})" for name, value in parts.items()]
        frames = next(iter(parts.values()))["frames"]
        print(f"\n{f'SAM2 ms per frame ({frames} frames)':<36}" + "".join(f"{header:>28}" for header in headers))
        part_names = list(dict.fromkeys(name for v in parts.values() for name in v["parts_ms_per_frame"]))
        for name in part_names + ["total"]:
            cells = [v["total_ms_per_frame"] if name == "total" else v["parts_ms_per_frame"].get(name, "-") for v in parts.values()]
            print(f"  {name:<34}" + "".join(f"{cell:>28}" for cell in cells))
    for dtype, iou in (results.get("sam2_iou") or {}).items():
        if isinstance(iou, dict):
            print(f"\nSAM2 {dtype} vs float32, same clip and prompts: IoU mean {iou['mean']}, min {iou['min']}, "
                  f"5th percentile {iou['p5']} over {iou['frames']} frames (goal: mean >= 0.99)")
    for mode, long in results["long_clips"].items():
        print(f"\n{long['seconds']:g}-s clip, {mode}: {long['total_s']} s, host peak RSS {long['peak_rss_gib']} GiB "
              f"(goal <= {RSS_GOAL_GIB:g}), CUDA peak {long['cuda_peak_gib']} GiB; stages {long['stages_s']}")
    for skipped in results["skipped"]:
        print(f"skipped: {skipped['what']} (estimated {skipped['estimated_s']} s, {skipped['left_s']} s left)")
    print(f"wall {results['wall_s']} s; JSON: {results['json']}")


# -- main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["animate", "replace", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=10.0, help="driving clip length")
    parser.add_argument("--long-seconds", type=float, default=30.0, help="the RSS clip's length (0: skip)")
    parser.add_argument("--source-size", choices=sorted(SOURCE_SIZES), default="1080p")
    parser.add_argument("--resolution", choices=["480p", "720p"], default="720p")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--sizes", choices=["full", "small"], default="full")
    parser.add_argument("--pose-size", choices=sorted(POSE_SIZES), default="h", help="ViTPose backbone (full sizes)")
    parser.add_argument("--pose-backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--max-people", type=int, default=2, help="person boxes kept per frame (module docstring)")
    parser.add_argument("--models", type=Path, default=None, help="folder to build/reuse the models in")
    parser.add_argument("--json", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_preprocess.json")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (CUDA kernels, cuDNN plans)")
    parser.add_argument("--detect-every", type=int, default=None, help="run the detector on every N-th frame")
    parser.add_argument("--profile-frames", type=int, default=120, help="frames of SAM2's per-part measurement")
    parser.add_argument("--compile-sam2", action="store_true", help="also measure SAM2's parts under torch.compile")
    parser.add_argument("--skip-sam2-checks", action="store_true", help="no SAM2 IoU and per-part sections (more budget left for the rest)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip what would end after this many seconds")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, short clips: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.sizes, args.source_size, args.resolution = "cpu", "small", "480p", "480p"
        args.seconds, args.long_seconds, args.repeats, args.warmup, args.profile_frames = 0.5, 1.0, 1, 0, 6
    budget = Budget(args.budget_s)
    modes = ["animate", "replace"] if args.mode == "both" else [args.mode]
    log(f"bench_preprocess: {' '.join(sys.argv[1:])}")

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    models_dir = args.models or Path(tempfile.gettempdir()) / f"bench_preprocess_models_{args.sizes}_{args.pose_size}"
    models_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths, builder = start_building(models_dir, args.sizes, args.pose_size, with_sam2="replace" in modes)
    media = {"video": work / "driving.mp4", "photo": write_photo(work / "character.png"), "long": work / "long.mp4"}
    frames = write_driving_clip(media["video"], args.seconds, SOURCE_SIZES[args.source_size])
    if args.long_seconds:
        write_driving_clip(media["long"], args.long_seconds, SOURCE_SIZES[args.source_size])
    media_seconds = time.perf_counter() - started
    join(builder)
    build_seconds = time.perf_counter() - started
    log(f"models ready and clips written in {build_seconds:.0f} s (clips {media_seconds:.0f} s)")

    from wan_animate.preprocess import Preprocessor

    if args.smoke:  # the tiny random detector's boxes are a few pixels tall: the demo's person minimums
        from wan_animate import validation
        from wan_animate.demo import DEMO_LIMITS

        for name, value in DEMO_LIMITS.items():
            setattr(validation, name, value)
    sampler = RssSampler()
    sampler.start()
    preprocessor = Preprocessor(
        paths["detector"], paths["pose"], paths["sam2"], pose_backend=args.pose_backend, device=args.device
    )
    started = time.perf_counter()
    keep_few_people(preprocessor.detector, args.max_people)
    preprocessor.pose_estimator
    capture = Sam2Capture(preprocessor.segmenter) if "replace" in modes and not args.skip_sam2_checks else None
    load_seconds = time.perf_counter() - started
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores_visible": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "python": platform.python_version(),
        },
        "versions": {name: __import__(name).__version__ for name in ("torch", "transformers", "onnx", "av", "numpy")},
        "command": " ".join(sys.argv),
        "models": {name: f"{_weight_bytes(path) / 2**20:.0f} MiB" for name, path in paths.items() if path.exists()},
        "pose_size": args.pose_size if args.sizes == "full" else "tiny",
        "max_people": args.max_people,
        "clip": {"source_size": args.source_size, "seconds": args.seconds, "frames": frames, "resolution": args.resolution},
        "warmup": args.warmup,
        "build_models_and_clips_s": round(build_seconds, 1),
        "load_models_s": round(load_seconds, 1),
        "modes": {},
        "sam2_iou": None,
        "sam2_parts": {},
        "long_clips": {},
        "skipped": budget.skipped,
        "json": str(args.json),
    }

    def save() -> None:
        results["wall_s"] = round(time.perf_counter() - budget.started, 1)
        results["ru_maxrss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, 2)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))

    for mode in modes:
        results["modes"][mode] = measure_mode(
            preprocessor, mode, args, media, work, sampler, budget, capture if mode == "replace" else None
        )
        save()

    if capture is not None and capture.frames is not None:
        segmentation = results["modes"]["replace"]["stages_median_s"]["Segmenting the person"]
        if budget.allows("SAM2 float32 IoU", 3 * segmentation + 20):
            log("SAM2: the masks prepare made against float32")
            reference, seconds = segment_with(paths["sam2"], args.device, torch.float32, capture.frames, capture.prompts)
            fast_dtype = str(preprocessor.segmenter.dtype).replace("torch.", "")
            results["sam2_iou"] = {
                "reference": "float32", "float32_segment_s": round(seconds, 2), "mask_coverage_float32": round(float(reference.mean()), 4),
                fast_dtype: mask_iou(capture.masks(), reference),
            }  # fmt: skip
            save()
            if args.device == "cuda" and budget.allows("SAM2 float16 IoU", segmentation + 20):
                log("SAM2: float16 against float32")
                half, seconds = segment_with(paths["sam2"], args.device, torch.float16, capture.frames, capture.prompts)
                results["sam2_iou"]["float16"] = {**mask_iou(half, reference), "segment_s": round(seconds, 2)}
                save()
            del reference
        count = min(len(capture.frames), args.profile_frames)
        frames_seen, prompts = capture.frames[:count], [prompt for prompt in capture.prompts if prompt.frame < count]
        per_frame = segmentation / len(capture.frames)
        capture.remove()
        batch = preprocessor.segmenter.encoder_batch
        for name, batch_size in (("before", 1), ("after", batch)):
            if prompts and budget.allows(f"SAM2 parts, encoder batch {batch_size}", count * per_frame * (6 if batch_size == 1 else 2) + 5):
                log(f"SAM2 parts, encoder batch {batch_size}")
                results["sam2_parts"][name] = sam2_parts(preprocessor.segmenter, frames_seen, prompts, batch_size)
                save()
        # torch.compile of the image encoder and the memory attention: the first run compiles, the second counts.
        if args.compile_sam2 and prompts and budget.allows("SAM2 parts, compiled", 2 * count * per_frame * 2 + 180):
            log("SAM2 parts, image encoder and memory attention compiled")
            preprocessor.segmenter.model.vision_encoder.compile()
            preprocessor.segmenter.model.memory_attention.compile()
            started = time.perf_counter()
            sam2_parts(preprocessor.segmenter, frames_seen, prompts, batch)
            compiling = time.perf_counter() - started
            compiled = sam2_parts(preprocessor.segmenter, frames_seen, prompts, batch)
            results["sam2_parts"]["after, compiled"] = {**compiled, "first_run_with_compiling_s": round(compiling, 1)}
            save()
        del frames_seen

    for mode in results["modes"] if args.long_seconds else ():
        estimate = results["modes"][mode]["median_total_s"] * args.long_seconds / args.seconds * 1.3 + 5
        if budget.allows(f"{args.long_seconds:g}-s clip ({mode})", estimate):
            log(f"{args.long_seconds:g}-s clip, {mode}")
            run = run_once(preprocessor, mode, args, media["photo"], media["long"], work / "long", sampler)
            results["long_clips"][mode] = {"seconds": args.long_seconds, **run}
            save()
    sampler.stop()
    save()
    print_table(results)


if __name__ == "__main__":
    main()
