"""Bulk segmentation on a real S3 API (moto's server on 127.0.0.1, behind a fault-injecting
proxy): s3:// inputs of every kind and an s3:// output, a killed run resumed, and a run whose
requests fail at random that still writes every image exactly once."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segray.segment import run_segment
from segray.storage import Location, retry_counts
from tests.s3 import FaultProxy, set_environ
from tests.test_segment import _checkpoint, _command, _encode, _kill_once_committed

pytestmark = pytest.mark.integration
OVERRIDES = ["segment.shard_size=3", "segment.batch_size=4"]


@pytest.fixture(scope="module")
def proxy(s3_server) -> Iterator[FaultProxy]:
    """Every S3 request of this module, the Ray workers' included, goes through the proxy
    (faults off unless a test turns them on): AWS_ENDPOINT_URL is set before Ray starts."""
    with FaultProxy(s3_server.endpoint, seed=7) as fault_proxy:
        old = set_environ({"AWS_ENDPOINT_URL": fault_proxy.endpoint})
        try:
            yield fault_proxy
        finally:
            set_environ(old)


@pytest.fixture(scope="module")
def ray_s3(proxy) -> Iterator[None]:
    import ray

    from segray.cluster import start_local
    from tests.conftest import ray_lock

    with ray_lock():
        start_local(num_cpus=2)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt"))


def _upload(bucket: str, n_files: int = 7) -> tuple[list[str], list[str]]:
    """A folder prefix, two tar shards and a Parquet file under ``bucket``: (inputs, ids)."""
    rng = np.random.default_rng(0)

    def image() -> bytes:
        return _encode(Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)))

    root = Location.parse(bucket)
    ids = []
    for i in range(n_files):
        root.join("photos", f"{i}.png").write(image())
        ids.append(f"photos/{i}.png")
    root.join("photos", ".hidden.png").write(image())  # hidden: not an input
    for s in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for m in range(3):
                data = image()
                info = tarfile.TarInfo(f"m{m}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        root.join("shards", f"shard-{s}.tar").write(buf.getvalue())
        ids += [f"shards/shard-{s}.tar/m{m}.png" for m in range(3)]  # a glob: its folder
    table = pa.table({"image": [image() for _ in range(5)]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=2)
    root.join("t.parquet").write(sink.getvalue().to_pybytes())
    ids += [f"t.parquet/{i}" for i in range(5)]
    return [f"{bucket}/photos", f"{bucket}/shards/shard-*.tar", f"{bucket}/t.parquet"], ids


def _output(out: str) -> pa.Table:
    loc = Location.parse(out)
    return pq.read_table(f"{loc.path}/parquet", filesystem=loc.fs)


def test_s3_inputs_to_s3_output(ray_s3, ckpt, s3_bucket: str):
    inputs, ids = _upload(s3_bucket)
    out = f"{s3_bucket}/out"
    summary = run_segment(ckpt, inputs, out, overrides=OVERRIDES, progress=False)
    table = _output(out)
    assert sorted(table.column("image_id").to_pylist()) == sorted(ids)
    assert summary["complete"] and summary["rows"] == len(ids) == summary["ok"]
    stored = json.loads(Location.parse(out).join("summary.json").read_bytes())
    assert stored == summary and stored["parquet"] == f"{out}/parquet"
    names = {i.base_name for i in Location.parse(out).list()}
    assert not any(n.startswith(".") or n.endswith(".tmp") for n in names)  # no temporaries
    assert not Location.parse(out).join("_staging").list()  # staging cleaned up


def test_requests_failing_at_random_lose_nothing(ray_s3, ckpt, s3_bucket: str, proxy):
    inputs, ids = _upload(s3_bucket)
    out = f"{s3_bucket}/out"
    before = (proxy.requests, proxy.failed_503, proxy.dropped)
    retries = sum(retry_counts().values())
    proxy.p, proxy.p_drop = 0.08, 0.02
    try:
        summary = run_segment(ckpt, inputs, out, overrides=OVERRIDES, progress=False)
    finally:
        proxy.p = proxy.p_drop = 0.0
    requests, failed, dropped = (
        proxy.requests - before[0],
        proxy.failed_503 - before[1],
        proxy.dropped - before[2],
    )
    print(
        f"fault injection: {requests} requests, {failed} answered 503, {dropped} dropped; "
        f"driver-side retries {sum(retry_counts().values()) - retries}; "
        f"rows {summary['rows']} == inputs {len(ids)}"
    )
    assert failed > 0 and dropped > 0  # faults happened, in the workers' requests too
    table = _output(out)
    got = table.column("image_id").to_pylist()
    assert sorted(got) == sorted(ids) and len(set(got)) == len(got)
    assert summary["complete"] and summary["rows"] == len(ids) and summary["error"] == 0


def test_killed_run_on_s3_resumes(ray_s3, ckpt, s3_bucket: str, tmp_path: Path):
    import ray

    inputs, ids = _upload(s3_bucket, n_files=24)
    out = f"{s3_bucket}/out"
    overrides = ["segment.shard_size=2", "segment.batch_size=1"]
    address = ray.get_runtime_context().gcs_address
    command = _command(ckpt, inputs, Path("unused"), overrides, address)
    command[command.index("--output") + 1] = out  # a URI, not a local path
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    parquet = Location.parse(out).join("parquet")
    _kill_once_committed(
        proc, lambda: sum(i.base_name.startswith("part-") for i in parquet.list()), poll=0.1
    )
    assert not Location.parse(out).join("summary.json").exists()
    before = _output(out)
    assert 0 < before.num_rows < len(ids), "the run finished before it was killed"
    summary = run_segment(ckpt, inputs, out, overrides=overrides, progress=False)
    after = _output(out)
    got = after.column("image_id").to_pylist()
    assert sorted(got) == sorted(ids) and len(set(got)) == len(got)
    assert summary["skipped"] >= before.num_rows and summary["processed"] > 0
    kept = dict(zip(got, after.column("run_id").to_pylist(), strict=True))
    old = dict(zip(before.column("image_id").to_pylist(), before.column("run_id").to_pylist()))
    assert all(kept[i] == run for i, run in old.items())  # committed rows kept as they were
