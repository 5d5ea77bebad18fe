"""The app on several GPUs end to end: ``app.py --demo --gpus N`` served, one job through `gradio_client`.

Starts ``python app.py --demo --preload --gpus N`` (N processes under torchrun, the demo's tiny models, one per
GPU), waits for the page, submits one Animation job to rank 0 (``/animate_oneshot``: extraction, then 2 segments
of ``assets/dance.mp4`` at the demo's 480p, 2 steps, seed 7), prints the result's path and the job's wall time,
then stops rank 0 with SIGTERM (as a Ctrl-C ends it) and checks that every process exited cleanly (rank 0 lets
the others go). Unless ``--no-compare``, the same job first runs in one process (``app.py --demo --preload``) and
the frames of the two results are compared.

    python benchmarks/app_on_gpus.py --gpus 2            # 2 CUDA GPUs: ~1 min
    python benchmarks/app_on_gpus.py --gpus 2 --smoke    # the same on the CPU: 2 processes over gloo, CUDA hidden

The demo's tiny models are built first if this machine has none (~20 s, into ``~/.cache/wan_animate`` or
``$WAN_ANIMATE_CACHE``). JSON goes to ``$OUT`` (or the current folder) as ``app_on_gpus.json``; a table is printed
last. `AppProcess` (start, wait for the page, find the ranks, stop) is also what ``tests/test_app_ranks.py`` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing the package

FOLLOWER_EXIT = "rank 0 has shut down"
"""What a follower logs when rank 0 let it go (`wan_animate.space.ranks.follow_leader`)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class AppProcess:
    """``app.py`` served by a child process (torchrun's, with ``--gpus N``), its output in ``log``."""

    process: subprocess.Popen
    url: str
    log: Path

    @classmethod
    def start(cls, app_args: list[str], log: Path, *, env: dict[str, str] | None = None, timeout: float = 180) -> "AppProcess":
        """Start ``python app.py app_args --host 127.0.0.1 --port <free>`` in its own session and wait until
        the page answers.

        Raises:
            RuntimeError: The app exited, or did not answer within ``timeout`` seconds (the log's end is said).
        """
        port = free_port()
        command = [sys.executable, str(REPO / "app.py"), *app_args, "--host", "127.0.0.1", "--port", str(port)]
        with open(log, "wb") as output:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        app = cls(process, f"http://127.0.0.1:{port}/", log)
        deadline = time.monotonic() + timeout
        while not app.answers():
            if process.poll() is not None or time.monotonic() > deadline:
                app.kill()
                raise RuntimeError(f"The app did not start ({' '.join(command)}):\n{app.log_tail()}")
            time.sleep(0.5)
        return app

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def rank_pids(self) -> dict[int, int]:
        """The process id of each rank: torchrun's children by their ``RANK``; the process itself when alone."""
        ranks = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent != self.process.pid:
                    continue
                environment = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):  # the process ended meanwhile
                continue
            rank = next((item[5:] for item in environment if item.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[int(rank)] = int(entry.name)
        return ranks or {0: self.process.pid}

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM to rank 0 only (the others must be let go by it); wait for the app to exit.

        Returns:
            The app's exit status (torchrun's: 0 when every rank exited cleanly), ``None`` if it had to be killed.
        """
        if self.process.poll() is None:
            os.kill(self.rank_pids()[0], signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.process.returncode

    def kill(self) -> None:
        """Kill every process of the app's session (a test's or a failed run's cleanup)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def animate_oneshot(url: str, downloads: Path, *, steps: int = 2, seed: int = 7) -> tuple[Path, float, dict]:
    """One Animation job through `gradio_client`: the example's photo and video, 480p, extract then generate.

    Returns:
        The result video (downloaded), the job's wall time in seconds, the result's details.
    """
    from gradio_client import Client, handle_file

    client = Client(url, download_files=str(downloads), verbose=False)
    started = time.perf_counter()
    video, _side, _summary, details, _job_id = client.predict(
        handle_file(str(REPO / "assets" / "character.jpg")), handle_file(str(REPO / "assets" / "dance.mp4")),
        0.0, None, "480p", "30", False, "", "quality", steps, seed, 1.0, 1, False, "none",
        api_name="/animate_oneshot",
    )
    seconds = time.perf_counter() - started
    return Path(video["video"] if isinstance(video, dict) else video), seconds, details


def frame_difference(path: Path, reference: Path) -> dict:
    """Largest and mean absolute difference of two videos' frames (uint8 levels), or their shapes if they differ."""
    import numpy as np

    from wan_animate.video import read_video

    frames, expected = read_video(path, fps=None).frames, read_video(reference, fps=None).frames
    if frames.shape != expected.shape:
        return {"shapes": [list(frames.shape), list(expected.shape)]}
    difference = np.abs(frames.astype(np.int16) - expected.astype(np.int16))
    return {"max": int(difference.max()), "mean": round(float(difference.mean()), 4)}


def run(app_args: list[str], folder: Path, output: Path, env: dict[str, str], budget: float, steps: int, seed: int) -> dict:
    """Serve the app with ``app_args`` (its jobs in ``folder``; its log ``output``.log and the result under
    ``output``/), run one job, stop it; what happened, as a JSON-ready dict (a failure as ``error``, with the
    log's end printed)."""
    folder.mkdir()
    env = {**env, "GRADIO_TEMP_DIR": str(folder / "gradio")}  # its own: a closing app deletes its cached files
    args = ["--demo", "--preload", "--work-dir", str(folder / "jobs"), *app_args]
    log = output.with_suffix(".log")
    record: dict = {"app": f"app.py {' '.join(args)}", "log": str(log)}
    started = time.monotonic()
    try:
        app = AppProcess.start(args, log, env=env, timeout=budget)
    except RuntimeError as error:
        print(error, flush=True)
        return {**record, "error": "did not start"}
    record["start_s"] = round(time.monotonic() - started, 1)
    try:
        video, seconds, details = animate_oneshot(app.url, output, steps=steps, seed=seed)
        record.update(
            result=str(video), job_s=round(seconds, 2), generation_s=details.get("seconds"), frames=details["frames"],
            segments=details["segments_total"], seed=details["seed"],
        )
        print(f"{' '.join(app_args)}: {video} ({details['frames']} frames, {details['segments_total']} segments) in {seconds:.1f} s", flush=True)
    except Exception as error:  # the app's own sentence, or the client's; the log says more
        record["error"] = f"{type(error).__name__}: {error}"
        print(f"{' '.join(app_args)}: {record['error']}\n{app.log_tail()}", flush=True)
    finally:
        record["exit_status"] = app.stop()
        record["followers_let_go"] = app.log_text().count(FOLLOWER_EXIT)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=2, help="Processes (GPUs) for the app (default 2).")
    parser.add_argument("--smoke", action="store_true", help="On the CPU: CUDA hidden, the processes over gloo (--allow-cpu).")
    parser.add_argument("--no-compare", action="store_true", help="Skip the one-process run and the frame comparison.")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--budget-s", type=float, default=300, help="Stop waiting for an app to start after this (default 300).")
    parser.add_argument("--json", type=Path, default=Path(os.environ.get("OUT", ".")) / "app_on_gpus.json")
    args = parser.parse_args()

    # Both apps with the CPU threads `--gpus` gives each process: CPU float sums (preprocessing on the CPU, the
    # tiny models in --smoke) depend on the thread count, and the comparison is of the processes, not of that.
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.gpus))
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": threads}
    cpu = ["--allow-cpu"] if args.smoke else []
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
    started = time.monotonic()
    from wan_animate.demo import demo_models

    demo_models()  # built once here, not by every rank at the same time
    results: dict = {"gpus": args.gpus, "smoke": args.smoke, "steps": args.steps, "models_s": round(time.monotonic() - started, 1)}
    logs = args.json.parent
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="app_on_gpus_") as scratch:
        common = dict(env=env, budget=args.budget_s, steps=args.steps, seed=args.seed)
        if not args.no_compare:
            results["one_process"] = run(cpu, Path(scratch) / "one", logs / "app_on_gpus_1", **common)
        several = [*cpu, "--gpus", str(args.gpus)]
        results["several"] = run(several, Path(scratch) / "several", logs / f"app_on_gpus_{args.gpus}", **common)
        if not args.no_compare and "result" in results["several"] and "result" in results["one_process"]:
            results["difference"] = frame_difference(Path(results["several"]["result"]), Path(results["one_process"]["result"]))
    results["total_s"] = round(time.monotonic() - started, 1)
    args.json.write_text(json.dumps(results, indent=2))

    print(f"\nJSON: {args.json}")
    print("| run | start (s) | job (s) | of it generation (s) | frames | exit status | followers let go | error |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label in ("one_process", "several"):
        if label in results:
            row = results[label]
            name = "1 process" if label == "one_process" else f"{args.gpus} processes"
            cells = [row.get(key, "") for key in ("start_s", "job_s", "generation_s", "frames", "exit_status", "followers_let_go", "error")]
            print(f"| {name} | " + " | ".join(str(cell) for cell in cells) + " |")
    if "difference" in results:
        print(f"\nFrames, {args.gpus} processes vs 1 (uint8 levels): {results['difference']}")
    several = results["several"]
    healthy = "error" not in several and several.get("exit_status") == 0 and several.get("followers_let_go") == args.gpus - 1
    print("OK" if healthy else "FAILED: the job failed or not every process exited cleanly (see the app logs)")
    sys.exit(0 if healthy else 1)


if __name__ == "__main__":
    main()
