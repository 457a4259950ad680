"""`segray auto --output s3://...` end to end against a real S3 API (moto's server on
127.0.0.1, tests/s3.py): search, test and bulk segmentation on a tiny fixed plan, every output
on the bucket and nothing local-looking left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segray.storage import Location, resolve_published

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A small fixed plan: one trial of one epoch, no budget, no plateau stop.
FIXED = [
    "tune.num_samples=1",
    "train.epochs=1",
    "tune.max_epochs=1",
    "tune.time_budget_s=null",
    "tune.plateau_trials=null",
    "train.num_workers=1",
]


def test_auto_with_its_output_on_s3(ray_local, s3_bucket: str, tmp_path: Path, monkeypatch):
    from segray.auto import run_auto
    from segray.data.synth import generate

    monkeypatch.chdir(tmp_path)  # where a URI mistaken for a path would land
    data = generate(tmp_path / "data", num=12, size=32, seed=0)
    out = f"{s3_bucket}/auto"
    result = run_auto(
        str(data),
        out,
        time_budget_s=120,
        unlabelled=[str(data / "images")],
        folds=0,
        overrides=FIXED,
    )
    files = {rel for rel, _ in Location.parse(out).list_files()}
    for name in ("config.yaml", "fingerprint.json", "plan.json", "auto_summary.json"):
        assert name in files, sorted(files)
    assert {"tune/trials.parquet", "eval/metrics.json", "segment/summary.json"} <= files
    summary = json.loads(Location.parse(out).join("auto_summary.json").read_bytes())
    assert summary["search"]["trials"] == result.summary["search"]["trials"] == 1
    assert summary["test"]["dice"] == pytest.approx(result.summary["test"]["dice"], nan_ok=True)
    # The search's best/ is published behind its pointer; evaluate names it as the URI it is.
    best = resolve_published(f"{out}/tune/best")
    assert best.uri.startswith(f"{out}/tune/best/versions/")
    assert {"model.pt", "config.yaml"} <= {rel for rel, _ in best.list_files()}
    metrics = json.loads(Location.parse(out).join("eval/metrics.json").read_bytes())
    assert metrics["checkpoint"].startswith(out + "/")
    segment = json.loads(Location.parse(out).join("segment/summary.json").read_bytes())
    assert segment["complete"] and segment["ok"] == 12 and segment["error"] == 0
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()
