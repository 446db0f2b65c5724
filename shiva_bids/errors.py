"""Exit codes and the exceptions that carry them.

The codes follow the BIDS App execution specification (reference/BIDS_APPS.md §1.2). Every
expected failure is raised as a :class:`ShivaError` whose message is one line naming the file
(or option) and the problem; the CLI prints that line and exits with the error's code.
"""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes (documented in the README and `shiva-bids --help`)."""

    OK = 0
    FAILURE = 1  # unspecified failure, e.g. one or more participants crashed
    INVALID_BIDS = 16  # the input failed BIDS validation
    UNKNOWN_LEVEL = 17  # analysis level is not participant/group
    NOTHING_SELECTED = 18  # labels or filters selected no files
    USAGE = 64  # command-line usage error
    BAD_INPUT = 65  # input data are unusable (corrupt, 4D, constant image...)
    NO_INPUT = 66  # input missing or unreadable
    CANNOT_CREATE_OUTPUT = 73  # output (or work) folder cannot be written
    TEMPORARY = 75  # temporary failure: retrying may succeed (e.g. GPU out of memory)


class ShivaError(Exception):
    """An expected failure: a one-line message and the exit code it maps to."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, exit_code: ExitCode | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(ShivaError):
    exit_code = ExitCode.USAGE


class InvalidBIDSError(ShivaError):
    exit_code = ExitCode.INVALID_BIDS


class UnknownLevelError(ShivaError):
    exit_code = ExitCode.UNKNOWN_LEVEL


class NothingSelectedError(ShivaError):
    exit_code = ExitCode.NOTHING_SELECTED


class BadInputError(ShivaError):
    exit_code = ExitCode.BAD_INPUT


class MissingInputError(ShivaError):
    exit_code = ExitCode.NO_INPUT


class OutputError(ShivaError):
    exit_code = ExitCode.CANNOT_CREATE_OUTPUT


class TemporaryError(ShivaError):
    exit_code = ExitCode.TEMPORARY
