"""Logging setup (called only from `__main__` modules), and client text made safe to log.

Requests carry text a client chose: model names, versions, ids, metadata. Written into a
log as is, a newline forges a second record, an ANSI escape rewrites the operator's
terminal, and a 4 MiB name writes megabytes for one call. `printable` cuts such text to a
bound and escapes control characters; the call log (`serving.rpc.call_log`) applies it to
every client field, and both formatters bound and (text) escape whole messages as a last guard
for any other log line that quotes a client.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
import time

__all__ = [
    "FIELD_LIMIT",
    "MESSAGE_LIMIT",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "printable",
    "shorten",
]

_CHATTY = ("absl", "tensorflow", "h5py", "matplotlib")

# Characters a client field may keep in a log record: one model name or id is short.
FIELD_LIMIT = 256
# A whole message (our words and the fields it quotes).
MESSAGE_LIMIT = 4096

# C0 controls, DEL, C1 controls (NEL among them) and the Unicode line/paragraph separators:
# everything a terminal or a log viewer may take as a line break or an escape sequence.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


# Room for the marker: text already shortened to a limit is not cut again (a detail the
# gateway passes through keeps the service's marker).
_MARKER_ROOM = 32


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a marker saying how many were left out (text
    at most a marker's length over the limit is left as is)."""
    if len(text) <= limit + _MARKER_ROOM:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


def printable(value: object, limit: int = FIELD_LIMIT) -> str:
    """Client-supplied text made safe for one log line: cut to `limit` characters (before
    anything else, so a huge value costs no more than a short one), control characters
    escaped as `\\n`, `\\x1b`, ..."""
    text = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(_escape, shorten(text, limit))


class TextFormatter(logging.Formatter):
    """The default format; a record's message is escaped and bounded, so one record is one
    line whatever it quotes. A traceback keeps its lines (it follows the message)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        safe = copy.copy(record)
        safe.message = printable(record.message, MESSAGE_LIMIT)
        return super().formatMessage(safe)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (JSON escapes control characters); extra fields passed with
    `extra=` are kept. The message and every string field are bounded."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": shorten(record.getMessage(), MESSAGE_LIMIT),
        }
        payload.update(
            {
                k: shorten(v, MESSAGE_LIMIT) if isinstance(v, str) else v
                for k, v in vars(record).items()
                if k not in self._STANDARD
            }
        )
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Frameworks log routine progress at INFO (and TensorFlow adds a handler of its own,
    # printing each line twice); keep their warnings, drop the chatter.
    for name in _CHATTY:
        framework_logger = logging.getLogger(name)
        framework_logger.handlers.clear()
        framework_logger.propagate = True
        framework_logger.setLevel(max(logging.WARNING, root.level))
