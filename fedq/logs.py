"""fedq's messages: every module logs to its own named logger (``fedq.fl.rounds``), all under ``fedq``.

A command (``fedq.simulate``, ``fedq.train``, ...) and the Flower apps call
:func:`configure` once: the ``fedq`` logger then writes plain lines, progress and
notes to standard output, ``warning: ...`` likewise, and ``error: ...`` to
standard error, to whatever ``sys.stdout``/``sys.stderr`` are when the line is
written (so a redirected or captured stream gets it). It does not pass its lines
on to the root logger, which Hydra and Flower configure for their own messages.
Used as a library without :func:`configure`, fedq's lines go to the root logger
like any library's.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

ROOT = "fedq"
_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


class ConsoleHandler(logging.StreamHandler):
    """Lines to the current stdout, errors to the current stderr, each prefixed by its level when above INFO."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._record_level >= logging.ERROR else sys.stdout

    @stream.setter
    def stream(self, _: TextIO) -> None:
        """StreamHandler sets a stream of its own; this handler always writes to the current ones."""

    _record_level = logging.INFO

    def format(self, record: logging.LogRecord) -> str:
        return _PREFIX.get(record.levelno, "") + super().format(record)

    def emit(self, record: logging.LogRecord) -> None:
        self._record_level = record.levelno
        super().emit(record)


def configure(level: int = logging.INFO) -> None:
    """Send fedq's lines to the console (once per process, however often it is called)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(handler, ConsoleHandler) for handler in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(level)
    logger.propagate = False
