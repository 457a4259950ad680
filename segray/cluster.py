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
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import ray

from segray.errors import UserError

__all__ = [
    "HEAP_REUSE_ENV",
    "ResourceError",
    "RunInterrupted",
    "UnreachableClusterError",
    "autoscaling_limits",
    "check_cuda",
    "check_fits",
    "ensure_ray",
    "heap_env",
    "interruptible",
    "local_ray_lock",
    "map_remote",
    "max_resources",
    "onednn_cache_env",
    "run_remote",
    "start_local",
    "total_resources",
    "train_report_logger",
    "worker_soft_limit",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# glibc malloc settings for CPU-heavy Ray workers (``train.heap_reuse``, ``segment.heap_reuse``):
# never mmap large blocks, keep up to 256 MiB of freed heap, grow it 64 MiB at a time. Without
# them every allocation above 32 MiB (a full-resolution activation) is a fresh mmap, zeroed
# page by page on every step: ~100k page faults/s, which costs more in Ray's many-threaded
# worker processes than in a plain one (measured: 7-8% of a CPU epoch, ~10% of a CPU actor's
# inference time).
HEAP_REUSE_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
    "MALLOC_TOP_PAD_": str(64 << 20),
}


def heap_env(enabled: bool) -> dict[str, str]:
    """The worker environment variables for a ``heap_reuse`` setting (a Ray ``env_vars``)."""
    return dict(HEAP_REUSE_ENV) if enabled else {}


# oneDNN (torch's CPU convolutions) JIT-compiles a kernel, with its scratch buffers, for every
# new input shape and caches up to 1024 of them (ideep keeps a second cache of the same
# size). Mixed image sizes and the tiles at image edges give an inference actor new shapes
# for as long as it lives, so its memory climbed with them. Measured on the segment
# benchmark's image mix, in a plain-process replica of the actor: peak anonymous memory
# 928 -> 1379 MB over 4,000 images with the caches, 707 -> 752 MB (flat after ~1,000)
# without, at the same images/s, also on same-size images. Read when a process starts: set
# through the actors' ``runtime_env``.
def onednn_cache_env(capacity: int | None) -> dict[str, str]:
    """Environment variables bounding oneDNN's per-shape caches (``segment.onednn_cache``);
    ``None`` keeps oneDNN's defaults."""
    if capacity is None:
        return {}
    return {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(capacity),
        "LRU_CACHE_CAPACITY": str(max(1, capacity)),  # ideep's; 0 is not a valid size there
    }


@contextmanager
def local_ray_lock(wait_message: str | None = None) -> Iterator[None]:
    """Hold the machine-wide lock that serialises local Ray instances.

    Two local Rays on one machine break Ray Train ("Found multiple active Ray instances"), so
    the tests and benchmarks that start one take this lock first (``$SEGRAY_RAY_LOCK``,
    default ``/tmp/segray-ray-tests.lock``); a second taker waits, printing ``wait_message``.
    A process whose ancestor holds the lock (``flock LOCK pytest ...``) goes on under it
    instead of waiting for itself.
    """
    path = Path(os.environ.get("SEGRAY_RAY_LOCK", "/tmp/segray-ray-tests.lock"))
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if _lock_held_by_ancestor(path):
                yield
                return
            if wait_message:
                print(f"{wait_message} (lock {path})", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lock_held_by_ancestor(path: Path) -> bool:
    """Whether the flock on ``path`` is held by this process's parent, grandparent, ...
    (Linux: /proc/locks names the holder; elsewhere False, and the taker waits)."""
    try:
        inode = path.stat().st_ino
        holders = {
            int(f[4])
            for f in (line.split() for line in Path("/proc/locks").read_text().splitlines())
            if len(f) > 5 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(inode)
        }
        pid = os.getppid()
        while pid > 1:
            if pid in holders:
                return True
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return False
    return False


def worker_soft_limit(num_cpus: int) -> int:
    """Ray's ``num_workers_soft_limit`` for a local Ray of ``num_cpus`` CPUs.

    Ray's default is the CPU count, and live actors count against it. On a small machine
    whose CPUs are held by long-lived actors (``segray segment``'s inference pool), every idle
    task worker is then killed after 1 s, and each short read/decode/write task starts (and
    imports into) a new Python process: measured on 2 CPUs, 10% of the machine and 11% of
    ``segray segment``'s throughput. Room for 16 actors above the default keeps task workers
    alive between tasks; how many idle ones exist stays bounded by how many tasks ran at once.
    """
    return num_cpus + 16


class ResourceError(UserError, RuntimeError):
    """A request that this cluster can never satisfy (instead of waiting forever for it)."""


class UnreachableClusterError(ResourceError):
    """``--address`` names no Ray cluster that answers."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) before it finished; the message says how to continue
    it. A KeyboardInterrupt, so no ``except Exception`` on the way up swallows it."""


@contextmanager
def interruptible(what: str, how: str) -> Iterator[None]:
    """A Ctrl-C inside becomes a `RunInterrupted` that names ``what`` stopped and the command
    ``how`` that continues it (one raised further in, with its own message, passes as is)."""
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"{what} stopped before it finished; nothing was published; continue it with: {how}"
        ) from None


