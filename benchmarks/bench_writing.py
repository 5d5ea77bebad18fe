"""What preprocessing costs besides its models: the mask, background and preview frames, the encoders, host memory.

The three models are replaced by fakes that cost nothing (one box per frame, fixed keypoints, masks of the
moving figure or of the whole frame), so what `Preprocessor.prepare` still spends is decoding, drawing, the
mask/background/overlay computation and encoding -- on the CPU, at the real sizes (a synthetic 1080p clip,
1280 x 720 output). It runs on any machine, in a few minutes on 2 cores; on the GPU machine's 16 cores it gives
the writing cost without the models. Measured:

- parts: milliseconds per frame of each step of Replacement's mask and videos, one at a time (wall and CPU
  time of all threads): `refine_masks`, `mask_coverage`, `background_frames`, `mask_overlay_frames`,
  `mask_video_frames`, and each video encoded alone (`write_video`, `FAST_PRESET`);
- prepare: both modes on the `--seconds` clip, per-stage times (`Preprocessed.timings`), CPU time, with the
  figure's masks and with whole-frame masks (what `bench_preprocess.py`'s random SAM2 gives); the fake SAM2
  takes `--segment-ms` per frame (sleeping, as the H200's SAM2 takes 27 ms), so the skeleton and face videos are
  encoded during it as in a real job and "Writing videos" is what is left after it;
- memory: peak RSS of a child process running `prepare` on a `--long-seconds` clip per mode.

JSON goes to ``$OUT`` (or ``--json``), a table is printed last. It uses only functions that also existed before
the writing was reworked, so a copy of this file in an older checkout's ``benchmarks/`` gives the "before"
figures::

    python benchmarks/bench_writing.py --seconds 10 --long-seconds 30
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_preprocess import SOURCE_SIZES, write_driving_clip, write_photo  # noqa: E402

MASKS = ("figure", "full")
"""Fake segmenter masks: the moving figure (about a quarter of the frame after dilation), or every pixel."""


class FakeDetector:
    """One person box per frame, the middle of the frame."""

    device = "cpu"
    batch_size = 8

    def detect(self, frames, *, score_threshold=0.5, batch_size=8):
        return [np.array([[0.3 * f.shape[1], 0.1 * f.shape[0], 0.7 * f.shape[1], 0.95 * f.shape[0], 0.9]]) for f in frames]


class FakePose:
    """The same confident whole-body keypoints in every frame, spread over the box (face compact, on top)."""

    backend, fallback = "fake", None

    def estimate(self, frames, boxes, *, batch_size=16, progress=None):
        index = np.arange(133)
        out = []
        for frame in frames:
            height, width = frame.shape[:2]
            points = np.stack([(0.35 + 0.3 * ((index * 37) % 100) / 100) * width, (0.3 + 0.6 * ((index * 53) % 100) / 100) * height, np.full(133, 0.9)], axis=1)
            points[23:91, 0] = (0.45 + 0.1 * ((index[23:91] * 7) % 17) / 17) * width
            points[23:91, 1] = (0.12 + 0.1 * ((index[23:91] * 11) % 13) / 13) * height
            out.append(points)
        return np.stack(out)


class FakeSegmenter:
    """Masks where a frame differs from the clip's median (the moving figure), or the whole frame, after
    ``seconds_per_frame`` per frame (SAM2's time, during which the skeleton and face videos are encoded)."""

    def __init__(self, masks: str, seconds_per_frame: float) -> None:
        self.masks, self.seconds_per_frame = masks, seconds_per_frame

    def segment(self, frames, prompts, *, progress=None):
        started = time.perf_counter()
        masks = np.ones(frames.shape[:3], bool) if self.masks == "full" else figure_masks(frames)
        time.sleep(max(0.0, len(frames) * self.seconds_per_frame - (time.perf_counter() - started)))
        return masks


def figure_masks(frames: np.ndarray) -> np.ndarray:
    background = np.median(frames[:: max(1, len(frames) // 15)], axis=0)
    return np.stack([np.abs(frame.astype(np.int16) - background).max(axis=-1) > 40 for frame in frames])


def fake_preprocessor(masks: str, segment_ms: float):
    from wan_animate.preprocess import Preprocessor

    preprocessor = Preprocessor("fake-detector", "fake-pose", "fake-sam2")
    # The models are cached properties: setting them replaces the loading.
    preprocessor.detector, preprocessor.pose_estimator = FakeDetector(), FakePose()
    preprocessor.segmenter = FakeSegmenter(masks, segment_ms / 1000)
    return preprocessor


class Clock:
    """Wall and process CPU seconds (all threads) of a block."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def per_frame(clock: Clock, frames: int) -> dict:
    return {"wall_ms": round(clock.wall / frames * 1000, 2), "cpu_ms": round(clock.cpu / frames * 1000, 2)}


def measure_parts(video: Path, folder: Path, masks_kind: str) -> dict:
    """Replacement's mask and video steps, one at a time, on the clip letterboxed to 720p; the video frames are
    made one at a time and dropped, as the writer threads do, then encoded from memory."""
    from wan_animate.conditioning import mask_video_frames
    from wan_animate.preprocess.mask import background_frames, mask_coverage, mask_overlay_frames, refine_masks
    from wan_animate.preprocess.sizing import letterbox
    from wan_animate.video import FAST_PRESET, iter_video, write_video

    frames = np.stack([letterbox(frame, (720, 1280), interpolation="auto") for frame in iter_video(video, max_seconds=None)])
    count = len(frames)
    raw = np.ones(frames.shape[:3], bool) if masks_kind == "full" else figure_masks(frames)
    parts: dict[str, dict] = {}
    with Clock() as clock:
        masks = refine_masks(raw)
    parts["refine_masks"] = per_frame(clock, count)
    with Clock() as clock:
        coverage = mask_coverage(masks)
    parts["mask_coverage"] = per_frame(clock, count)
    with Clock() as clock:
        background = background_frames(frames, masks)
    parts["background_frames"] = per_frame(clock, count)
    with Clock() as clock:
        for index in range(count):
            mask_overlay_frames(frames[index : index + 1], masks[index : index + 1])
    parts["mask_overlay_frames"] = per_frame(clock, count)
    with Clock() as clock:
        for _ in mask_video_frames(masks):
            pass
    parts["mask_video_frames"] = per_frame(clock, count)
    overlay, mask_rgb = mask_overlay_frames(frames, masks), list(mask_video_frames(masks))
    for name, clip in (("background", background), ("mask preview", overlay), ("mask", mask_rgb)):
        with Clock() as clock:
            write_video(folder / "part.mp4", clip, 30.0, preset=FAST_PRESET)
        parts[f"encode {name}"] = per_frame(clock, count)
    return {"frames": count, "coverage": round(coverage, 3), "ms_per_frame": parts}


def run_prepare(mode: str, masks: str, segment_ms: float, photo: Path, video: Path, workdir: Path) -> dict:
    """One `prepare` with the fakes: stage times, wall and CPU seconds, this process's peak RSS so far."""
    from wan_animate.preprocess import PreprocessOptions

    with Clock() as clock:
        result = fake_preprocessor(masks, segment_ms).prepare(mode, photo, video, workdir, PreprocessOptions(resolution="720p"))
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "frames": result.conditioning.num_frames,
        "total_s": round(clock.wall, 2),
        "cpu_s": round(clock.cpu, 2),
        "stages_s": {name: round(seconds, 2) for name, seconds in result.timings.items()},
        "coverage": result.report.mask_coverage,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def _child(queue, *args) -> None:
    queue.put(run_prepare(*args))


def run_in_child(*args) -> dict:
    """`run_prepare` in a fresh process, so its peak RSS is the job's alone."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue, *args))
    child.start()
    result = queue.get()
    child.join()
    return result


def print_table(results: dict) -> None:
    print(f"\nms per frame, one step at a time, {results['clip']['frames']} frames at 1280x720 ({results['machine']['cores']} cores)")
    print(f"{'step':<24}" + "".join(f"{kind + ' wall':>14}{kind + ' cpu':>14}" for kind in results["parts"]))
    names = next(iter(results["parts"].values()))["ms_per_frame"]
    for name in names:
        cells = [results["parts"][kind]["ms_per_frame"][name] for kind in results["parts"]]
        print(f"{name:<24}" + "".join(f"{cell['wall_ms']:>14}{cell['cpu_ms']:>14}" for cell in cells))
    print(f"\nprepare with fake models, {results['clip']['frames']} frames, 1080p -> 720p (s)")
    runs = results["prepare"]
    stages = list(dict.fromkeys(name for run in runs.values() for name in run["stages_s"]))
    print(f"{'stage':<34}" + "".join(f"{key:>18}" for key in runs))
    for name in stages:
        print(f"{name:<34}" + "".join(f"{run['stages_s'].get(name, '-'):>18}" for run in runs.values()))
    for label, key in (("total", "total_s"), ("CPU (all threads)", "cpu_s")):
        print(f"{label:<34}" + "".join(f"{run[key]:>18}" for run in runs.values()))
    for mode, run in results["long"].items():
        print(f"{results['long_seconds']:g}-s clip, {mode}: {run['total_s']} s, child peak RSS {run['peak_rss_gib']} GiB, stages {run['stages_s']}")
    print(f"JSON: {results['json']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="clip of the parts and prepare runs")
    parser.add_argument("--long-seconds", type=float, default=30.0, help="clip of the peak-RSS runs (0: skip)")
    parser.add_argument("--long-modes", nargs="*", choices=["animate", "replace"], default=["animate", "replace"])
    parser.add_argument("--source-size", choices=sorted(SOURCE_SIZES), default="1080p")
    parser.add_argument("--repeats", type=int, default=1, help="prepare runs per configuration (median)")
    parser.add_argument("--segment-ms", type=float, default=27.0, help="the fake SAM2's time per frame (H200: 27)")
    parser.add_argument("--json", type=Path, default=Path(os.environ.get("OUT", ".")) / "bench_writing.json")
    parser.add_argument("--smoke", action="store_true", help="short clips: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.long_seconds, args.repeats = 0.5, 1.0, 1

    work = Path(tempfile.mkdtemp(prefix="bench_writing_"))
    photo, video, long_video = write_photo(work / "character.png"), work / "driving.mp4", work / "long.mp4"
    frames = write_driving_clip(video, args.seconds, SOURCE_SIZES[args.source_size])
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load": os.getloadavg()},
        "command": " ".join(sys.argv),
        "clip": {"source_size": args.source_size, "seconds": args.seconds, "frames": frames},
        "parts": {kind: measure_parts(video, work, kind) for kind in MASKS},
        "prepare": {},
        "long": {},
        "long_seconds": args.long_seconds,
        "json": str(args.json),
    }
    configurations = [("replace", "figure"), ("replace", "full"), ("animate", "figure")]
    for mode, masks in configurations:
        runs = [run_prepare(mode, masks, args.segment_ms, photo, video, work / "job") for _ in range(args.repeats)]
        best = sorted(runs, key=lambda run: run["total_s"])[len(runs) // 2]
        results["prepare"][f"{mode} ({masks})" if mode == "replace" else mode] = {**best, "runs_total_s": [run["total_s"] for run in runs]}
    if args.long_seconds and args.long_modes:
        write_driving_clip(long_video, args.long_seconds, SOURCE_SIZES[args.source_size])
        for mode in args.long_modes:
            results["long"][mode] = run_in_child(mode, "figure", args.segment_ms, photo, long_video, work / "long")
    shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
