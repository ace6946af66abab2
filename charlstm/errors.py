"""The one exception family charlstm raises for bad input.

Core code raises a subclass of `CharLSTMError`; the CLI turns it into a one-line
`error: ...` on stderr and exit code 1. Anything else escaping is a bug.
"""


class CharLSTMError(Exception):
    """Base class: a problem the user can fix (bad file, bad option, bad checkpoint)."""

    # Raised by every rank of a data-parallel run at the same point, from values they share:
    # rank 0 reports it and no rank needs to abort the others (charlstm.distributed)
    every_rank = False


class CorpusError(CharLSTMError):
    """A training or evaluation text cannot be used (missing, empty, binary, bad UTF-8, too small)."""


class CheckpointError(CharLSTMError):
    """A checkpoint file is missing, corrupt, tampered with or of an unknown format."""


class ConfigError(CharLSTMError):
    """An option value is out of range or inconsistent with the model."""


class TrainingDivergedError(CharLSTMError):
    """The loss became NaN or infinite; the last good checkpoint is kept. Seen in the summed
    gradient or the shared weights, so by every rank at once."""

    every_rank = True
