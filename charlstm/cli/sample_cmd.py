"""The `charlstm sample` command: print a seed and what the model writes after it.

Text streams to stdout as it is generated; notices (the model used, warnings, the first run's
compile spinner) go to stderr. With --num-samples N > 1 each sample is printed after a line
`--- sample K of N ---` and ends with a newline; --json prints one JSON object instead.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .. import sample as sampling
from ..checkpoint import default_model_path
from . import ranks
from .app import app
from .common import stderr_console

SPINNER_DELAY = 1.0  # seconds: loading cached kernels takes less, compiling them far more


@app.command("sample")
def sample_command(
    seed: Annotated[
        str, typer.Option(help="Text the model reads first; printed, not counted in --length.")
    ] = "",
    length: Annotated[int, typer.Option(help="Characters to write after the seed.")] = 500,
    stop: Annotated[str | None, typer.Option(help="End a sample early once its text ends with this.")] = None,
    temperature: Annotated[
        float, typer.Option(help="Randomness: 0 always takes the most likely character.")
    ] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Draw only from the K most likely.")] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Draw only from the most likely that add up to P.")
    ] = None,
    random_seed: Annotated[
        int | None, typer.Option(help="Same seed, model and options: same text. Default: random.")
    ] = None,
    num_samples: Annotated[int, typer.Option(help="Samples to write, generated together.")] = 1,
    model: Annotated[
        Path | None,
        typer.Option(help="Checkpoint to use. Default: the newest in ./models/, else the shipped one."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: model, options, samples.")
    ] = False,
    skip_unknown: Annotated[
        bool, typer.Option(help="Drop seed characters the model has never seen (with a warning).")
    ] = False,
    threads: Annotated[
        int,
        typer.Option(help="2: split each layer between two cores (faster for wide models; same text)."),
    ] = 1,
) -> None:
    """Print SEED, then what the model writes after it (an empty seed starts from a newline)."""
    ranks.alone_only("sample")
    sampling.check_options(
        length=length, temperature=temperature, top_k=top_k, top_p=top_p,
        num_samples=num_samples, stop=stop, random_seed=random_seed, threads=threads,
    )  # fmt: skip
    if random_seed is None:  # pick one, and say which, so that any run can be repeated
        random_seed = int.from_bytes(os.urandom(4), "little")
    console = stderr_console()
    path = model if model is not None else default_model_path()
    loaded = sampling.load_model(path)
    with _warnings_to(console):
        seed = sampling.clean_seed(loaded.vocab, seed, skip_unknown)
    console.print(f"model: {path} (random seed {random_seed})", markup=False)
    with _spinner_if_slow(console, "preparing the sampling kernels (compiled on a first run, then cached)"):
        loaded.warm_up(num_samples, threads)

    options = {
        "seed": seed, "length": length, "stop": stop, "temperature": temperature,
        "top_k": top_k, "top_p": top_p, "random_seed": random_seed, "num_samples": num_samples,
        "threads": threads,
    }  # fmt: skip
    if as_json:
        samples = loaded.generate(**options)
        document = {"model": str(path), "options": options, "samples": samples}
        typer.echo(json.dumps(document, ensure_ascii=False, indent=2))
        return

    out = sys.stdout
    many = num_samples > 1
    if many:
        out.write(f"--- sample 1 of {num_samples} ---\n")
    out.write(seed)
    out.flush()

    def stream_first(index: int, piece: str) -> None:
        if index == 0:
            out.write(piece)
            out.flush()

    samples = loaded.generate(**options, on_text=stream_first)
    if many:
        out.write("\n")
        for index, text in enumerate(samples[1:], start=2):
            out.write(f"--- sample {index} of {num_samples} ---\n{seed}{text}\n")
    elif out.isatty() and not (seed + samples[0]).endswith("\n"):
        out.write("\n")  # keep the shell prompt off the last line; pipes get the text exactly
    out.flush()


@contextmanager
def _warnings_to(console: Console) -> Iterator[None]:
    """Show the sampler's warnings as single `warning: ...` lines on stderr."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        console.print(f"warning: {message}", markup=False)

    with warnings.catch_warnings():
        warnings.simplefilter("always", sampling.UnknownCharactersWarning)
        warnings.showwarning = show
        yield


@contextmanager
def _spinner_if_slow(console: Console, message: str) -> Iterator[None]:
    """A spinner (a plain line without a terminal) if the block takes over SPINNER_DELAY s:
    numba compiling kernels on a first run, rather than loading them from its cache."""
    status = console.status(message + "...")

    def show() -> None:
        if console.is_terminal:
            status.start()
        else:
            console.print(message + "...", markup=False)

    timer = threading.Timer(SPINNER_DELAY, show)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()  # if it fired, let it finish before stopping what it started
        status.stop()
