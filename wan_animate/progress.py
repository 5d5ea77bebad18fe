"""Progress reporting shared by every long stage."""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[int, int, str], None]
"""Called as ``progress(done, total, description)``; ``done`` runs from 0 to ``total``."""


def no_progress(done: int, total: int, description: str) -> None:
    """A progress callback that reports nothing."""


def format_minutes(seconds: float) -> str:
    """``"about 3 min"``, ``"about 40 s"``: an estimate in words for the page."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    return f"about {round(seconds / 60):.0f} min"
