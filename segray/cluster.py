"""The seam between local mode and a cluster: one place decides which Ray to talk to.

* ``RAY_ADDRESS`` set (``ray job submit`` sets it inside a job), or an explicit address: join it.
* Otherwise: start a private single-node Ray sized to this machine (``address="local"``, so a
  cluster that ``ray start`` recorded on the machine is never joined by accident).

The same code runs either way; nothing else in segray calls ``ray.init``.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import ray

__all__ = ["ResourceError", "check_fits", "ensure_ray", "local_ray_lock"]

log = logging.getLogger(__name__)


@contextmanager
def local_ray_lock(wait_message: str | None = None) -> Iterator[None]:
    """Hold the machine-wide lock that serialises local Ray instances.

    Two local Rays on one machine break Ray Train ("Found multiple active Ray instances"), so
    the tests and benchmarks that start one take this lock first (``$SEGRAY_RAY_LOCK``,
    default ``/tmp/segray-ray-tests.lock``); a second taker waits, printing ``wait_message``.
    """
    path = Path(os.environ.get("SEGRAY_RAY_LOCK", "/tmp/segray-ray-tests.lock"))
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait_message:
                print(f"{wait_message} (lock {path})", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ResourceError(RuntimeError):
    """A request that this cluster can never satisfy (instead of waiting forever for it)."""


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> str:
    """Connect to (or start) Ray once per process; returns a short description of it."""
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        # Ray's own env-var hook (RAY_ADDRESS) takes precedence, so pass the address explicitly.
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=True,  # Train V2 polls the State API
                log_to_driver=True,
            )
    res = ray.cluster_resources()
    where = "cluster" if (address or os.environ.get("RAY_ADDRESS")) else "local Ray"
    return f"{where}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, {len(ray.nodes())} node(s)"


def check_fits(bundle: Mapping[str, float], count: int, what: str) -> None:
    """Fail at once if ``count`` x ``bundle`` exceeds the whole cluster (no autoscaler here)."""
    total = ray.cluster_resources()
    per_node = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, amount in bundle.items():
        if amount <= 0:
            continue
        need, have = amount * count, total.get(key, 0.0)
        if need > have + 1e-9:
            raise ResourceError(
                f"{what} needs {need:g} {key} ({count} x {amount:g}) but the cluster has {have:g}: "
                f"lower the worker count or the {key} per worker"
            )
        if per_node and not any(n.get(key, 0.0) + 1e-9 >= amount for n in per_node):
            raise ResourceError(
                f"{what} needs {amount:g} {key} per worker but no node has that many"
            )
