"""The one exception family charlstm raises for bad input.

Core code raises a subclass of `CharLSTMError`; the CLI turns it into a one-line
`error: ...` on stderr and exit code 1. Anything else escaping is a bug.
"""


class CharLSTMError(Exception):
    """Base class: a problem the user can fix (bad file, bad option, bad checkpoint)."""


class CorpusError(CharLSTMError):
    """A training or evaluation text cannot be used (missing, empty, binary, bad UTF-8, too small)."""


class CheckpointError(CharLSTMError):
    """A checkpoint file is missing, corrupt, tampered with or of an unknown format."""


class ConfigError(CharLSTMError):
    """An option value is out of range or inconsistent with the model."""


class TrainingDivergedError(CharLSTMError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
