"""The app on several GPUs of one machine: ``torchrun --standalone --nproc-per-node N app.py`` (or ``--gpus N``).

Every process joins the group (`join_ranks`). Rank 0 builds the `Studio` and serves the page and the API as one
process does; the Studio shares each generation with the other ranks (`wan_animate.parallel.share_job`) and all
of them denoise it together, one job at a time. Ranks 1..N-1 load the same pipeline and LoRAs from the same
`AppConfig` on their own GPU and follow rank 0's generations (`follow_leader`) until rank 0 exits. Extraction
runs on rank 0 alone (on its GPU) while the others wait. The followers open the job's conditioning from the
paths rank 0 sends, so all ranks run on one machine.

At exit (Ctrl-C, SIGTERM) rank 0 stops the running generation on every rank at its next step, keeps new ones from
starting, and then lets the followers go (`lead_followers`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..errors import WanAnimateError
from ..parallel import ParallelContext, init_distributed, launched_with_several_processes, run_follower, shutdown
from .config import AppConfig

if TYPE_CHECKING:
    from .studio import Studio

logger = logging.getLogger("wan_animate.app")

GPUS_VARIABLE = "WAN_ANIMATE_GPUS"
"""The environment variable of ``--gpus`` (a Space's settings); the processes it starts do not inherit it."""


def relaunch_on_gpus(count: int, script: str | Path, argv: Sequence[str], config: AppConfig) -> None:
    """``--gpus N``: replace this process by ``python -m torch.distributed.run --standalone --nproc-per-node N
    script argv`` (``argv`` without ``--gpus``). Returns at once when ``count`` is 1 (this process serves).

    Each process gets ``OMP_NUM_THREADS`` = its share of the CPU cores unless set (torchrun would set 1, which
    slows rank 0's preprocessing).

    Args:
        count: Processes to start, one per GPU.
        script: The app's file.
        argv: The app's command line arguments (``--gpus`` is removed from them).
        config: The app's configuration: checked as `join_ranks` checks it; without CUDA, ``allow_cpu`` lets
            ``count`` CPU processes talk over gloo (tests, the tiny models).

    Raises:
        WanAnimateError: ``count`` is below 1 or above the visible GPUs, this process is already one of several,
            there is no CUDA GPU and ``allow_cpu`` is off, or `check_several_processes` refuses the configuration.
    """
    if count < 1:
        raise WanAnimateError(f"--gpus must be at least 1, got {count}.")
    if count == 1:
        return
    if launched_with_several_processes():
        raise WanAnimateError("--gpus starts the processes itself: under torchrun, leave it out.")
    check_several_processes(config)
    if torch.cuda.is_available():
        visible = torch.cuda.device_count()
        if count > visible:
            mask = os.environ.get("CUDA_VISIBLE_DEVICES")
            shown = f"{visible}, CUDA_VISIBLE_DEVICES={mask}" if mask is not None else str(visible)
            raise WanAnimateError(f"--gpus {count} asks for more GPUs than this machine shows ({shown}): use --gpus {visible} or fewer.")
    elif not config.allow_cpu:
        raise WanAnimateError(
            f"--gpus {count} needs {count} CUDA GPUs and none is visible. (To try several processes on the CPU with "
            "tiny test models, add --allow-cpu: they then talk over gloo.)"
        )
    environment = {name: value for name, value in os.environ.items() if name != GPUS_VARIABLE}
    environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={count}",
        str(script), *without_gpus(argv),
    ]
    logger.info("Starting %d processes: %s", count, " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, environment)


def without_gpus(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--gpus N`` / ``--gpus=N`` (the processes it starts must not start processes again)."""
    kept: list[str] = []
    skip_value = False
    for argument in argv:
        if skip_value:
            skip_value = False
        elif argument == "--gpus":
            skip_value = True
        elif not argument.startswith("--gpus="):
            kept.append(argument)
    return kept


@contextmanager
def join_ranks(config: AppConfig) -> Iterator[ParallelContext | None]:
    """This process's place among several started by torchrun while the block runs; ``None`` in one process.

    Checks first what several processes cannot do (`check_several_processes`), joins the group
    (`init_distributed`: this rank's GPU becomes its ``"cuda"``), and leaves it at the end on every rank (rank 0
    lets the followers go first, unless `lead_followers` did). The followers ignore Ctrl-C: torchrun passes it to
    every process, and rank 0 decides when the group stops (a follower that left in the middle of a job would
    leave rank 0 waiting in that job's next exchange).

    Raises:
        WanAnimateError: `check_several_processes` refuses the configuration.
    """
    if not launched_with_several_processes():
        yield None
        return
    check_several_processes(config)
    parallel = init_distributed()
    if parallel.is_follower:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logger.info("Rank %d of %d on %s", parallel.rank, parallel.world_size, parallel.device)
    try:
        yield parallel
    finally:
        if dist.is_initialized():
            shutdown(parallel)


def check_several_processes(config: AppConfig) -> None:
    """Refuse, with what to do, a configuration that several processes cannot serve.

    Raises:
        WanAnimateError: On ZeroGPU (it runs one process per Space), or with ``gpu_concurrency`` above 1 (all
            GPUs work on one job at a time).
    """
    if config.zerogpu:
        raise WanAnimateError(
            "ZeroGPU runs the app as one process on one GPU slice: start it without torchrun and without --gpus."
        )
    if config.gpu_concurrency != 1:
        raise WanAnimateError(
            "With several GPUs all of them work on one job at a time: --gpu-concurrency must be 1, got "
            f"{config.gpu_concurrency}."
        )


def log_prefix() -> str:
    """``"[rank N] "`` for the log lines of a process torchrun started as one of several (its ``RANK``), else ``""``:
    the ranks write to the same terminal."""
    return f"[rank {os.environ.get('RANK', '0')}] " if launched_with_several_processes() else ""


def follow_leader(config: AppConfig, parallel: ParallelContext) -> int:
    """On ranks 1..N-1: load the pipeline with the app's LoRAs (`app_pipeline`, as rank 0's `Studio.preload`
    does), then run rank 0's generations (`run_follower`) until rank 0 exits.

    Returns:
        The number of jobs followed to their end.
    """
    from .studio import app_pipeline

    pipeline = app_pipeline(config, relight=True)
    logger.info("Rank %d: pipeline loaded; following rank 0's jobs", parallel.rank)
    completed = run_follower(parallel, lambda: pipeline)
    logger.info("Rank %d: rank 0 has shut down after %d job(s) followed to their end", parallel.rank, completed)
    return completed


@contextmanager
def lead_followers(parallel: ParallelContext | None, studio: "Studio") -> Iterator[None]:
    """On rank 0 while the block serves the app: at its end (Ctrl-C, SIGTERM, an error) stop the Studio's
    generation and let the followers go. Nothing happens in one process.

    A Ctrl-C or a SIGTERM stops the running generation at its next step on every rank (`Studio.stop_generations`)
    and then raises `KeyboardInterrupt`, on which Gradio closes its server. At the end `Studio.close` waits for the
    GPU to be free and keeps new generations from starting, and only then are the followers sent their shutdown:
    a generation still sharing its steps with them would meet that message. One that does not stop in time is
    left there: rank 0 leaves the group without the message and raises, and the followers end when their next
    exchange finds it gone (torchrun stops them as soon as rank 0 exits with an error).

    Raises:
        WanAnimateError: A generation did not stop in time.
    """
    if parallel is None:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        studio.stop_generations()
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if studio.close():
            shutdown(parallel)
        else:
            dist.destroy_process_group()
            raise WanAnimateError(
                "A generation did not stop at the app's exit: the other processes were left without a shutdown "
                "message (torchrun stops them)."
            )


__all__ = [
    "GPUS_VARIABLE",
    "check_several_processes",
    "follow_leader",
    "join_ranks",
    "lead_followers",
    "log_prefix",
    "relaunch_on_gpus",
    "without_gpus",
]
