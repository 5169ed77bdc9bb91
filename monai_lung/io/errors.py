"""One exception type for bad input, so the CLI can print a one-line message naming the file."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data. ``str(err)`` is ``"<path>: <problem>"``, one line."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(problem).split())  # keep it on one line
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)
