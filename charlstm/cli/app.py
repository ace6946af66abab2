"""The Typer application: every bad input ends as one `error: ...` line and exit code 1."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from ..errors import CharLSTMError
from .common import one_line


class OneLineErrorsGroup(TyperGroup):
    """Turns usage errors and `CharLSTMError` into a single stderr line and exit code 1,
    both from the console script and under `typer.testing.CliRunner`."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        except typer.TyperException as exc:  # usage errors: unknown option, bad type, ...
            typer.echo(f"error: {one_line(exc.format_message())}", err=True)
            sys.exit(1)
        except CharLSTMError as exc:
            typer.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(1)
        except BrokenPipeError:
            _silence_broken_pipe()
            sys.exit(0)
        except SystemExit as exc:
            if _raised_by_rich_on_broken_pipe(exc):  # help piped into `head`: a normal end
                sys.exit(0)
            raise
        if isinstance(code, int) and code != 0:
            sys.exit(code)
        return code

    def invoke(self, ctx):
        # Inside click's own handler, which would turn a closed pipe into exit code 1: the
        # reader (`head`) having had enough is a normal end, so exit 0 without a word.
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _silence_broken_pipe()
            raise typer.Exit(0) from None


def _raised_by_rich_on_broken_pipe(exc: SystemExit) -> bool:
    """Whether rich's Console.on_broken_pipe ended the process: when the reader of stdout has
    gone, it points stdout at devnull and raises SystemExit(1) (typer prints help with rich)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name == "on_broken_pipe" and "rich" in tb.tb_frame.f_code.co_filename


def _silence_broken_pipe() -> None:
    """The reader (e.g. `head`) went away: point stdout at devnull so the interpreter's
    final flush does not print a BrokenPipeError of its own."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


app = typer.Typer(
    cls=OneLineErrorsGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="charlstm: a character-level LSTM text generator that trains on your CPU.",
)

# Each command module registers itself on `app` when imported.
from . import eval_cmd, gates_cmd, info_cmd, sample_cmd, train_cmd  # noqa: E402, F401


def main() -> None:
    app()
