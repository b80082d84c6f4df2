"""The edge's log lines: text (the default) or JSON, one object a line (EDGE_LOG_FORMAT=json).

    configure(level, log_format)   the root handler, once, by the entry point (uvicorn's loggers go through it)
    answers_log                    the logger of the service's answers (`edge_container.service.log_answers`)

A JSON line carries `time` (UTC), `level`, `logger`, `pid`, `message`, and every field the call passed in
`extra` (`request_id`, `model_version`, `source`, `reason`, ...), so a log store searches it by field; an
exception comes as one `exception` string. An escalation's `request_id` is sent to the cloud (X-Request-Id
and the body's `request_id`) and logged there as `edge_request_id`: one id finds it in both tiers' logs.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every record has: anything else on a record came from the call's `extra` (uvicorn's color_message
# is a copy of the message with terminal colours).
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "color_message", "taskName"}
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")  # uvicorn.access's record args

answers_log = logging.getLogger("edge_container.answers")


class JsonFormatter(logging.Formatter):
    """One JSON object a line (ASCII: a text's own line separators cannot split a record)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "pid": record.process,
            "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            line.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str, log_format: LogFormat) -> None:
    """The root logger's handler (stderr), unless the embedding program configured one already."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def uvicorn_log_config(log_format: LogFormat) -> dict[str, Any] | None:
    """uvicorn's `log_config`: its own (text) configuration, or None in JSON so that its loggers have no
    handler of their own and reach the root's JSON handler."""
    if log_format == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
