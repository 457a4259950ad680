"""A 2-trial search (2 DDP workers each) with its output on S3 against the same search on
local disk: the time object storage adds to tuning.

    python benchmarks/tune_storage.py [--rounds 2] [--epochs 3] [--output benchmarks/results/tune_storage.json]

moto's S3 server (``tests/s3.py``) runs on 127.0.0.1 in this process (it shares the machine's
CPUs with the search). Each run is `segray tune` as a user runs it, in a fresh process with
its own local Ray (the AWS variables inherited); the two locations alternate for ``--rounds``
rounds and the best round of each counts. Wall time is the command's, Ray start included.
Target: S3 / local <= 1.3. Holds the machine-wide Ray lock.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import publish, ray_lock  # noqa: E402

from tests.conftest import TINY  # noqa: E402
from tests.s3 import S3Server, s3_environ, set_environ  # noqa: E402


def search_args(epochs: int) -> list[str]:
    return [
        *(o for o in TINY if not o.startswith(("model.", "train.epochs"))),
        "model.name=resnet_unet",
        "model.encoder=resnet18",
        "model.decoder_channels=[16,8,8,8]",
        f"train.epochs={epochs}",
        "train.num_workers=2",
        "tune.num_samples=2",
        "tune.scheduler=none",
        "tune.space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}",
    ]


def run(output: str, args: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "segray.cli", "tune", "--output", output, *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"segray tune -> {output} failed:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks/results/tune_storage.json"
    )
    a = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the S3 server's request log
    args = search_args(a.epochs)
    times: dict[str, list[float]] = {"local": [], "s3": []}
    with ray_lock(), S3Server() as server, tempfile.TemporaryDirectory() as tmp:
        old = set_environ(s3_environ(server.endpoint))
        try:
            bucket = server.bucket("segray-tune-bench")
            for r in range(a.rounds):
                for where in ("local", "s3"):
                    out = f"{tmp}/search-{r}" if where == "local" else f"{bucket}/search-{r}"
                    t = run(out, args, Path(tmp) / f"{where}-{r}.log")
                    times[where].append(round(t, 1))
                    print(f"round {r + 1}: {where} {t:.1f} s", flush=True)
        finally:
            set_environ(old)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["s3"] / best["local"]
    report = {"times_s": times, "best_s": best, "ratio": round(ratio, 3), "target": 1.3}
    table = "\n".join(
        [
            f"{'output':<22}{'best s':>8}  rounds",
            f"{'local disk':<22}{best['local']:>8.1f}  {times['local']}",
            f"{'s3:// (moto)':<22}{best['s3']:>8.1f}  {times['s3']}",
            f"{'PASS' if ratio <= 1.3 else 'FAIL'}  S3 / local = {ratio:.2f} (target <= 1.3); "
            f"2 trials x 2 DDP workers, {a.epochs} epochs, wall time of `segray tune`",
        ]
    )
    publish(report, table, a.output)


if __name__ == "__main__":
    main()
