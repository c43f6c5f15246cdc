"""What a running server is doing, in ``status.json`` beside its outputs (``splitfed status`` reads it)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def write_status(directory: str | Path, status: dict[str, Any]) -> Path:
    """Replace ``directory/status.json`` atomically with ``status`` (plus the time it was written)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATUS_FILE
    staging = directory / f".{STATUS_FILE}.{os.getpid()}.tmp"
    staging.write_text(json.dumps({**status, "updated": time.time()}, indent=1))
    staging.replace(path)
    return path


def read_status(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATUS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {STATUS_FILE} in {directory}: is a server running with output there?")
    return json.loads(path.read_text())
