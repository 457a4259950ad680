"""What every benchmark script shares: the machine-wide Ray lock and writing its report."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segray.cluster import local_ray_lock


@contextmanager
def ray_lock() -> Iterator[None]:
    """One local Ray per machine: wait for any test or benchmark that holds one."""
    with local_ray_lock("waiting for another local Ray (a test or benchmark) to finish"):
        yield


def publish(
    report: dict, table: str, output: Path, default: Callable[[Any], Any] | None = None
) -> None:
    """Print the table and write the report as JSON."""
    print(table)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=default) + "\n")
    print(f"wrote {output}")
