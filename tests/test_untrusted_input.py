"""What segray reads may come from anyone: a report shows file names, class names and error
texts as text, never as markup; a checkpoint is loaded as weights, never as code; a tar
archive is read in memory, never unpacked onto the disk. One test each, named for what it
guards. No Ray.
"""

from __future__ import annotations

import html
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from segray.checkpoint import load_model, save_checkpoint
from segray.config import load_config
from segray.models import create_model
from segray.segment.plan import plan_inputs
from segray.segment.read import read_shard
from segray.segment.schema import OUTPUT_SCHEMA
from tests.segment.helpers import png, rows
from tests.test_report import make_evaluation, make_search, make_segment

# Markup that would run or restyle the page if it reached the HTML unescaped.
SCRIPT = "<script>alert('segray')</script>"
IMG = '<img src=x onerror="alert(1)">'
BOLD = "<b>cell</b>"


def test_the_report_escapes_file_names_class_names_and_error_texts(tmp_path: Path):
    from segray.report import write_report

    # A bulk segmentation whose inputs are named with markup and whose errors quote it.
    built = make_segment(tmp_path / "seg", ok=8)
    parts = sorted((built["out"] / "parquet").glob("*.parquet"))
    for part in parts:
        table = pq.read_table(part).to_pylist()
        for row in table:
            row["image_id"] = f"{SCRIPT}/{row['image_id']}"
            if row["status"] == "error":
                row["error"] = f"{row['image_id']}: cannot decode {IMG}"
        pq.write_table(pa.Table.from_pylist(table, schema=OUTPUT_SCHEMA), part)
    # An evaluation with a class named with markup, a search whose failed trial says markup.
    evaluation = make_evaluation(tmp_path / "eval")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    metrics |= {f"dice_{BOLD}": 0.5, f"iou_{BOLD}": 0.4}
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    search = make_search(tmp_path / "search")
    trials = pd.read_parquet(search / "trials.parquet")
    trials.loc[trials["status"] == "ERROR", "error"] = f"RuntimeError: {SCRIPT}"
    trials.to_parquet(search / "trials.parquet", index=False)

    for run_dir, shown in ((built["out"], IMG), (evaluation, BOLD), (search, SCRIPT)):
        page = Path(write_report(run_dir)).read_text()
        for markup in (SCRIPT, IMG, BOLD):
            assert markup not in page, f"{run_dir.name}: {markup} reached the HTML unescaped"
        assert html.escape(shown) in page, f"{run_dir.name}: {shown} not shown as text"


def test_checkpoints_load_with_weights_only_so_pickled_code_never_runs(tmp_path: Path):
    config = load_config(None, ["model.name=unet", "model.base_width=8"])
    model = create_model("unet", in_channels=3, num_classes=1, base_width=8)
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, config=config, metrics={})
    assert load_model(ckpt) is not None  # a real checkpoint loads

    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    # The same folder with model.pt replaced by a pickle that runs a command when unpickled.
    state = {k: v for k, v in model.state_dict().items()}
    state["_payload"] = Payload()
    with open(ckpt / "model.pt", "wb") as f:
        torch.save(state, f)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        load_model(ckpt)
    assert not ran.exists(), "unpickling the checkpoint ran its code"


def test_tar_members_are_read_in_memory_and_never_extracted(tmp_path: Path, monkeypatch):
    archive = tmp_path / "in" / "shard.tar"
    archive.parent.mkdir()
    good = png()
    with tarfile.open(archive, "w") as tar:
        for name in ("a.png", "../escape.png", "/abs/root.png", "d/../../up.png"):
            info = tarfile.TarInfo(name)
            info.size = len(good)
            tar.addfile(info, io.BytesIO(good))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "target.png")
        tar.addfile(link)
    # Any unpacking API would be a way out of the folder: none of them may be called.
    for name in ("extract", "extractall", "makefile", "makelink"):
        monkeypatch.setattr(
            tarfile.TarFile,
            name,
            lambda *a, _n=name, **k: pytest.fail(f"TarFile.{_n} called"),
        )
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = {p for p in tmp_path.rglob("*")}

    (shard,) = plan_inputs([str(archive)], shard_size=64)
    out = [r for r in rows(read_shard(shard, chunk_rows=8)) if r["image_id"]]
    assert sorted(r["image_id"] for r in out) == sorted(
        [
            "shard.tar/a.png",
            "shard.tar/../escape.png",
            "shard.tar/abs/root.png",
            "shard.tar/d/../../up.png",
        ]
    )
    assert all(r["data"] == good for r in out)  # the bytes, in memory
    assert {p for p in tmp_path.rglob("*")} == before, "reading the archive wrote files"
    assert not (tmp_path / "escape.png").exists() and not Path("/abs/root.png").exists()
