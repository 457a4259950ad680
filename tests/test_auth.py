"""A cluster with token authentication lets in only who holds the token: a real
`ray start --head` on 127.0.0.1 with ``RAY_AUTH_MODE=token`` (tests/test_cluster.py's `Head`,
the way KubeRay's ``authOptions: {mode: token}`` starts every pod of deploy/).

Without the token (or with a wrong one) `ray job submit` is refused and runs nothing, and
``segray --address`` cannot join; with the token, as the README tells users to pass it
(``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), a ``jobs/*.py`` job runs and ``segray
--address`` joins the cluster from outside it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.test_cluster import (
    ANSI,
    BIN,
    ROOT,
    Head,
    _checkpoint,
    _images,
    _job_status,
    _submitted_id,
    running_head,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def head(ray_exclusive, tmp_path_factory) -> Iterator[Head]:
    with running_head(tmp_path_factory.mktemp("auth-head")) as head:
        yield head


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny checkpoint and 3 images to segment."""
    root = tmp_path_factory.mktemp("auth-work")
    _checkpoint(root / "ckpt")
    _images(root / "images", 3, (40, 48))
    return root


def _run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> tuple[int, str]:
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return done.returncode, ANSI.sub("", done.stdout + done.stderr)


def _without_token(head: Head) -> dict[str, str]:
    """The client's environment with no token anywhere (HOME has no ~/.ray/auth_token)."""
    env = {k: v for k, v in head.client_env.items() if not k.startswith("RAY_AUTH")}
    return {**env, "HOME": head.temp_dir}


def test_a_submit_without_the_token_is_refused_and_runs_nothing(head: Head, tmp_path: Path):
    marker = tmp_path / "ran"
    job = ["python", "-c", f"open({str(marker)!r}, 'w').write('x')"]
    submit = [str(BIN / "ray"), "job", "submit", f"--address={head.url}", "--", *job]

    rc, out = _run(submit, _without_token(head), timeout=60)
    assert rc != 0 and "Missing authentication token" in out, out[-2000:]
    rc, out = _run(submit, {**head.client_env, "RAY_AUTH_TOKEN": "0" * 64}, timeout=60)
    assert rc != 0 and "Invalid authentication token" in out, out[-2000:]

    listed = head.ray("job", "list")  # with the token
    assert listed.returncode == 0, listed.stderr
    assert str(marker) not in listed.stdout  # no job was created ...
    assert not marker.exists()  # ... and nothing ran


def _segment_on(head: Head, work: Path, out: Path) -> list[str]:
    """`segray segment --address` of the work folder's images, joining the head from outside."""
    return [
        *(str(BIN / "segray"), "segment", "--checkpoint", str(work / "ckpt")),
        *("--input", str(work / "images"), "--output", str(out)),
        *("--address", f"127.0.0.1:{head.gcs_port}"),
    ]


def test_segray_address_without_the_token_cannot_join(head: Head, work: Path, tmp_path: Path):
    out = tmp_path / "seg"
    rc, text = _run(_segment_on(head, work, out), _without_token(head))
    assert rc != 0, text[-3000:]
    assert "InvalidAuthToken" in text and "RAY_AUTH_TOKEN" in text, text[-3000:]
    assert not (out / "parquet").exists()


def test_with_the_token_a_job_and_segray_address_run(head: Head, work: Path, tmp_path: Path):
    # jobs/segment.py submitted as the README does (RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN).
    job_out = tmp_path / "job"
    submit = head.ray(
        "job",
        "submit",
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/segment.py",
        "--checkpoint",
        str(work / "ckpt"),
        "--input",
        str(work / "images"),
        "--output",
        str(job_out),
        "segment.batch_size=2",
        timeout=240,
    )
    text = ANSI.sub("", submit.stdout + submit.stderr)
    assert submit.returncode == 0, text[-4000:]
    job_id = _submitted_id(text)
    assert _job_status(head, job_id) == "SUCCEEDED", text[-4000:]
    rows = pd.read_parquet(job_out / "parquet")
    assert len(rows) == 3 and (rows["status"] == "ok").all()

    # segray --address from a process outside the cluster, the token in its environment.
    cli_out = tmp_path / "cli"
    rc, text = _run(
        [*_segment_on(head, work, cli_out), "segment.batch_size=2"],
        {**head.client_env, "PYTHONPATH": str(ROOT)},
    )
    assert rc == 0, text[-4000:]
    summary = json.loads((cli_out / "summary.json").read_text())
    assert (summary["rows"], summary["ok"]) == (3, 3)
    assert summary["ray"].startswith("cluster"), summary["ray"]  # joined, no local Ray
    assert head.token not in (cli_out / "summary.json").read_text()
