"""Faults injected into Ray's worker processes through segray's epoch hooks
(`segray.train.hooks`), for the tests that make Ray Train or Tune retry a run or a trial.

`fail_once_runtime_env` is the runtime environment of a local Ray whose every worker process
runs `install` as it starts (Ray's ``worker_process_setup_hook``): that registers a hook which
makes rank 0 raise once, right after reporting epoch EPOCH, if it can create the file MARKER
(which then holds the run's name, and the retried attempt goes on). Every epoch rank 0 reports
is logged as a line ``RUN EPOCH`` in `epochs_log` (MARKER.epochs), so a test sees which epochs
a retried run trained again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FAIL_ONCE_ENV = "SEGRAY_TEST_FAIL_ONCE"  # EPOCH:MARKER, in the workers' environment
ROOT = Path(__file__).resolve().parents[1]


def fail_once_runtime_env(epoch: int, marker: Path) -> dict[str, Any]:
    """The job runtime environment that arms the fault in every worker (`install`)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        "worker_process_setup_hook": f"{__name__}.install",
        "env_vars": {FAIL_ONCE_ENV: f"{epoch}:{marker}", "PYTHONPATH": path},
    }


def epochs_log(marker: Path) -> Path:
    """The file that lists, one ``RUN EPOCH`` line each, the epochs rank 0 reported."""
    return Path(f"{marker}.epochs")


def install() -> None:
    """Runs in each Ray worker process as it starts: register the fault hook."""
    from segray.train.hooks import register_epoch_hook

    spec = os.environ.get(FAIL_ONCE_ENV)
    if spec:
        at, _, marker = spec.partition(":")
        register_epoch_hook(FailOnce(int(at), marker))


class FailOnce:
    """Rank 0 logs each epoch (`epochs_log`) and raises once after epoch ``at``: the first
    worker to create ``marker`` does."""

    def __init__(self, at: int, marker: str) -> None:
        self.at, self.marker = at, marker

    def __call__(self, epoch: int, context: Any) -> None:
        if context.rank != 0:
            return
        with epochs_log(Path(self.marker)).open("a") as log:
            log.write(f"{context.run_name} {epoch}\n")
        if epoch != self.at:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, context.run_name.encode())
        os.close(fd)
        raise RuntimeError(f"{FAIL_ONCE_ENV}: injected failure after epoch {epoch}")
