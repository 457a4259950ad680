"""Bulk segmentation on a real local Ray: mixed inputs with bad files, resume after a kill,
reruns, and the output read back with pandas and pyarrow."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from segray.checkpoint import save_checkpoint
from segray.cluster import ResourceError
from segray.config import ConfigError, apply_overrides, load_config
from segray.data import MaskMapper, read_mask
from segray.inference.segmenter import load_segmenter
from segray.metrics import per_image_metrics
from segray.models import create_model
from segray.segment import OUTPUT_SCHEMA, InputError, SegmentError, run_segment, summary_line
from segray.structure import surface_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["segment.shard_size=3", "segment.batch_size=4", "segment.id_column=name"]
N_KILL = 24  # images of the kill test: 12 shards of 2


# --------------------------------------------------------------------------- data
def _checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    config = load_config(None, ["model.name=unet", "model.base_width=8", "segment.tile_size=64"])
    model = create_model("unet", in_channels=3, num_classes=1, base_width=8)
    with torch.no_grad():  # sharper logits than a fresh init: masks with both classes
        model.head.weight.mul_(20)
        model.head.bias.zero_()
    return save_checkpoint(directory, model=model, config=config, metrics={})


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


class Inputs:
    """A folder, a tar shard and a Parquet file; every good image has a size of its own (so
    it is batched alone, as `predict` does)."""

    def __init__(self, root: Path) -> None:
        rng = np.random.default_rng(0)
        sizes = iter([(40 + i, 50 + i) for i in range(40)])

        def rgb(shape: tuple[int, int] | None = None, channels: int = 3) -> np.ndarray:
            h, w = shape or next(sizes)
            return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)

        self.good: dict[str, bytes] = {}
        self.bad: set[str] = set()
        photos = root / "photos"
        (photos / "sub").mkdir(parents=True)
        files = {
            "a.png": _encode(Image.fromarray(rgb())),
            "c.jpg": _encode(Image.fromarray(rgb()), "JPEG"),
            "sub/big.png": _encode(Image.fromarray(rgb((140, 300)))),  # larger than the tile
            "small.png": _encode(Image.fromarray(rgb((20, 30)))),  # smaller than the tile
            "deep16.png": _encode(
                Image.fromarray(rng.integers(0, 65536, next(sizes)).astype(np.uint16))
            ),
            "rgba.png": _encode(Image.fromarray(rgb(channels=4), "RGBA")),
            "palette.png": _encode(Image.fromarray(rgb()).convert("P")),
        }
        truncated = _encode(Image.fromarray(rgb()))
        broken = {
            "zero.png": b"",
            "truncated.png": truncated[: len(truncated) // 2],
            "notes.png": b"these are notes, not an image\n",
        }
        for name, data in {**files, **broken}.items():
            (photos / name).write_bytes(data)
        (photos / ".hidden.png").write_bytes(files["a.png"])  # hidden: not an input
        (photos / "readme.txt").write_text("not an image extension: not an input")
        self.good.update({f"photos/{k}": v for k, v in files.items()})
        self.bad.update(f"photos/{k}" for k in broken)

        members = {
            "m0.png": _encode(Image.fromarray(rgb())),
            "d/m1.png": _encode(Image.fromarray(rgb())),
            "m2.jpg": _encode(Image.fromarray(rgb()), "JPEG"),
        }
        with tarfile.open(root / "shard-000.tar", "w") as tar:
            for name, data in [
                *members.items(),
                ("m0.json", b"{}"),
                ("broken.png", truncated[:100]),
            ]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        self.good.update({f"shard-000.tar/{k}": v for k, v in members.items()})
        self.bad.add("shard-000.tar/broken.png")

        p0, p1 = (_encode(Image.fromarray(rgb())) for _ in range(2))
        table = pa.table(
            {
                "image": pa.array([p0, p1, None, b"\x89PNG junk"], pa.binary()),
                "name": ["p0", "p1", "p2", "p3"],
            }
        )
        pq.write_table(table, root / "table.parquet")
        self.good.update({"table.parquet/p0": p0, "table.parquet/p1": p1})
        self.bad.update({"table.parquet/p2", "table.parquet/p3"})
        self.paths = [str(photos), str(root / "shard-000.tar"), str(root / "table.parquet")]

        gt = root / "gt"
        (gt / "sub").mkdir(parents=True)
        for image_id, name in [
            ("photos/a.png", "a.png"),
            ("photos/sub/big.png", "sub/big.png"),
            ("shard-000.tar/m0.png", "m0.png"),
            ("table.parquet/p0", "p0.png"),
        ]:
            h, w = Image.open(io.BytesIO(self.good[image_id])).size[::-1]
            mask = (rng.random((h, w)) > 0.5).astype(np.uint8) * 255
            Image.fromarray(mask).save(gt / name)
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(gt / "c.png")  # wrong size
        self.gt = gt


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def mixed(ray_local, ckpt, tmp_path_factory: pytest.TempPathFactory):
    """One run over all the inputs, with ground truth and a PNG mirror."""
    root = tmp_path_factory.mktemp("mixed")
    inputs = Inputs(root)
    summary = run_segment(
        ckpt,
        inputs.paths,
        str(root / "out"),
        masks=str(inputs.gt),
        write_png=str(root / "png"),
        overrides=OVERRIDES,
        progress=False,
    )
    return inputs, root, summary


def _read(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "parquet").set_index("image_id")


# --------------------------------------------------------------------------- mixed inputs
def test_every_input_becomes_one_row(mixed):
    inputs, root, summary = mixed
    df = _read(root / "out")
    assert sorted(df.index) == sorted([*inputs.good, *inputs.bad])
    assert df.index.is_unique
    assert summary["rows"] == len(df) and summary["complete"]
    assert (summary["ok"], summary["error"]) == (len(inputs.good), len(inputs.bad))
    assert json.loads((root / "out" / "summary.json").read_text()) == summary
    assert "skipped" in summary_line(summary)


def test_error_rows_carry_a_reason(mixed):
    inputs, root, _ = mixed
    df = _read(root / "out")
    errors = df[df.status == "error"]
    assert set(errors.index) == inputs.bad
    assert errors.error.str.len().gt(0).all() and errors.mask_png.isna().all()
    assert df[df.status == "ok"].error.isna().all()
    reasons = errors.error.to_dict()
    assert "empty file" in reasons["photos/zero.png"]
    assert "truncated" in reasons["photos/truncated.png"]
    assert "not an image" in reasons["photos/notes.png"]
    assert "null" in reasons["table.parquet/p2"]


def test_ok_masks_equal_load_segmenter_predict(mixed, ckpt):
    inputs, root, _ = mixed
    df = _read(root / "out")
    seg = load_segmenter(ckpt, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the actor (1 CPU reserved): bit-identical probabilities
    try:
        for image_id, data in inputs.good.items():
            row = df.loc[image_id]
            mask = np.asarray(Image.open(io.BytesIO(row.mask_png)))
            expected = seg.predict(data)
            assert mask.shape == (row.height, row.width) == expected.shape, image_id
            assert np.array_equal(mask, expected), image_id
            assert row.foreground_fraction == pytest.approx(expected.mean(), abs=1e-6)
            assert row.model_id == seg.model_id
    finally:
        torch.set_num_threads(threads)
    assert df.loc["photos/sub/big.png"].width == 300  # tiled: larger than the 64-pixel tile
    assert 0 < df.foreground_fraction.mean() < 1


def test_ground_truth_metrics_and_png_mirror(mixed, ckpt):
    inputs, root, summary = mixed
    df = _read(root / "out")
    seg = load_segmenter(ckpt, device="cpu")
    # The checkpoint says data.mask_mode=auto: the run chose the mapping from the 0/255
    # ground truth, which must be the threshold mapping (any other reads them differently).
    assert seg.config.data.mask_mode == "auto"
    chosen = apply_overrides(
        seg.config, {"data.mask_mode": "threshold", "data.mask_threshold": 127}
    )
    mapper = MaskMapper.from_config(chosen.data)
    for image_id, gt in [
        ("photos/a.png", "a.png"),
        ("photos/sub/big.png", "sub/big.png"),
        ("shard-000.tar/m0.png", "m0.png"),
        ("table.parquet/p0", "p0.png"),
    ]:
        row = df.loc[image_id]
        pred = np.asarray(Image.open(io.BytesIO(row.mask_png)))
        target = mapper(read_mask(inputs.gt / gt))
        expected = per_image_metrics(pred, target, num_classes=1, ignore_index=255)
        expected |= surface_metrics(pred, target, num_classes=1, ignore_index=255)
        assert row.gt_mask == str(inputs.gt / gt)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-6), (image_id, key)
    assert "ground truth is 5x5" in df.loc["photos/c.jpg"].gt_error
    assert np.isnan(df.loc["photos/c.jpg"].dice) and np.isnan(df.loc["photos/small.png"].dice)
    assert np.isnan(df.loc["photos/c.jpg"].hd95) and np.isnan(df.loc["photos/small.png"].msd)
    assert summary["metrics"]["images_with_ground_truth"] == 4
    scored = df[df.gt_foreground_fraction.notna()]
    for key in ("hd95", "msd", "boundary_f1"):  # the summary's means skip undefined values
        mean = summary["metrics"][key]
        assert (mean is None) == scored[key].isna().all(), key
        assert mean is None or mean == pytest.approx(scored[key].mean(), abs=1e-5), key
    mirrored = np.asarray(Image.open(root / "png" / "photos" / "sub" / "big.png.png"))
    assert np.array_equal(
        mirrored, np.asarray(Image.open(io.BytesIO(df.loc["photos/sub/big.png"].mask_png)))
    )
    assert (root / "png" / "shard-000.tar" / "d" / "m1.png.png").is_file()
    assert (root / "png" / "photos" / "c.jpg.png").is_file()  # the extension is kept
    assert not (root / "png" / "photos" / "zero.png.png").exists()


def test_output_reads_back_with_pandas_and_pyarrow(mixed):
    _, root, _ = mixed
    table = pq.read_table(root / "out" / "parquet")
    assert table.schema.equals(OUTPUT_SCHEMA)
    for path in (root / "out" / "parquet").iterdir():
        assert pq.read_schema(path).equals(OUTPUT_SCHEMA)
    df = pd.read_parquet(root / "out" / "parquet")
    assert list(df.columns) == OUTPUT_SCHEMA.names and len(df) == table.num_rows
    assert str(df.segmented_at.dtype).startswith("datetime64") and df.run_id.nunique() == 1
    assert not (root / "out" / "_staging").exists()  # every shard committed


# --------------------------------------------------------------------------- reruns
def _tiny(root: Path) -> list[str]:
    photos = root / "photos"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (36, 36 + i, 3), dtype=np.uint8)).save(
            photos / f"{i}.png"
        )
    (photos / "bad.png").write_bytes(b"")
    return [str(photos)]


def test_rerun_skips_retry_errors_and_overwrite(ray_local, ckpt, tmp_path: Path):
    inputs, out = _tiny(tmp_path), str(tmp_path / "out")
    first = run_segment(ckpt, inputs, out, overrides=OVERRIDES, progress=False)
    assert (first["ok"], first["error"], first["processed"]) == (4, 1, 5)
    again = run_segment(ckpt, inputs, out, overrides=OVERRIDES, progress=False)
    assert (again["processed"], again["skipped"], again["rows"]) == (0, 5, 5)
    retried = run_segment(ckpt, inputs, out, overrides=OVERRIDES, retry_errors=True, progress=False)
    df = _read(Path(out))
    assert retried["processed"] == 1 and len(df) == 5
    assert df.loc["bad.png"].run_id == retried["run_id"]
    assert (df.drop("bad.png").run_id == first["run_id"]).all()
    fresh = run_segment(ckpt, inputs, out, overrides=OVERRIDES, overwrite=True, progress=False)
    assert fresh["processed"] == 5 and (_read(Path(out)).run_id == fresh["run_id"]).all()


def test_refusals_touch_nothing(ray_local, ckpt, tmp_path: Path):
    inputs, out = _tiny(tmp_path), tmp_path / "out"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not a segray segment output"):
        run_segment(ckpt, inputs, str(tmp_path / "foreign"), overwrite=True, progress=False)
    assert (tmp_path / "foreign" / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="model.base_width"):
        run_segment(ckpt, inputs, str(out), overrides=["model.base_width=4"], progress=False)
    with pytest.raises(ResourceError, match="never read"):  # 2 x 1 CPU of 2: no room to read
        run_segment(ckpt, inputs, str(out), overrides=["segment.concurrency=2"], progress=False)
    with pytest.raises(ResourceError, match="GPU"):
        run_segment(ckpt, inputs, str(out), overrides=["segment.gpus_per_actor=1"], progress=False)
    run_segment(ckpt, inputs, str(out), overrides=OVERRIDES, progress=False)
    summary = (out / "summary.json").read_text()
    with pytest.raises(InputError, match="threshold"):
        run_segment(
            ckpt, inputs, str(out), overrides=[*OVERRIDES, "segment.threshold=0.3"], progress=False
        )
    with pytest.raises(InputError, match="written from other inputs"):
        run_segment(
            ckpt, [*inputs, inputs[0] + "/0.png"], str(out), overrides=OVERRIDES, progress=False
        )
    assert (out / "summary.json").read_text() == summary  # a refused run leaves it complete


# --------------------------------------------------------------------------- kill and resume
def _command(
    ckpt: Path, inputs: list[str], out: Path, overrides: list[str], address: str
) -> list[str]:
    """`segray segment ...` once the CLI has the command, else a driver calling run_segment."""
    from segray.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    if "segment" in commands:
        return [
            sys.executable,
            "-m",
            "segray.cli",
            "segment",
            "--checkpoint",
            str(ckpt),
            "--input",
            *inputs,
            "--output",
            str(out),
            "--address",
            address,
            *overrides,
        ]
    args = {
        "checkpoint": str(ckpt),
        "inputs": inputs,
        "output": str(out),
        "overrides": overrides,
        "address": address,
    }
    driver = "import json, sys; from segray.segment import run_segment; run_segment(**json.loads(sys.argv[1]))"
    return [sys.executable, "-c", driver, json.dumps(args)]


def _wait_for_job_processes_to_exit(driver_pid: int, limit: float = 120.0) -> None:
    """Wait until the worker processes of the (killed) driver's Ray job have exited.

    Ray stops a dead driver's tasks and actors asynchronously; until their processes are gone
    they may still write. Ray starts each worker with its job's id in ``RAY_JOB_ID``. Detached
    actors (Ray Data's stats actor) outlive the job by design and write nothing of ours."""
    from ray.util.state import list_actors, list_jobs

    jobs = [j for j in list_jobs() if j.driver_info and j.driver_info.pid == str(driver_pid)]
    assert jobs, f"no Ray job has driver pid {driver_pid}"
    job_id = jobs[0].job_id
    detached = {
        a.pid
        for a in list_actors(filters=[("job_id", "=", job_id)], detail=True, limit=10_000)
        if a.is_detached
    }
    needle = f"RAY_JOB_ID={job_id}".encode()

    def alive() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and needle in Path(f"/proc/{entry}/environ").read_bytes():
                    pids.append(int(entry))
            except OSError:  # exited while we looked
                pass
        return [p for p in pids if p not in detached]

    deadline = time.monotonic() + limit
    while left := alive():
        assert time.monotonic() < deadline, f"job processes {left} still alive after {limit} s"
        time.sleep(0.1)


def _kill_once_committed(
    proc: subprocess.Popen, committed: Callable[[], int], shards: int = 3, poll: float = 0.05
) -> None:
    """SIGKILL the run's process group once ``committed()`` counts ``shards`` committed shard
    files, then wait until its Ray job's processes are gone (their last writes have landed)."""
    deadline = time.monotonic() + 150
    while committed() < shards:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(poll)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    _wait_for_job_processes_to_exit(proc.pid)


def test_killed_run_resumes_without_segmenting_again(ray_local, ckpt, tmp_path: Path):
    import ray

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(2)
    for i in range(N_KILL):
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(
            photos / f"{i:02d}.png"
        )
    out = tmp_path / "out"
    overrides = ["segment.shard_size=2", "segment.batch_size=1"]
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        _command(ckpt, [str(photos)], out, overrides, address),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    parts = out / "parquet"
    _kill_once_committed(proc, lambda: len(list(parts.glob("part-*.parquet"))))

    # What the killed run left: complete shard files only, no summary.
    assert not (out / "summary.json").exists()
    before = pd.read_parquet(parts).set_index("image_id")
    assert 0 < len(before) < N_KILL, "the run finished before it was killed: nothing was tested"
    staged = [p for p in (out / "_staging").rglob("*.parquet") if not p.name.startswith(".")]
    staged_ids = set(pq.read_table(staged).column("image_id").to_pylist()) if staged else set()

    summary = run_segment(ckpt, [str(photos)], str(out), overrides=overrides, progress=False)
    after = _read(out)
    assert len(after) == N_KILL and after.index.is_unique and summary["rows"] == N_KILL
    assert sorted(after.index) == [f"{i:02d}.png" for i in range(N_KILL)]
    # Rows committed before the kill were kept as they were: same run, same time; images
    # staged but not yet committed by the killed run were adopted, not segmented again.
    kept = after.loc[before.index]
    assert (kept.run_id == before.run_id).all() and (kept.segmented_at == before.segmented_at).all()
    first_run = before.run_id.iloc[0]
    assert (after.loc[sorted(staged_ids)].run_id == first_run).all()
    assert summary["skipped"] == int((after.run_id == first_run).sum())
    assert summary["skipped"] == len(before.index.union(sorted(staged_ids)))
    assert summary["processed"] == int((after.run_id == summary["run_id"]).sum()) > 0
    assert summary["processed"] + summary["skipped"] == N_KILL


# --------------------------------------------------------------------------- partial reads
def test_archives_cut_short_are_not_committed_and_a_rerun_finishes_them(
    ray_local, ckpt, tmp_path: Path
):
    """A tar and a Parquet file that fail part-way: every other shard is committed, the run
    says which inputs are short and writes no summary; once the files are restored, a rerun
    (here with --retry-errors, as a user would) completes with one row per image."""
    rng = np.random.default_rng(3)

    def image() -> bytes:
        return _encode(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)))

    tar_path, pq_path = tmp_path / "s.tar", tmp_path / "t.parquet"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(10):
            data = image()
            info = tarfile.TarInfo(f"m{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    names = [f"n{i}" for i in range(6)]
    pq.write_table(pa.table({"image": [image() for _ in range(6)], "name": names}), pq_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"{i}.png").write_bytes(image())
    full_tar, full_pq = tar_path.read_bytes(), pq_path.read_bytes()
    tar_path.write_bytes(full_tar[: len(full_tar) // 2])
    pq_path.write_bytes(full_pq[: len(full_pq) // 2])
    inputs, out = [str(photos), str(tar_path), str(pq_path)], tmp_path / "out"
    with pytest.raises(SegmentError, match=r"2 input archive\(s\) could not be read to the end"):
        run_segment(ckpt, inputs, str(out), overrides=OVERRIDES, progress=False)
    assert not (out / "summary.json").exists()
    committed = pd.read_parquet(out / "parquet")
    assert sorted(committed.image_id) == ["photos/0.png", "photos/1.png", "photos/2.png"]
    tar_path.write_bytes(full_tar)
    pq_path.write_bytes(full_pq)
    summary = run_segment(
        ckpt, inputs, str(out), overrides=OVERRIDES, retry_errors=True, progress=False
    )
    df = _read(out)
    expected = [f"photos/{i}.png" for i in range(3)]
    expected += [f"s.tar/m{i}.png" for i in range(10)] + [f"t.parquet/n{i}" for i in range(6)]
    assert sorted(df.index) == sorted(expected) and df.index.is_unique
    assert summary["complete"] and summary["rows"] == 19 and summary["error"] == 0
    # The tar members read before the cut were kept, not segmented again.
    first_run = df.loc["photos/0.png"].run_id
    assert (df.loc["s.tar/m0.png"].run_id == first_run) and summary["processed"] < 16


def test_adding_an_image_segments_only_its_shard(ray_local, ckpt, tmp_path: Path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(4)
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            photos / f"{i:02d}.png"
        )
    out = str(tmp_path / "out")
    first = run_segment(ckpt, [str(photos)], out, overrides=OVERRIDES, progress=False)
    assert first["shards"] > 3
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photos / "14a.png")
    again = run_segment(ckpt, [str(photos)], out, overrides=OVERRIDES, progress=False)
    df = _read(Path(out))
    assert len(df) == 31 and df.index.is_unique and again["complete"]
    redone = df[df.run_id == again["run_id"]]
    assert "14a.png" in redone.index
    assert again["processed"] == len(redone) <= 4 * 3  # one shard (at most 4 x shard_size)


# --------------------------------------------------------------------------- what a run records
def test_files_not_read_are_counted_by_extension(ray_local, ckpt, tmp_path: Path, capsys):
    inputs = _tiny(tmp_path)
    photos = Path(inputs[0])
    picture = Image.fromarray(np.random.default_rng(5).integers(0, 256, (36, 40, 3), np.uint8))
    picture.save(photos / "scan.jfif", format="JPEG")  # JPEG under another name: read
    picture.save(photos / "scan.jp2", format="JPEG2000")  # read where Pillow has OpenJPEG
    for name in ("notes.txt", "labels.TXT", "scan.xyz", "README"):
        (photos / name).write_text("not an image")
    summary = run_segment(ckpt, inputs, str(tmp_path / "out"), overrides=OVERRIDES)
    assert summary["ignored_files"] == {".txt": 2, ".xyz": 1, "": 1}
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["ignored_files"] == summary["ignored_files"]
    assert "not read (not an image, tar or Parquet): 2 .txt, 1 .xyz, 1 without an extension" in (
        capsys.readouterr().out
    )
    df = _read(tmp_path / "out")
    assert df.loc["scan.jfif"].status == "ok" and df.loc["scan.jp2"].status == "ok"


def test_rows_record_the_resolved_precision_and_a_resume_elsewhere_refuses(
    ray_local, ckpt, tmp_path: Path, monkeypatch
):
    import segray.precision

    inputs, out = _tiny(tmp_path), tmp_path / "out"
    run_segment(ckpt, inputs, str(out), overrides=OVERRIDES, progress=False)
    here = segray.precision.resolve_precision("auto", "cpu")
    settings = json.loads((out / "_segray" / "run.json").read_text())["settings"]
    assert settings["precision"] == here.name != "auto"
    assert settings["channels_last"] is here.channels_last and settings["compile"] is False
    with pytest.raises(InputError, match="compile=False"):
        run_segment(ckpt, inputs, str(out), overrides=[*OVERRIDES, "segment.compile=true"])
    # The same command on a CPU that resolves auto the other way must not add its rows.
    native = segray.precision.cpu_native_bf16()
    monkeypatch.setattr(segray.precision, "cpu_native_bf16", lambda: not native)
    with pytest.raises(InputError, match=f"precision={here.name!r}"):
        run_segment(ckpt, inputs, str(out), overrides=OVERRIDES, progress=False)


# --------------------------------------------------------------------------- masks by path
def test_nested_masks_match_by_relative_path_never_across_folders(ray_local, ckpt, tmp_path: Path):
    rng = np.random.default_rng(3)
    photos, gt = tmp_path / "photos", tmp_path / "gt"
    shapes = {
        "a/s2.png": (36, 40),
        "b/s2.png": (36, 40),
        "a/s3.png": (38, 40),
        "b/s3.png": (38, 40),
    }
    for rel, (h, w) in shapes.items():
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / rel)
    masks = {  # a/s2 all foreground, b/s2 all background; b/s3 has no mask at all
        "a/s2.png": np.full((36, 40), 255, np.uint8),
        "b/s2.png": np.zeros((36, 40), np.uint8),
        "a/s3.png": (rng.random((38, 40)) > 0.5).astype(np.uint8) * 255,
    }
    for rel, mask in masks.items():
        (gt / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(gt / rel)
    masks["b/s2.png"][0, 0] = 255  # one foreground pixel: the mode is chosen as threshold
    Image.fromarray(masks["b/s2.png"]).save(gt / "b/s2.png")
    run_segment(ckpt, [str(photos)], str(tmp_path / "out"), masks=str(gt), overrides=OVERRIDES)
    df = _read(tmp_path / "out")
    for rel in masks:  # each image its own mask, and metrics against it
        row = df.loc[rel]
        assert row.gt_mask == str(gt / rel), rel
        pred = np.asarray(Image.open(io.BytesIO(row.mask_png)))
        target = (masks[rel] > 127).astype(np.int64)
        expected = per_image_metrics(pred, target, num_classes=1, ignore_index=255)
        assert row.dice == pytest.approx(expected["dice"], abs=1e-6, nan_ok=True), rel
    b3 = df.loc["b/s3.png"]  # a/s3.png is in another folder: not its ground truth
    assert b3.status == "ok" and pd.isna(b3.gt_mask) and pd.isna(b3.dice)
