"""How a rank of a data-parallel run (charlstm.distributed) starts and ends in the CLI: the
missing `mpi` extra told once, and an error told by the rank that met it, then the job ended
so that no rank waits at the next exchange for one that is gone.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from .. import distributed
from ..errors import CharLSTMError, ConfigError
from .common import one_line

ABORT_GRACE = 0.3  # seconds for a rank's last lines to reach mpiexec before the job is aborted


def _told_by_rank_0() -> None:
    """Before an error every rank would print alike: the others exit 1 without a word."""
    if distributed.launched_rank() not in (None, 0):
        raise typer.Exit(1)


def connect() -> distributed.Alone | distributed.Group:
    """This process's group; the missing mpi extra is told once, by rank 0."""
    try:
        return distributed.connect()
    except CharLSTMError:
        _told_by_rank_0()
        raise


def alone_only(command: str) -> None:
    """Refuse to run `command` as several processes under mpiexec (each would do the whole job
    and print it): told once, by rank 0."""
    size = distributed.launched_size()
    if size is None or size == 1:
        return
    _told_by_rank_0()
    raise ConfigError(
        f"charlstm {command} runs as one process, not {size}: start it without mpiexec "
        "(only charlstm train trains data parallel)"
    )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextmanager
def ending_together(
    group: distributed.Alone | distributed.Group, close: Callable[[], None] = lambda: None
) -> Iterator[None]:
    """An error every rank met together (CharLSTMError.every_rank) is told by rank 0 and all
    exit 1. Any other is told by its rank (`rank 1: error: ...`, a bug with its traceback),
    and the job is aborted (MPI_Abort). `close` ends the display first. Alone: unchanged."""
    if group.size == 1:
        yield
        return
    prefix = "" if group.is_root else f"rank {group.rank}: "
    try:
        yield
    except CharLSTMError as exc:
        close()
        if group.is_root or not exc.every_rank:
            _say(f"{prefix}error: {one_line(str(exc))}")
        if exc.every_rank:
            raise typer.Exit(1) from None
        time.sleep(ABORT_GRACE)
        group.abort(1)
    except KeyboardInterrupt:  # a second Ctrl-C
        close()
        if group.is_root:
            _say("aborted by a second Ctrl-C: every write is atomic, nothing is half-written")
        group.abort(130)
    except Exception as exc:
        close()
        # the one line first: mpiexec may stop forwarding output once the job is aborted
        _say(f"rank {group.rank}: error: {type(exc).__name__}: {exc} (a bug: the traceback follows)")
        for line in traceback.format_exc().splitlines():
            _say(f"rank {group.rank}: {line}")
        time.sleep(ABORT_GRACE)
        group.abort(1)
