"""Train and tune on object storage (a real S3 API: moto's server on 127.0.0.1): a search of
2 trials x 2 DDP workers writing to s3://, killed and resumed there by a resubmitted command,
its best checkpoint loaded from S3 by `load_segmenter` and by `segray segment`; a training
run whose whole output lives on S3."""

from __future__ import annotations

import fnmatch
import io
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from segray.storage import Location, resolve_published
from tests.conftest import TINY
from tests.test_train_resume import _poll, _segray
from tests.test_tune import SEARCH

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _files(uri: str) -> dict[str, object]:
    """Relative path -> FileInfo of every object under ``uri``."""
    return dict(Location.parse(uri).list_files())


def _trial(rel: str) -> str | None:
    """``trial_<id>`` of a path under ``ray/trials/``, else None."""
    parts = rel.split("/")
    return parts[2] if len(parts) > 3 and parts[:2] == ["ray", "trials"] else None


def _table(uri: str) -> pd.DataFrame:
    loc = Location.parse(uri)
    return pq.read_table(loc.path, filesystem=loc.fs).to_pandas()


def test_search_on_s3_resumes_and_its_best_checkpoint_serves_from_s3(
    ray_exclusive, s3_bucket: str, tmp_path: Path
):
    out = f"{s3_bucket}/search"
    args = [*SEARCH, "tune.num_samples=3", "train.epochs=2", "tune.scheduler=none"]
    first = _segray("tune", "--output", out, "--resume-or-start", *args, log=tmp_path / "1.log")

    def a_trial_done() -> bool:
        return any(
            fnmatch.fnmatch(rel, "ray/trials/trial_*/segray_done.json") for rel in _files(out)
        )

    try:
        _poll(a_trial_done, first, "a trial finished", 600)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = _files(out)
    assert "trials.parquet" not in before and "config.yaml" in before
    assert not any(rel.startswith(("s3:", "/")) for rel in before)  # nothing local-looking
    done = {_trial(rel) for rel in before if rel.endswith("segray_done.json")}
    stamps = {
        rel: info.mtime
        for rel, info in before.items()
        if _trial(rel) in done and rel.endswith("model.pt")
    }
    assert not Path("s3:").exists()  # the old bug: a local folder named after the URI

    # The same command again (a resubmitted job): it continues the search.
    second = _segray("tune", "--output", out, "--resume-or-start", *args, log=tmp_path / "2.log")
    second.wait(timeout=900)
    log = (tmp_path / "2.log").read_text()
    assert second.returncode == 0, log[-3000:]
    assert "resuming the search" in log
    trials = _table(f"{out}/trials.parquet")
    assert len(trials) == 3 and (trials["status"] == "TERMINATED").all(), trials["error"]
    assert {f"trial_{t}" for t in trials["trial_id"]} >= done
    after = _files(out)
    assert stamps and all(after[rel].mtime == t for rel, t in stamps.items())  # not retrained
    # best/ holds what inference needs, not the optimizer state, behind its pointer.
    best = set(_files(resolve_published(f"{out}/best").uri))
    assert {"model.pt", "config.yaml", "metrics.json"} <= best and "train_state.pt" not in best

    from segray.inference.segmenter import load_segmenter

    segmenter = load_segmenter(f"{out}/best", device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert segmenter.predict(image).shape == (64, 64)

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(image[:, :, ::-1] if i else image).save(photos / f"{i}.png")
    masks = f"{s3_bucket}/masks"
    seg = _segray(
        "segment",
        "--checkpoint",
        f"{out}/best",
        "--input",
        str(photos),
        "--output",
        masks,
        log=tmp_path / "3.log",
    )
    seg.wait(timeout=600)
    assert seg.returncode == 0, (tmp_path / "3.log").read_text()[-3000:]
    rows = _table(f"{masks}/parquet")
    assert sorted(rows["image_id"]) == ["0.png", "1.png", "2.png"] and (rows.status == "ok").all()
    mask = np.asarray(Image.open(io.BytesIO(rows.set_index("image_id").loc["0.png"].mask_png)))
    assert np.array_equal(mask, segmenter.predict(image))


def test_training_output_on_s3(ray_exclusive, s3_bucket: str, tmp_path: Path):
    out = f"{s3_bucket}/train"
    run = _segray("train", "--output", out, *TINY, log=tmp_path / "train.log")
    run.wait(timeout=900)
    assert run.returncode == 0, (tmp_path / "train.log").read_text()[-3000:]
    files = _files(out)
    for name in ("config.yaml", "fingerprint.json", "history.parquet"):
        assert name in files, sorted(files)
    for which in ("last", "best"):  # each a version behind its pointer, written last
        assert f"checkpoints/{which}/current.json" in files
        assert "model.pt" in _files(resolve_published(f"{out}/checkpoints/{which}").uri)
    assert any(rel.startswith("ray/") for rel in files)  # Ray's run state under the output
    history = _table(f"{out}/history.parquet")
    assert history["epoch"].tolist() == [1, 2]
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()