# Ray Train gives a worker group 60 s to start. On a small machine that is busy (2 cores
# importing torch in fresh worker processes while other jobs run) that is too short: the
# attempt fails, and its successor can then wait forever on the CPUs the failed one still
# holds. Local mode gives it 10 minutes; a cluster sets it in its nodes' environment.
_WORKER_GROUP_START_TIMEOUT = ("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")


def start_local(num_cpus: int, *, runtime_env: Mapping[str, Any] | None = None) -> None:
    """Start this process's private single-node Ray (local mode; the tests' Ray too).
    ``runtime_env``: the job's, which every worker process inherits (tests register their
    hooks in the workers through it)."""
    os.environ.setdefault(*_WORKER_GROUP_START_TIMEOUT)  # inherited by Ray's processes
    ray.init(
        address="local",  # never a cluster that `ray start` recorded on this machine
        num_cpus=num_cpus,
        include_dashboard=True,  # Train V2 polls the State API
        log_to_driver=True,
        runtime_env=dict(runtime_env) if runtime_env else None,
        _system_config={"num_workers_soft_limit": worker_soft_limit(num_cpus)},
    )


PROBE_TIMEOUT_S = 10.0  # how long a cluster address may take to accept a TCP connection


def probe_address(
    address: str, timeout: float = PROBE_TIMEOUT_S, *, setting: str = "--address"
) -> None:
    """Refuse at once an address where nothing listens. Ray's own connect retries the GCS
    for minutes, printing only its own warnings; a TCP connect to the address's port answers
    within ``timeout``. ``auto`` and ``local`` are Ray's to resolve and are not probed."""
    if address in ("auto", "local"):
        return
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():  # no port: Ray's default GCS (or client) port
        host, port = rest, "10001" if address.startswith("ray://") else "6379"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise UnreachableClusterError(
            f"{setting} {address}: no Ray cluster answers at {host}:{port} ({why}): check the "
            "address (a head node's GCS port, 6379 by default), or leave --address and "
            "RAY_ADDRESS unset for a local Ray"
        ) from None


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> str:
    """Connect to (or start) Ray once per process; returns a short description of it."""
    if not ray.is_initialized():
        setting = "--address" if address else "RAY_ADDRESS"
        address = address or os.environ.get("RAY_ADDRESS")
        # Ray's own env-var hook (RAY_ADDRESS) takes precedence, so pass the address explicitly.
        if address:
            probe_address(address, setting=setting)
            ray.init(address=address, log_to_driver=True)
        else:
            start_local(num_cpus or os.cpu_count() or 1)
    res = total_resources()
    where = "cluster" if (address or os.environ.get("RAY_ADDRESS")) else "local Ray"
    return f"{where}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, {len(ray.nodes())} node(s)"


