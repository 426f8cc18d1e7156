"""Logging for the command line: ``-v`` / ``-vv`` configure only pipestate's own loggers.

Libraries we use (``transitions``, ``google``, ``urllib3`` …) keep their own configuration, so
``-v`` shows what pipestate does, not their chatter. Records carry structured context in
``extra`` (``run_id``, ``tenant_id``, ``attempt``, ``action`` …); the formatter appends whatever
context a record has as ``key=value`` pairs.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, TextIO

ROOT_LOGGER: Final = "pipestate"
CONTEXT_KEYS: Final = (
    "action",
    "tenant_id",
    "config_id",
    "run_id",
    "queue_id",
    "attempt",
    "worker_id",
    "error_type",
    "duration_seconds",
)
"""The ``extra`` keys a record may carry, in the order they are printed."""


class ContextFormatter(logging.Formatter):
    """``time name level message key=value …`` with the record's known context keys."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [f"{key}={getattr(record, key)}" for key in CONTEXT_KEYS if hasattr(record, key)]
        return f"{line} {' '.join(context)}" if context else line


class _StandardError(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (it may be replaced)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure(verbosity: int, stream: TextIO | None = None) -> logging.Logger:
    """Send pipestate's records to ``stream`` (default: the current ``sys.stderr``): warnings by
    default, INFO with ``-v``, DEBUG with ``-vv``. Idempotent: a second call replaces the handler it
    added before. Propagation is left alone, so a host's own logging set-up still sees them."""
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_pipestate_cli", False):
            logger.removeHandler(handler)
    added: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StandardError()
    added.setFormatter(ContextFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    added._pipestate_cli = True  # type: ignore[attr-defined]
    logger.addHandler(added)
    level = logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity == 1 else logging.WARNING
    added.setLevel(level)
    if verbosity > 0:  # without -v the logger keeps its level (a host's set-up stays in charge)
        logger.setLevel(level)
    return logger
