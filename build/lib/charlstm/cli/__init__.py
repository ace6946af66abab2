"""The command line (the only layer that imports Typer and rich's progress bars).

One module per command registers it on `app`; `common` holds what they share: the console,
the one-line error handling and the model lookup messages.
"""

from .app import app, main

__all__ = ["app", "main"]
