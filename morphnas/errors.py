"""The project's one exception hierarchy.

Everything a user can get wrong (a bad file, a bad flag, an unknown study, a corrupt
checkpoint, a diverging child) raises a subclass of :class:`MorphnasError`; the CLI turns it
into one line on stderr and exit status 2.
"""


class MorphnasError(Exception):
    """Base class of every error morphnas raises on purpose."""


class GraphError(MorphnasError):
    """An architecture graph is invalid; the message names the offending edge or blob."""


class MorphError(MorphnasError):
    """A morph cannot be applied: unknown site, bad parameters, or it does not apply there."""


class ConfigError(MorphnasError):
    """A search space, flag or option is malformed."""


class DataError(MorphnasError):
    """A data set is unknown, missing or malformed."""


class CheckpointError(MorphnasError):
    """A checkpoint directory is missing, incomplete or corrupt."""


class TrainingDivergedError(MorphnasError):
    """The training loss became NaN or infinite."""


class StudyError(MorphnasError):
    """An Optuna study or trial is unknown, or its storage cannot be opened."""


class SearchInterrupted(MorphnasError):
    """The user stopped a search (Ctrl-C, or SIGTERM from ``kill`` or a job scheduler); the
    message says how to resume it and ``signal`` is the signal's number."""

    def __init__(self, message: str, signal: int = 2) -> None:
        super().__init__(message)
        self.signal = signal


class TorchImportError(MorphnasError):
    """A PyTorch network cannot be imported: the message names the node and the op the IR lacks."""
