"""Progress reporting shared by every long stage."""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[int, int, str], None]
"""Called as ``progress(done, total, description)``; ``done`` runs from 0 to ``total``."""


def no_progress(done: int, total: int, description: str) -> None:
    """A progress callback that reports nothing."""
