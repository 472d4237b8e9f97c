"""The project's own error types: problems with what the user gave us.

Entry points print a :class:`UserError` as its message alone (what, which file or setting, what
to do next) and exit non-zero; any other exception is a bug or an environment problem and keeps
its traceback. Subclasses also derive from ``ValueError`` so callers that catch ``ValueError``
keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input (data, image, annotation, checkpoint or setting); the message says what to do."""


class ConfigError(UserError, ValueError):
    """A setting has a value the run cannot use; ``key`` is its dotted config path."""

    def __init__(self, key: str, problem: str | None = None) -> None:
        self.key = key if problem is not None else ""
        self.problem = problem if problem is not None else key
        super().__init__(f"{key}: {problem}" if problem is not None else key)


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, unreadable or does not fit the configured model."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (input images, checkpoint) does not exist."""
