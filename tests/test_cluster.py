"""segray on a cluster: a real `ray start --head` with `ray job submit`, and a simulated
2-node cluster (`ray.cluster_utils.Cluster`) for multi-node DDP and the loss of a node.

Every cluster here lives on 127.0.0.1 with its own ports and is stopped by its own PIDs
(never `ray stop`, which kills every Ray on the host); the module holds the machine-wide Ray
lock throughout, and each class stops its cluster before the next one starts.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from segray.checkpoint import save_checkpoint
from segray.config import load_config
from segray.models import create_model
from tests.conftest import TINY

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray`, and `python` inside the jobs
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# configs/tune_local.yaml (its search space included), shrunk: 2 trials x 2 epochs of a
# 2-worker DDP model on 16 synthetic 64 px images.
TUNE_JOB = [
    *(o for o in TINY if not o.startswith("model.")),
    "model.decoder_channels=[16,8,8,8]",
    "tune.num_samples=2",
    "data.samples_per_image=1",
]


# --------------------------------------------------------------------------- helpers
def _free_ports(n: int, avoid: range) -> list[int]:
    """``n`` distinct ports the kernel hands out now (its ephemeral range, outside ``avoid``)."""
    ports: set[int] = set()
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            ports.add(port)
    return sorted(ports)


def _worker_port_range(size: int = 300) -> range:
    """A block of currently unused ports below the ephemeral range (where _free_ports draws)."""
    low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        start = random.randrange(20000, low_ephemeral - size)
        block = range(start, start + size)
        if all(_port_is_free(p) for p in block):
            return block
    raise RuntimeError("no free block of worker ports")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of the processes whose command line mentions ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                continue
    return found


def _wait_until(condition, timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(poll)


def _images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"{i:03d}.png" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    return names


# --------------------------------------------------------------------------- a real head
class Head:
    """`ray start --head --block` on 127.0.0.1 in its own session, temp dir and ports, with
    token authentication on (its own token file) whatever ~/.ray holds."""

    def __init__(self, logs: Path) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="sgr-", dir="/tmp")  # short: socket paths
        self.token = secrets.token_hex(32)
        token_path = Path(self.temp_dir, "auth_token")
        token_path.write_text(self.token)
        workers = _worker_port_range()
        (
            self.gcs_port,
            self.dashboard_port,
            client_port,
            node_manager,
            object_manager,
            metrics,
            agent_listen,
            agent_grpc,
            runtime_env_agent,
        ) = _free_ports(9, avoid=workers)
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
        base["RAY_AUTH_MODE"] = "token"
        # The head (and the jobs it runs) read the token from a file; clients get it in
        # RAY_AUTH_TOKEN, as the README tells users.
        self.head_env = {**base, "RAY_AUTH_TOKEN_PATH": str(token_path)}
        self.client_env = {**base, "RAY_AUTH_TOKEN": self.token, "RAY_ADDRESS": self.url}
        self.log = logs / "head.log"
        cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={client_port}",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--metrics-export-port={metrics}",
            f"--dashboard-agent-listen-port={agent_listen}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}",
            f"--min-worker-port={workers.start}",
            f"--max-worker-port={workers.stop - 1}",
            "--num-cpus=2",
            "--num-gpus=0",
            f"--object-store-memory={512 * 1024**2}",
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.head_env,
                cwd=self.temp_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ray(self, *args: str, timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        """A `ray` CLI call as a client of this head (RAY_ADDRESS, RAY_AUTH_* set)."""
        return subprocess.run(
            [str(BIN / "ray"), *args],
            env=self.client_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float = 90) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"ray start exited:\n{self.log_tail()}"
            return self.ray("job", "list", timeout=30).returncode == 0

        _wait_until(up, timeout, f"the job server at {self.url}", poll=1.0)

    def stop(self, timeout: float = 60) -> list[int]:
        """SIGTERM the head's process group, wait; returns what still mentions its temp dir
        (after killing it: a failed stop must not leave a cluster behind)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.monotonic() + timeout
        while (left := _processes_mentioning(self.temp_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        print(f"head stopped in {time.monotonic() - t0:.1f}s", flush=True)
        for pid in left:  # ours: started by this head, found by its private temp dir
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


def _submitted_id(output: str) -> str:
    match = re.search(r"Job '([^']+)' submitted successfully", ANSI.sub("", output))
    assert match, f"no job id in the submit output:\n{output[-3000:]}"
    return match.group(1)


def _job_status(head: Head, job_id: str) -> str:
    out = ANSI.sub("", head.ray("job", "status", job_id).stdout)
    if f"Job '{job_id}' succeeded" in out:
        return "SUCCEEDED"
    if f"Job '{job_id}' failed" in out:
        return "FAILED"
    if f"Job '{job_id}' was stopped" in out:
        return "STOPPED"
    match = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", out)
    return match.group(1) if match else f"unknown ({out.strip()[-300:]})"


@contextmanager
def running_head(folder: Path) -> Iterator[Head]:
    """A ready head; stopped after, its temp dir removed, and none of its processes left."""
    head = Head(folder)
    try:
        head.wait_ready()
        yield head
    finally:
        left = head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
        assert not left, f"processes of the head survived its stop: {left}"


@pytest.fixture(scope="class")
def head(ray_exclusive, tmp_path_factory) -> Iterator[Head]:
    with running_head(tmp_path_factory.mktemp("head")) as head:
        yield head


class TestJobSubmit:
    """`ray job submit` of the tune job, then of the segment job on its best checkpoint, as
    the README shows it (token auth, --working-dir, ray job logs --follow)."""

    def test_a_client_without_the_token_is_refused(self, head: Head):
        env = {**head.client_env, "RAY_AUTH_TOKEN": "0" * 64}
        refused = subprocess.run(
            [str(BIN / "ray"), "job", "list"], env=env, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode != 0
        assert "auth" in (refused.stdout + refused.stderr).lower()

    def test_tune_then_segment_jobs(self, head: Head, tmp_path_factory):
        out = tmp_path_factory.mktemp("jobs")
        tune_out = out / "tune"
        # --address given explicitly, --no-wait, then the README's `ray job logs --follow`.
        submit = head.ray(
            "job",
            "submit",
            f"--address={head.url}",
            f"--working-dir={ROOT}",
            "--no-wait",
            "--",
            "python",
            "jobs/tune.py",
            "--config",
            "configs/tune_local.yaml",
            "--output",
            str(tune_out),
            *TUNE_JOB,
            cwd=out,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        tune_id = _submitted_id(submit.stdout + submit.stderr)
        print(f"tune job {tune_id} submitted", flush=True)
        logs = head.ray("job", "logs", "--follow", tune_id, timeout=240)
        status = _job_status(head, tune_id)
        print(f"tune job {tune_id}: {status}", flush=True)
        assert status == "SUCCEEDED", f"job {tune_id}: {status}\n{logs.stdout[-4000:]}"
        assert "trials" in logs.stdout  # the job's own output came back through the logs

        trials = pd.read_parquet(tune_out / "trials.parquet")
        assert len(trials) == 2 and (trials["status"] == "TERMINATED").all(), tune_id
        assert (tune_out / "best" / "model.pt").is_file(), tune_id
        summary = json.loads((tune_out / "summary.json").read_text())
        assert summary["num_trials"] == 2 and summary["best"] is not None, tune_id
        history = pd.read_parquet(tune_out / "history.parquet")
        assert (history["param_rank_spread"] == 0).all(), tune_id

        # What travelled as the working dir: the checkout without its .gitignore'd .venv.
        files = Path(head.temp_dir, "session_latest", "runtime_resources", "working_dir_files")
        packages = [p for p in files.glob("_ray_pkg_*") if p.is_dir()]  # not its .zip.lock
        assert len(packages) == 1, packages
        package = packages[0]
        assert (package / "jobs" / "tune.py").is_file() and (package / "segray").is_dir()
        assert not (package / ".venv").exists() and not list(package.rglob("__pycache__"))
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        assert size < 5 * 1024**2, f"working dir upload is {size / 1024**2:.1f} MiB"

        # The segment job, submitted exactly as the README does (RAY_ADDRESS, --working-dir .,
        # following the logs), on the search's best checkpoint.
        inputs = out / "images"
        names = _images(inputs, 5, (48, 56))
        (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        seg_out = out / "seg"
        submit = head.ray(
            "job",
            "submit",
            "--working-dir",
            ".",
            "--",
            "python",
            "jobs/segment.py",
            "--checkpoint",
            str(tune_out / "best"),
            "--input",
            str(inputs),
            "--output",
            str(seg_out),
            "segment.batch_size=2",
            timeout=240,
        )
        seg_id = _submitted_id(submit.stdout + submit.stderr)
        status = _job_status(head, seg_id)
        print(f"segment job {seg_id}: {status}", flush=True)
        assert submit.returncode == 0 and status == "SUCCEEDED", (
            f"job {seg_id}: {status}\n{submit.stdout[-4000:]}{submit.stderr[-2000:]}"
        )
        rows = pd.read_parquet(seg_out / "parquet").set_index("image_id")
        assert sorted(rows.index) == sorted([*names, "broken.png"]), seg_id
        assert rows.index.is_unique
        assert rows.loc["broken.png", "status"] == "error" and rows.loc["broken.png", "error"]
        assert (rows.drop(index="broken.png")["status"] == "ok").all(), seg_id
        summary = json.loads((seg_out / "summary.json").read_text())
        assert (summary["rows"], summary["ok"], summary["error"]) == (6, 5, 1), seg_id
        assert "cluster" in summary["ray"], summary["ray"]  # joined the head, no local Ray


# --------------------------------------------------------------------------- 2 simulated nodes
@pytest.fixture(scope="class")
def two_nodes(ray_exclusive) -> Iterator[tuple[Any, Any]]:
    """A head (1 CPU, the dashboard on a free port: Train V2 polls the State API) and one
    worker node (1 CPU); this process is their driver. Yields (cluster, worker node)."""
    import ray
    from ray.cluster_utils import Cluster

    (dashboard,) = _free_ports(1, avoid=range(0))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard,
            # A lost node is declared dead in ~3 s instead of ~30 s.
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 1000,
                "health_check_timeout_ms": 1000,
                "health_check_failure_threshold": 3,
            },
        },
    )
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=True)
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def _checkpoint(directory: Path) -> Path:
    """A small U-Net checkpoint whose sliding window (64 px tiles) makes every image cost a few
    forward passes."""
    torch.manual_seed(0)
    config = load_config(None, ["model.name=unet", "model.base_width=8", "segment.tile_size=64"])
    model = create_model("unet", in_channels=3, num_classes=1, base_width=8)
    return save_checkpoint(directory, model=model, config=config, metrics={})


class TestTwoNodes:
    def test_ddp_workers_on_two_nodes_end_identical(self, two_nodes, tmp_path):
        from segray.train import run_training

        result = run_training(load_config(None, TINY), tmp_path / "run")
        history = result.history
        assert len(history) == 2
        assert (history["num_nodes"] == 2).all(), history["num_nodes"].tolist()
        # DDP kept the two replicas, on different nodes, bitwise identical every epoch.
        assert (history["param_rank_spread"] == 0.0).all(), history["param_rank_spread"]
        assert (result.best / "model.pt").is_file()

    def test_search_concurrency_follows_nodes_that_join(self, two_nodes):
        """The searcher's limit on live trials is re-read from the cluster at every
        suggestion: a node that joins mid-search adds a trial slot (no number frozen at start)."""
        from ray.tune.search import Searcher

        from segray.search.searcher import ClusterSizedLimiter

        class One(Searcher):
            def suggest(self, trial_id: str) -> dict[str, int]:
                return {"x": 1}

            def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
                pass

        cluster, _ = two_nodes
        searcher = One(metric="val_dice", mode="max")
        limiter = ClusterSizedLimiter(searcher, {"CPU": 1.0})
        assert limiter.capacity() == 2 and limiter.max_concurrent == 2
        assert ClusterSizedLimiter(searcher, {"CPU": 1.0}, fixed=5).max_concurrent == 5
        extra = cluster.add_node(num_cpus=1)
        try:
            cluster.wait_for_nodes()
            _wait_until(lambda: limiter.capacity() == 3, 120, "the new node's CPU to count")
            assert [limiter.suggest(f"t{i}") for i in range(4)] == [{"x": 1}] * 3 + [None]
            assert limiter.max_concurrent == 3
        finally:
            cluster.remove_node(extra)

    def test_segment_survives_losing_a_node(self, two_nodes, tmp_path):
        """The inference actor starts on the worker node; that node is killed after the first
        shard is committed; the run completes with every image exactly once."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        from ray.util.state import list_actors

        from segray.segment import run_segment

        cluster, worker = two_nodes
        ckpt = _checkpoint(tmp_path / "ckpt")
        n = 60
        names = _images(tmp_path / "photos", n, (192, 192), seed=1)
        out = tmp_path / "out"
        overrides = [
            "segment.shard_size=3",
            "segment.batch_size=1",
            "segment.concurrency=1",
            "segment.cpus_per_actor=0.5",
            "segment.io_cpus=0.25",
        ]

        # Hold 0.75 of the head's CPU so that the actor (0.5 CPU) can only start on the worker.
        @ray.remote(num_cpus=0.75)
        class Hold:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        hold = Hold.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(cluster.head_node.node_id, False)
        ).remote()
        assert ray.get(hold.node.remote()) == cluster.head_node.node_id

        result: dict[str, Any] = {}

        def segment() -> None:
            try:
                result["summary"] = run_segment(
                    ckpt, [str(tmp_path / "photos")], out, overrides=overrides, progress=False
                )
            except BaseException as e:  # noqa: BLE001 - reported by the test thread
                result["error"] = e

        thread = threading.Thread(target=segment, daemon=True)
        thread.start()
        parts = out / "parquet"
        _wait_until(
            lambda: bool(list(parts.glob("part-*.parquet"))) or not thread.is_alive(),
            120,
            "the first committed shard",
            poll=0.05,
        )
        assert "error" not in result, result.get("error")
        committed_before = len(list(parts.glob("part-*.parquet")))
        actors = [
            a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "MapWorker" in a.class_name
        ]
        ray.kill(hold)  # the head can now take the actor over
        cluster.remove_node(worker, allow_graceful=False)
        removed_at = time.monotonic()
        thread.join(timeout=240)
        assert not thread.is_alive(), "run_segment did not return after the node was lost"
        print(
            f"node lost after {committed_before}/{n // 3} shards; the run finished "
            f"{time.monotonic() - removed_at:.1f}s later",
            flush=True,
        )
        assert "error" not in result, repr(result.get("error"))
        # The test tested something: the actor was on the lost node, with work left to do.
        assert [a.node_id for a in actors] == [worker.node_id], actors
        assert committed_before < n // 3

        summary = result["summary"]
        rows = pd.read_parquet(parts)
        assert len(rows) == n and rows["image_id"].is_unique
        assert sorted(rows["image_id"]) == names
        assert (rows["status"] == "ok").all(), rows["error"].dropna().tolist()
        assert (summary["rows"], summary["ok"], summary["error"]) == (n, n, 0)
        assert summary["processed"] == n and summary["skipped"] == 0
        assert not (out / "_staging").exists()


# --------------------------------------------------------------------------- a node that does not share the disk
@pytest.fixture(scope="class")
def blind_node(ray_exclusive, tmp_path_factory) -> Iterator[tuple[Path, Any]]:
    """A head (1 CPU and a GPU resource without CUDA behind it; this process its driver) and a
    worker node (1 CPU) started in a mount
    namespace of its own, where a tmpfs hides the folder ``blind`` of the driver's disk: a
    node that does not share that path with the driver. Yields (the folder, the node's pid)."""
    import ray
    from ray.cluster_utils import Cluster

    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare (mount namespaces)")
    blind = tmp_path_factory.mktemp("blind")
    # The head advertises a GPU that is not there (no CUDA on this machine).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    ray_cli = Path(sys.executable).with_name("ray")
    node = subprocess.Popen(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount -t tmpfs none {blind} && exec {ray_cli} start --address={cluster.address} "
            "--num-cpus=1 --block",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        ray.init(address=cluster.address)
        _wait_until(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, 90, "the blind node")
        yield blind, node.pid
    finally:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
        ray.shutdown()
        cluster.shutdown()


class TestPlacementRefusals:
    def test_a_local_output_the_task_nodes_do_not_see_is_refused_before_any_work(
        self, blind_node, tmp_path
    ):
        from segray.segment import InputError, run_segment

        blind, _ = blind_node
        ckpt = _checkpoint(tmp_path / "ckpt")
        _images(tmp_path / "photos", 2, (32, 32))
        out = blind / "out"
        with pytest.raises(InputError, match=r"local path that node\(s\) .* do not share"):
            run_segment(ckpt, [str(tmp_path / "photos")], out, progress=False)
        assert not (out / "parquet").exists() and not (out / "_segray").exists()

    def test_gpus_where_cuda_is_missing_are_refused_before_any_work(self, blind_node, tmp_path):
        from segray.cluster import ResourceError
        from segray.segment import run_segment

        ckpt = _checkpoint(tmp_path / "ckpt")
        _images(tmp_path / "photos", 2, (32, 32))
        overrides = ["segment.gpus_per_actor=1", "segment.cpus_per_actor=0.5"]
        with pytest.raises(ResourceError, match="gpus_per_actor=1 but CUDA is not available"):
            run_segment(
                ckpt,
                [str(tmp_path / "photos")],
                tmp_path / "out",
                overrides=overrides,
                progress=False,
            )
        assert not (tmp_path / "out").exists()
