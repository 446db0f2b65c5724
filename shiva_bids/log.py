"""Logging set-up: `-v` levels on the console, one log file per participant/session."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from shiva_bids.errors import OutputError

LOGGER_NAME = "shiva_bids"
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


PROGRESS_LOGGER = f"{LOGGER_NAME}.progress"
_SHOW_NATIVE_OUTPUT = False  # -vv: native libraries write to the console as they please


class _ConsoleFilter(logging.Filter):
    """Records at the chosen level and up, plus progress lines at every verbosity."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.name == PROGRESS_LOGGER


def setup_logging(verbosity: int) -> logging.Logger:
    """Console logging: progress and warnings by default, info with -v, debug with -vv
    (which also shows native libraries' start-up lines, see :func:`native_output_to_log`)."""
    global _SHOW_NATIVE_OUTPUT
    _SHOW_NATIVE_OUTPUT = verbosity >= 2
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 \
        else logging.DEBUG
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        if getattr(handler, "_shiva_console", False):
            logger.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG)
    console.addFilter(_ConsoleFilter(level))
    console.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    console._shiva_console = True  # type: ignore[attr-defined]
    logger.addHandler(console)
    return logger


class _FileHandler(logging.FileHandler):
    """A log file that, when it can no longer be written (disk full), says so once per file
    on the console instead of printing a traceback for every record."""

    failed: set[str] = set()  # files already reported, for the whole process

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API
        if self.baseFilename not in self.failed:
            self.failed.add(self.baseFilename)
            error = sys.exc_info()[1]
            sys.stderr.write(f"shiva-bids: warning: cannot write the log file "
                             f"{self.baseFilename} ({getattr(error, 'strerror', error)})\n")

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last lines cannot be flushed (disk full)
            self.handleError(None)  # type: ignore[arg-type]


def add_file_log(path: Path) -> logging.Handler:
    """Also log everything (debug and up) to `path`; remove the handler when the unit ends.

    Raises OutputError (73) when the log file cannot be created."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the log file ({exc.strerror or exc})") from exc
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logging.getLogger(LOGGER_NAME).addHandler(handler)
    return handler


def remove_file_log(handler: logging.Handler) -> None:
    logging.getLogger(LOGGER_NAME).removeHandler(handler)
    handler.close()


@contextlib.contextmanager
def unit_log(config, unit_id: str) -> Iterator[Path]:
    """Log to `logs/<unit>.log` (appending) while a unit's stage runs; in a worker process
    also set up the console as the main process did."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_shiva_console", False) for h in logger.handlers):
        setup_logging(config.verbosity)
    path = config.logs_dir / f"{unit_id}.log"
    handler = add_file_log(path)
    try:
        yield path
    finally:
        remove_file_log(handler)


@contextlib.contextmanager
def native_output_to_log(what: str) -> Iterator[None]:
    """Send what native code writes to the process's stderr (file descriptor 2) inside the
    block to the debug log instead of the console, unless -vv.

    For TensorFlow's start-up lines (oneDNN notes, "failed call to cuInit" on a machine
    without a GPU, which is normal here): they are written by C++ code that reads
    TF_CPP_MIN_LOG_LEVEL from the environment the process started with, so setting that
    variable from Python has no effect.
    """
    if _SHOW_NATIVE_OUTPUT:
        yield
        return
    try:
        sink = tempfile.TemporaryFile()
    except OSError:  # no temporary folder: leave the console alone
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sink.seek(0)
        for line in sink.read().decode("utf-8", "replace").splitlines():
            logging.getLogger(LOGGER_NAME).debug("%s: %s", what, line)
        sink.close()
