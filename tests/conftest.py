"""Shared fixtures of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random Wan2.2-Animate checkpoint in the real repo's folder layout (`wan_animate.demo.checkpoint`)."""
    from wan_animate.demo.checkpoint import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"))
