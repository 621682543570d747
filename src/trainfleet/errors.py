"""Errors a user can act on. Each carries its evidence as values; the CLI alone turns
one into a single line and an exit code."""

from __future__ import annotations


class TrainfleetError(Exception):
    """A failure with a message meant for the user, and the exit code to leave with."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        if self.fix:
            text += f"; fix: {' '.join(self.fix.split())}"
        return text


class SpecError(TrainfleetError):
    """The fleet file (or an imported hostfile / ssh config) is wrong."""

    exit_code = 2


class UsageError(TrainfleetError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = 2


class SandboxError(TrainfleetError):
    """The sandbox cluster could not be created, inspected or removed."""
