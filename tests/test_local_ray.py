"""segray's local Ray: short tasks keep their worker processes while actors fill the node."""

from __future__ import annotations

import os
import time

import pytest

from segray.cluster import worker_soft_limit

pytestmark = pytest.mark.integration

# Ray kills an idle task worker after idle_worker_killing_time_threshold_ms (1 s by default,
# checked every 200 ms) once the node's live workers exceed num_workers_soft_limit.
IDLE_KILL_S = 1.0


def test_soft_limit_leaves_room_above_the_cpu_count():
    assert worker_soft_limit(2) >= 2 + 8
    assert worker_soft_limit(64) >= 64


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_idle_task_worker_survives_next_to_long_lived_actors(ray_local):
    """The segment pipeline's situation on a laptop: actors holding most of the CPUs (the
    inference pool) and light tasks in between. Under Ray's default soft limit each idle task
    worker is killed (checked: this test fails with it), and every task starts a new process."""
    import ray

    @ray.remote(num_cpus=0.875)
    class Resident:
        def pid(self) -> int:
            return os.getpid()

    @ray.remote(num_cpus=0.25)
    def light() -> int:
        return os.getpid()

    actors = [Resident.remote() for _ in range(2)]  # like segment's pool: 1.75 of 2 CPUs
    ray.get([a.pid.remote() for a in actors])
    pid = ray.get(light.remote())
    # Idle for three times the kill threshold: long enough to be reaped without the limit.
    time.sleep(3 * IDLE_KILL_S)
    assert _alive(pid), "Ray killed the idle task worker: every short task starts a new process"
    for a in actors:
        ray.kill(a)


def test_the_ray_lock_is_taken_over_from_an_ancestor_that_holds_it(tmp_path):
    """`flock LOCK pytest ...` must not deadlock: the tests' fixtures, in a child of the
    holder, go on under its lock; an unrelated taker still waits."""
    import subprocess
    import sys

    lock = tmp_path / "ray.lock"
    take = (
        "from segray.cluster import local_ray_lock\n"
        "with local_ray_lock():\n"
        "    print('entered', flush=True)\n"
    )
    env = {**os.environ, "SEGRAY_RAY_LOCK": str(lock)}
    child = subprocess.run(
        ["flock", str(lock), sys.executable, "-c", take],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0 and child.stdout == "entered\n", child.stderr
    # Held by a process that is not an ancestor: the taker waits (here: gives up at once).
    with subprocess.Popen(["flock", str(lock), "sleep", "600"]) as holder:
        try:
            probe = (
                "import fcntl, os\n"
                "from pathlib import Path\n"
                "from segray.cluster import _lock_held_by_ancestor\n"
                f"f = open({str(lock)!r})\n"
                "try:\n"
                "    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
                "except BlockingIOError:\n"
                f"    print('ancestor' if _lock_held_by_ancestor(Path({str(lock)!r})) else 'other')\n"
            )
            for _ in range(600):  # until the holder has the lock (flock takes it at once)
                if str(holder.pid) in open("/proc/locks").read():
                    break
                time.sleep(0.05)
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
            assert out.stdout.strip() == "other", out.stderr
        finally:
            holder.kill()
