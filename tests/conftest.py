"""Shared fixtures: a real local Ray per integration module, tiny configs, isolated caches.

Only one local Ray may run on a machine at a time (Train's State-API calls fail with "Found
multiple active Ray instances" otherwise), so every fixture that starts Ray, in this run or in
a parallel one, first takes an exclusive file lock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from segray.cluster import local_ray_lock as ray_lock


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> Iterator[None]:
    """Synthetic datasets go to a per-session cache, never the user's."""
    old = os.environ.get("SEGRAY_CACHE")
    os.environ["SEGRAY_CACHE"] = str(tmp_path_factory.mktemp("segray-cache"))
    yield
    if old is None:
        os.environ.pop("SEGRAY_CACHE", None)
    else:
        os.environ["SEGRAY_CACHE"] = old


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A real single-node Ray with 2 CPUs, started as segray starts its local Ray."""
    import ray

    from segray.cluster import start_local

    with ray_lock():
        start_local(num_cpus=2)  # the same local Ray that segray starts
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def ray_exclusive() -> Iterator[None]:
    """No Ray here, but the right to start one in a subprocess."""
    with ray_lock():
        yield


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """A real S3 API (moto's server on 127.0.0.1) for the session, with AWS_ENDPOINT_URL and
    test credentials in os.environ while it runs (restored after). See tests/s3.py."""
    from tests.s3 import S3Server, s3_environ, set_environ

    with S3Server() as server:
        old = set_environ({**s3_environ(server.endpoint), "AWS_ENDPOINT_URL_S3": None})
        try:
            yield server
        finally:
            set_environ(old)
            from segray.storage import forget_filesystems

            forget_filesystems()  # no S3 client outlives its server


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket per test: ``s3://<name>``."""
    import uuid

    return s3_server.bucket(f"test-{uuid.uuid4().hex[:16]}")


# Keys 0000..0015 of the synthetic set: 11 train, 5 val (odd on purpose: 2 workers can't split it evenly).
TINY = [
    "data.synthetic.num=16",
    "data.synthetic.size=64",
    "data.image_size=64",
    "data.train_transform=resize",
    "data.batch_size=4",
    "data.split_ids={train: ['0000','0001','0002','0003','0004','0005','0006','0007','0008','0009','0010'], val: ['0011','0012','0013','0014','0015']}",
    "model.name=unet",
    "model.base_width=8",
    "optim.lr=0.01",
    "train.epochs=2",
    "train.num_workers=2",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
