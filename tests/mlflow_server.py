"""A real MLflow tracking server for tests: ``mlflow server`` on 127.0.0.1 with a SQLite
backend store and a local artefact root under a temporary folder. Nothing is mocked: segray's
tracker and the tests' ``MlflowClient`` speak HTTP to it.

    with MlflowServer(tmp_path) as server:
        client = MlflowClient(server.uri)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.s3 import free_port


class MlflowServer:
    """``mlflow server`` in its own process group, ready (``/health`` answers) on entry and
    killed with its workers on exit."""

    def __init__(self, root: Path, *, start_timeout: float = 120.0) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        self.log = self.root / "server.log"
        self.proc = subprocess.Popen(
            [
                exe,
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--default-artifact-root",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        """Poll ``/health`` until it answers OK; fail if the server exits or time runs out."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited (rc {self.proc.returncode}): "
                    f"{self.log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TimeoutError(
            f"mlflow server not ready in {self.start_timeout} s: {self.log.read_text()[-2000:]}"
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None
