"""What the commands share: consoles that print text literally (never as rich markup)."""

from __future__ import annotations

from rich.console import Console


def stderr_console() -> Console:
    """For notices, progress and tables; stdout stays clean for generated text."""
    return Console(stderr=True, highlight=False)
