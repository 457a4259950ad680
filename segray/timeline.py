"""Where a run's time goes: named moments of a trial's life, for `benchmarks/search_overhead.py`.

    SEGRAY_TIMELINE=/tmp/t.jsonl segray tune ...   # every process appends its moments there

`mark(event, run=...)` appends one JSON line (``t``, ``event``, ``run``, ``pid`` and any
fields) to the file named by ``SEGRAY_TIMELINE``, and does nothing when it is unset, so the
moments cost nothing in normal runs. Ray's worker processes inherit the variable from the
process that started Ray. Lines are short single writes in append mode, so processes on one
machine never interleave within a line.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["ENV", "mark", "process_started"]

ENV = "SEGRAY_TIMELINE"


def mark(event: str, **fields: Any) -> None:
    """Record that ``event`` happens now (no-op unless ``SEGRAY_TIMELINE`` names a file)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"t": time.time(), "event": event, "pid": os.getpid(), **fields}) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


def process_started() -> float | None:
    """When this process started (seconds since the epoch), from Linux's ``/proc``; None
    elsewhere."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])  # seconds since boot, to 10 ms
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
