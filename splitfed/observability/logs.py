"""Structured logs: one JSON object per line, for collectors (``splitfed --log-json ...``)."""

from __future__ import annotations

import json
import logging
import time


class JsonFormatter(logging.Formatter):
    """time, level, logger, message (and the exception, if any) as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
