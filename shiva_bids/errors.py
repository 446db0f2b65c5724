"""Exit codes, the exceptions that carry them, and the rule that gives a run its code.

The codes follow the BIDS App execution specification (reference/BIDS_APPS.md §1.2). Every
expected failure is raised as a :class:`ShivaError` whose message is one line naming the file
(or option) and the problem; the CLI prints that line and exits with the error's code.

When units (participants/sessions) fail one by one, each failure keeps its class
(:func:`exit_class`) and the run's code is :func:`combined_exit_code` of them: the shared class
when every unit that did not complete stopped for the same kind of reason, else 1 (README,
docs/usage.md "Exit codes").
"""
from __future__ import annotations

import enum
import errno
from typing import Iterable


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


# OSError numbers that mean "the output cannot be written": disk full, quota, read-only.
DISK_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def exit_class(exc: BaseException) -> ExitCode:
    """The exit code an exception stands for: a ShivaError's own code; 73 for a full,
    read-only or over-quota disk; 1 (an internal error) for anything else."""
    if isinstance(exc, ShivaError):
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return ExitCode.CANNOT_CREATE_OUTPUT
    return ExitCode.FAILURE


def combined_exit_code(codes: Iterable[int]) -> ExitCode:
    """The code of a run from the codes of its units that did not complete (0 entries ignored).

    0 when there are none; their shared code when they all agree (e.g. every failed unit had a
    corrupt image: 65; every one lacked its T1w or could not be read: 66; the disk was full:
    73); 1 for a mix of causes, or when any of them is 1 (an internal error).
    """
    distinct = {ExitCode(code) for code in codes} - {ExitCode.OK}
    if len(distinct) == 1:
        return distinct.pop()
    return ExitCode.FAILURE if distinct else ExitCode.OK
