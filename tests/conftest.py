"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_OWN_GRADIO_TEMP_DIR: str | None = None


def pytest_configure(config) -> None:
    """Give this run its own Gradio file cache and no Gradio analytics (before any test module imports gradio).

    Gradio keeps uploads and outputs under one folder per machine, named by content hash, and a closing app
    deletes the files it put there: another test run on the same machine uploading the same test photo would
    delete this run's copy while a test still uses it.
    """
    global _OWN_GRADIO_TEMP_DIR
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no version check or analytics call: no network
    if "GRADIO_TEMP_DIR" not in os.environ:
        _OWN_GRADIO_TEMP_DIR = os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="gradio-tests-")


def pytest_unconfigure(config) -> None:
    if _OWN_GRADIO_TEMP_DIR is not None:
        shutil.rmtree(_OWN_GRADIO_TEMP_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random Wan2.2-Animate checkpoint in the real repo's folder layout (`wan_animate.demo.checkpoint`)."""
    from wan_animate.demo.checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))
