"""Fixtures of the end-to-end tests (app client, browser, MCP): tiny models, input media, the served app.

The models are the confident tiny set of `wan_animate.demo` (what ``python app.py --demo`` serves), built afresh
for the session; the served app shrinks its frame areas to `wan_animate.demo.DEMO_AREAS` (a "480p" output is
64 x 64). The test media (48 x 64) are smaller than the real input minimums (`wan_animate.validation`):
`small_media_limits` lowers them to `TEST_LIMITS` (tests/test_bad_inputs.py checks the real ones).
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.media import write_test_video
from wan_animate.demo import DEMO_LIMITS, TinyModels, build_tiny_models, demo_sizes
from wan_animate.space import AppConfig

TEST_LIMITS = {"MIN_PHOTO_SIDE": 8, "MIN_VIDEO_SIDE": 8, **DEMO_LIMITS}
DRIVING_FRAMES = 80
"""More than one 77-frame segment: the generation runs two segments."""


def dancing_frames(count: int, height: int = 64, width: int = 48) -> np.ndarray:
    """A bright figure-like block that sways over a dark background, one frame per index."""
    frames = np.full((count, height, width, 3), 30, np.uint8)
    for index in range(count):
        x = width // 2 + int(6 * np.sin(index / 5))
        frames[index, 8:56, x - 8 : x + 8] = (220, 180, 150)
        frames[index, 4:16, x - 5 : x + 5] = (240, 200, 170)
    return frames


@contextmanager
def small_media_limits():
    """`TEST_LIMITS` in place of `wan_animate.validation`'s input-size minimums while the block runs."""
    from wan_animate import validation

    saved = {name: getattr(validation, name) for name in TEST_LIMITS}
    for name, value in TEST_LIMITS.items():
        setattr(validation, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(validation, name, value)


@pytest.fixture
def small_media():
    """Lower the input-size minimums to the test media for one test (`small_media_limits`)."""
    with small_media_limits():
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def e2e_media(tmp_path_factory) -> dict[str, Path]:
    """A photo, a driving video of `DRIVING_FRAMES` frames at 30 fps with sound, and a 20-frame clip."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("media")
    photo = folder / "photo.png"
    Image.fromarray(dancing_frames(1, 64, 48)[0]).save(photo)
    long = write_test_video(folder / "dance.mp4", dancing_frames(DRIVING_FRAMES), 30.0, audio_seconds=DRIVING_FRAMES / 30)
    short = write_test_video(folder / "short.mp4", dancing_frames(20), 30.0, audio_seconds=20 / 30)
    return {"photo": photo, "video": long, "short_video": short}


@contextmanager
def serve(config: AppConfig):
    """The app built from ``config``, served in this process on a free localhost port while the block runs; yields
    the Blocks (its URL is ``demo.local_url``, its actions ``demo.studio``)."""
    import app

    demo = app.build_demo(config)
    demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        mcp_server=True,
        quiet=True,
        show_error=True,
    )
    try:
        yield demo
    finally:
        demo.close()
        demo.studio.cleaner.stop()


# Module scope: the shrunk frame areas must not leak into other test modules (test_sizing checks the real ones).
@pytest.fixture(scope="module")
def served_demo(tiny_models, tmp_path_factory):
    """The app served on localhost as ``python app.py --demo`` serves it: the confident tiny models on the CPU,
    small frames (the Blocks; its actions are ``demo.studio``)."""
    config = AppConfig(work_dir=tmp_path_factory.mktemp("jobs")).with_tiny_models(tiny_models)
    with demo_sizes(), small_media_limits(), serve(config) as demo:
        yield demo


@pytest.fixture(scope="module")
def served_app(served_demo) -> str:
    """The URL of `served_demo`."""
    return served_demo.local_url


@pytest.fixture(scope="module")
def light_app(tmp_path_factory):
    """The app with model sources that are never loaded (for tests of the page and its API description)."""
    missing = tmp_path_factory.mktemp("no_models")
    config = AppConfig(
        model=str(missing / "checkpoint"), detector=str(missing / "detector"), pose_model=str(missing / "pose"),
        sam2=str(missing / "sam2"), allow_cpu=True, work_dir=tmp_path_factory.mktemp("jobs"),
    )
    with serve(config) as demo:
        yield demo.local_url
