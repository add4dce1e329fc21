"""User-facing errors: one clear line naming the problem and what to do.

The CLI catches :class:`PrunecliError` and prints only its message (no traceback), so raise it
for anything a user can fix (bad name, missing folder, corrupt checkpoint); let real bugs raise
ordinary exceptions so they keep their traceback.
"""

from __future__ import annotations


class PrunecliError(Exception):
    """An error caused by user input, with a message that says what to do."""


class UnknownNameError(PrunecliError, KeyError):
    """A name that no registry holds (method, model, dataset, cost)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(PrunecliError):
    """A configuration key or value that is invalid."""


class DataError(PrunecliError):
    """A dataset that is missing, empty or in the wrong layout."""


class CheckpointError(PrunecliError):
    """A checkpoint that is missing, corrupt or incompatible."""


class DivergedError(PrunecliError, FloatingPointError):
    """The training loss became NaN or Inf; the last checkpoint written before it is intact."""