def total_resources() -> dict[str, float]:
    """The resources of the connected cluster now (its live nodes, summed)."""
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def max_resources() -> dict[str, float]:
    """The largest resources the connected cluster has: on an autoscaling cluster, the size
    its configuration allows (nodes not started yet count), else what it has now."""
    limits = autoscaling_limits()
    return limits[0] if limits is not None else total_resources()


# --------------------------------------------------------------------------- private Ray APIs
# Each private Ray name segray uses is read in exactly one function below;
# tests/test_cluster_private_api.py imports the same names, so a Ray that moves one fails there.
def autoscaling_limits() -> tuple[dict[str, float], list[dict[str, float]]] | None:
    """``(the largest total resources, the node shapes)`` of a cluster whose autoscaler
    published its configuration (KubeRay with ``enableInTreeAutoscaling``, ``ray up``), else
    None. Read from the GCS as Ray Train itself reads it (``ray._private.state``)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is None or not config.node_group_configs:
            return None
        total = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - an older or newer Ray without it: a static cluster
        return None
    shapes = [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]
    return {k: float(v) for k, v in total.items()}, shapes


def train_report_logger() -> logging.Logger | None:
    """The logger Ray Train logs every ``ray.train.report`` to (at INFO, on every worker), or
    None on a Ray without it. It is named after its private module's file
    (``ray.train.v2._internal.execution.context``), not after the module."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout
        return None
    return logging.getLogger(context.__file__)


# --------------------------------------------------------------------------- remote calls
def map_remote(
    fn: Callable[..., T],
    calls: Iterable[tuple[Any, ...]],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int | None = None,
) -> list[T]:
    """``fn(*args)`` for every ``args`` of ``calls``, each a Ray task holding ``num_cpus``
    and ``num_gpus``, all at once as the cluster allows; the results in order. A task that
    fails raises here; ``max_retries`` None keeps Ray's default."""
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if max_retries is not None:
        options["max_retries"] = max_retries
    task = ray.remote(fn).options(**options)
    return ray.get([task.remote(*args) for args in calls])


def run_remote(
    fn: Callable[..., T],
    *args: Any,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int | None = None,
) -> T:
    """``fn(*args)`` as one Ray task holding ``num_cpus`` and ``num_gpus`` (`map_remote`)."""
    return map_remote(fn, [args], num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)[0]


def check_fits(bundle: Mapping[str, float], count: int, what: str) -> None:
    """Fail at once if ``count`` x ``bundle`` can never run: more than the whole cluster has,
    or a bundle no node can hold. On an autoscaling cluster the check is against the largest
    size its configuration allows (nodes not started yet count), and says so."""
    limits = autoscaling_limits()
    if limits is not None:
        total, per_node = limits
        print(
            f"{what}: autoscaling cluster, checked against its largest size "
            f"({', '.join(f'{v:g} {k}' for k, v in sorted(total.items()) if k in bundle)}): "
            "nodes may start before it runs",
            flush=True,
        )
        scope = "the cluster can grow to"
    else:
        total = total_resources()
        per_node = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        scope = "the cluster has"
    for key, amount in bundle.items():
        if amount <= 0:
            continue
        need, have = amount * count, total.get(key, 0.0)
        if need > have + 1e-9:
            raise ResourceError(
                f"{what} needs {need:g} {key} ({count} x {amount:g}) but {scope} {have:g}: "
                f"lower the worker count or the {key} per worker"
            )
        if per_node and not any(n.get(key, 0.0) + 1e-9 >= amount for n in per_node):
            raise ResourceError(
                f"{what} needs {amount:g} {key} per worker but no node has that many"
            )


def check_cuda(gpus: float, message: str) -> None:
    """Refuse, before any work, GPUs that torch cannot use where they are: a node that
    advertises a GPU resource but runs a CPU-only torch or has no CUDA driver would otherwise
    run the work on its CPUs, silently and slowly. Runs one tiny task on a GPU node (call it
    after `check_fits`, which refuses a cluster without any GPU); ``message`` is the error."""
    if not run_remote(_cuda_available, num_cpus=0, num_gpus=gpus):
        raise ResourceError(message)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
