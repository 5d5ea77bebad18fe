"""Benchmark of the x264 preset used for the conditioning and preview videos (`wan_animate.video.FAST_PRESET`).

Writes the same skeleton-like frames (coloured strokes and dots on black, 720p portrait, as the pose video) with
`write_video` at crf 18 under each preset, decodes them back with `read_video`, and reports the median encoding
time of ``--repeats`` runs, the file size and the mean absolute error against the frames (0-255 levels).

    python benchmarks/bench_encode.py --frames 90 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def skeleton_frames(count: int, size: tuple[int, int] = (1280, 720)) -> np.ndarray:
    """Moving limbs and joints in the contract's colours on a black canvas."""
    import cv2

    height, width = size
    frames = np.zeros((count, height, width, 3), np.uint8)
    colours = [(255, 0, 0), (255, 170, 0), (0, 255, 85), (0, 85, 255), (170, 0, 255), (200, 200, 0)]
    for index, frame in enumerate(frames):
        for limb, colour in enumerate(colours):
            start = (100 + 80 * limb, 300 + 4 * index)
            end = (180 + 70 * limb + 3 * index, 700 + 40 * limb)
            cv2.line(frame, start, end, tuple(int(c * 0.6) for c in colour), 4)
            cv2.circle(frame, end, 3, colour, -1)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--presets", nargs="+", default=["medium", "veryfast"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import av

    from wan_animate.video import read_video, write_video

    frames = skeleton_frames(args.frames)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            path = Path(folder) / f"{preset}.mp4"
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                write_video(path, frames, 30.0, preset=preset)
                seconds.append(time.perf_counter() - started)
            decoded = read_video(path, fps=None).frames
            error = float(np.abs(decoded.astype(np.int16) - frames).mean())
            rows.append({
                "preset": preset,
                "median_s": round(statistics.median(seconds), 3),
                "runs_s": [round(s, 3) for s in seconds],
                "bytes": path.stat().st_size,
                "mean_abs_error": round(error, 3),
            })
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_visible": os.cpu_count()},
        "versions": {"python": platform.python_version(), "av": av.__version__, "numpy": np.__version__},
        "command": " ".join(sys.argv),
        "frames": args.frames,
        "rows": rows,
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
