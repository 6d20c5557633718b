"""User-facing errors: one line naming the file and the problem (the CLI prints it and exits with code 2)."""

from __future__ import annotations

from os import PathLike


class InputError(Exception):
    """Bad user input (file, metadata or argument). ``str(err)`` is the one line shown to the user."""

    def __init__(self, source: str | PathLike | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class OutputError(InputError):
    """A file could not be written (full disk, permissions); nothing already written was changed."""
