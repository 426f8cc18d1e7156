"""One validation layer for every input that reaches a store, the same on every backend.

SQLite, PostgreSQL and BigQuery disagree on the edges (PostgreSQL cannot store a NUL character,
SQLite stores NaN as NULL, BigQuery's INT64 ends at 2**63 - 1, ``datetime`` overflows in year
9999), so the domain refuses those inputs before anything is written, with a typed
:mod:`pipestate.domain.errors` exception. The bounds:

* **ids** (tenant, config, run, queue, worker, schedule, error type names): a non-empty string of
  at most :data:`MAX_ID_LENGTH` characters without control characters (NUL, newline, ...).
* **configs**: a mapping with string keys holding JSON values only (``None``, ``bool``, ``int``
  within signed 64 bits, finite ``float``, ``str`` without NUL, lists and mappings), nested at most
  :data:`MAX_CONFIG_DEPTH` deep and at most :data:`MAX_CONFIG_BYTES` bytes as JSON.
* **durations** (retry delays, leases, heartbeats, polls): finite numbers of seconds in
  ``(0, MAX_DURATION_SECONDS]`` (zero where a bound says so), so ``now + delay`` is always a
  representable instant.
* **free text written by the system** (an exception's message, a cancel reason): never refused;
  :func:`clean_text` makes it storable everywhere (NUL and other control characters escaped,
  lone surrogates escaped, at most :data:`MAX_TEXT_LENGTH` characters).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pipestate.domain.errors import InvalidArgument, InvalidIdentifier

MAX_ID_LENGTH: Final = 255
MAX_CONFIG_DEPTH: Final = 32
MAX_CONFIG_BYTES: Final = 1_000_000
MAX_INT: Final = 2**63 - 1
MIN_INT: Final = -(2**63)
MAX_DURATION_SECONDS: Final = 366 * 24 * 3600
"""One year (and a day): the longest delay, lease or interval pipestate accepts."""
MAX_TEXT_LENGTH: Final = 10_000
MIN_INSTANT: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_INSTANT: Final = datetime(9000, 1, 1, tzinfo=UTC)
"""The latest "now" a tick or recovery pass accepts: far enough from year 9999 that every
schedule slot, lease and retry time after it is representable."""

_CONTROL: Final = frozenset(chr(c) for c in [*range(0x20), 0x7F])
_TEXT_KEPT: Final = frozenset("\n\t")


def has_control_characters(value: str) -> bool:
    return any(ch in _CONTROL for ch in value)


def require_id(field_name: str, value: object) -> str:
    """Return ``value`` if it is a valid id.

    Raises:
        InvalidIdentifier: not a string, empty or blank, longer than :data:`MAX_ID_LENGTH`, or
            holding a control character (NUL included).
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidIdentifier(field_name, value)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifier(field_name, value, f"at most {MAX_ID_LENGTH} characters")
    if has_control_characters(value) or not _encodable(value):
        raise InvalidIdentifier(field_name, value, "no control characters (NUL, newline ...) allowed")
    return value


def optional_id(field_name: str, value: object) -> str | None:
    return None if value is None else require_id(field_name, value)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no backend stores it
        return False
    return True


def require_config(field_name: str, value: object) -> dict[str, Any]:
    """A deep, plain copy of a JSON-object config.

    Raises:
        InvalidArgument: not a mapping; a key that is not a string; a value that is not JSON
            (datetime, set, bytes, an object ...); NaN or infinity; an int outside signed 64
            bits; a string holding NUL; nested deeper than :data:`MAX_CONFIG_DEPTH`; larger
            than :data:`MAX_CONFIG_BYTES` as JSON.
    """
    if not isinstance(value, Mapping):
        raise InvalidArgument(field_name, value, "must be a mapping (a JSON object)")
    copied = _json_value(field_name, value, 1)
    size = len(json.dumps(copied, allow_nan=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_CONFIG_BYTES:
        raise InvalidArgument(field_name, f"<{size} bytes>", f"at most {MAX_CONFIG_BYTES} bytes as JSON")
    result: dict[str, Any] = copied
    return result


def _json_value(field_name: str, value: object, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise InvalidArgument(field_name, "<huge integer>", "integers must fit in signed 64 bits")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(field_name, value, "NaN and infinity are not JSON")
        return float(value)
    if isinstance(value, str):
        if "\x00" in value or not _encodable(value):
            raise InvalidArgument(field_name, value, "strings must not hold NUL or lone surrogates")
        return value
    if depth > MAX_CONFIG_DEPTH:
        raise InvalidArgument(field_name, "<nested>", f"nested deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, Mapping):
        copied: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(field_name, key, "keys must be strings")
            if "\x00" in key or not _encodable(key):
                raise InvalidArgument(field_name, key, "keys must not hold NUL or lone surrogates")
            copied[key] = _json_value(field_name, item, depth + 1)
        return copied
    if isinstance(value, list | tuple):
        return [_json_value(field_name, item, depth + 1) for item in value]
    raise InvalidArgument(
        field_name, type(value).__name__, "values must be JSON (null, bool, number, string, list, object)"
    )


def require_seconds(
    field_name: str, value: object, *, allow_zero: bool = False, maximum: float = MAX_DURATION_SECONDS
) -> float:
    """A finite number of seconds in ``(0, maximum]`` (``[0, maximum]`` with ``allow_zero``).

    Raises:
        InvalidArgument: not a number (bools included), NaN, infinite, negative, zero when not
            allowed, or above ``maximum``.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(field_name, value, "must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise InvalidArgument(field_name, value, "must be finite")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        rule = "must be >= 0 seconds" if allow_zero else "must be > 0 seconds"
        raise InvalidArgument(field_name, value, rule)
    if seconds > maximum:
        raise InvalidArgument(field_name, value, f"must be at most {maximum:g} seconds")
    return seconds


def require_duration(field_name: str, value: object, *, maximum: float = MAX_DURATION_SECONDS) -> timedelta:
    """Like :func:`require_seconds` for a positive ``timedelta`` (or a number of seconds)."""
    return timedelta(seconds=require_seconds(field_name, value, maximum=maximum))


def require_instant(field_name: str, value: datetime) -> datetime:
    """An aware instant between 1970 and year 9000 (``now`` of a tick or a recovery pass).

    Raises:
        InvalidArgument: outside that range.
    """
    if not MIN_INSTANT <= value < MAX_INSTANT:
        raise InvalidArgument(field_name, value.isoformat(), "must be between 1970 and the year 9000")
    return value


def require_int(field_name: str, value: object, *, minimum: int, maximum: int = MAX_INT) -> int:
    """An int (not a bool) in ``[minimum, maximum]``.

    Raises:
        InvalidArgument: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidArgument(field_name, value, f"must be an integer from {minimum} to {maximum}")
    return value


def clean_text(value: object, limit: int = MAX_TEXT_LENGTH) -> str:
    """``str(value)`` made storable on every backend: control characters other than newline and
    tab are escaped (``\\x00``), lone surrogates are escaped, and the text is cut to ``limit``
    characters (with a marker). Never raises for a string."""
    text = value if isinstance(value, str) else str(value)
    if not _encodable(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if any(ch in _CONTROL and ch not in _TEXT_KEPT for ch in text):
        text = "".join(f"\\x{ord(ch):02x}" if ch in _CONTROL and ch not in _TEXT_KEPT else ch for ch in text)
    if len(text) > limit:
        marker = f" ... [{len(text) - limit} more characters]"
        text = text[: max(limit - len(marker), 0)] + marker
    return text
