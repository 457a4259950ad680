"""``data.root`` on object storage, against a real S3 API (moto's server on 127.0.0.1): the
dataset is mirrored into the cache once per node, kept in sync from one listing, and read
exactly like the local folder it was uploaded from."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from segray.cli import main
from segray.config import load_config
from segray.data import (
    DatasetError,
    build_datasets,
    decode_image,
    fingerprint,
    generate,
    inspect_data,
    list_samples,
    mirror,
    prepare_data,
    read_mask,
)
from segray.data.remote import mirror_dir
from segray.storage import Location
from tests.conftest import TINY
from tests.test_evaluate import IMAGES, SPLIT_IDS, TINY_UNET, _checkpoint, _write_folder

KEYS = [key for key, _, _ in IMAGES]
FILES = sorted(f"{sub}/{key}.png" for key in KEYS for sub in ("images", "masks"))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A cache per test: each test sees its mirrors made from scratch."""
    monkeypatch.setenv("SEGRAY_CACHE", str(tmp_path / "cache"))


def _upload(local: Path, uri: str) -> None:
    """Every file under ``local`` (hidden ones included) to ``uri``, one PUT each."""
    dest = Location.parse(uri)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        dest.join(path.relative_to(local).as_posix()).write(path.read_bytes())


@pytest.fixture
def dataset(s3_bucket, tmp_path) -> tuple[Path, str]:
    """The 6-pair folder of test_evaluate, locally and uploaded to ``s3://<bucket>/ds``, with a
    hidden ``.DS_Store`` in each copy (never mirrored)."""
    local = _write_folder(tmp_path / "local", 2)
    (local / "images" / ".DS_Store").write_bytes(b"finder")
    uri = f"{s3_bucket}/datasets/membranes"
    _upload(local, uri)
    return local, uri


def _config(root: str | Path, *extra: str):
    return load_config(None, ["data.source=folder", f"data.root={root}", SPLIT_IDS, *extra])


def _stats(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (inode, mtime_ns) of every non-hidden file: a download replaces both."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def test_uri_root_yields_the_samples_of_the_local_copy(dataset):
    local, uri = dataset
    remote_cfg = prepare_data(_config(uri))
    local_cfg = prepare_data(_config(local))
    assert remote_cfg.data.root == uri  # workers on other nodes mirror it themselves
    assert local_cfg.data.root == str(local)
    assert remote_cfg.data.mask_mode == local_cfg.data.mask_mode == "threshold"
    remote, here = build_datasets(remote_cfg), build_datasets(local_cfg)
    for split in ("train", "val", "test"):
        assert [s.key for s in remote[split].samples] == [s.key for s in here[split].samples]
        for a, b in zip(remote[split].samples, here[split].samples, strict=True):
            assert Path(a.image).is_relative_to(mirror_dir(uri))
            assert np.array_equal(
                decode_image(a.image, channels=3), decode_image(b.image, channels=3)
            )
            assert np.array_equal(read_mask(a.mask), read_mask(b.mask))
    for i in range(len(here["val"])):  # eval transform: deterministic, full resolution
        for x, y in zip(remote["val"][i], here["val"][i], strict=True):
            assert torch.equal(x, y)
    mirrored = mirror_dir(uri)
    assert sorted(_stats(mirrored)) == FILES
    assert not (mirrored / "images" / ".DS_Store").exists()  # hidden: skipped
    assert (mirrored / ".complete").is_file()


def test_second_use_downloads_nothing(dataset):
    _, uri = dataset
    first = mirror(uri)
    assert list(first.downloaded) == FILES and first.files == len(FILES)
    before = _stats(first.path)
    build_datasets(prepare_data(_config(uri)))  # 2 listings, every file found up to date
    again = mirror(uri)
    assert again.downloaded == () and again.removed == () and again.files == len(FILES)
    assert _stats(first.path) == before


def test_a_changed_object_is_fetched_again_and_only_it(dataset):
    local, uri = dataset
    mirror(uri)
    before = _stats(mirror_dir(uri))
    changed = np.zeros((48, 48), np.uint8)
    changed[:8] = 255  # another mask, another size in bytes
    path = local / "masks" / "a1.png"
    old_size = path.stat().st_size
    Image.fromarray(changed).save(path)
    assert path.stat().st_size != old_size
    Location.parse(uri).join("masks/a1.png").write(path.read_bytes())

    again = mirror(uri)
    assert again.downloaded == ("masks/a1.png",) and again.removed == ()
    after = _stats(again.path)
    assert after["masks/a1.png"] != before["masks/a1.png"]
    assert {k: v for k, v in after.items() if k != "masks/a1.png"} == {
        k: v for k, v in before.items() if k != "masks/a1.png"
    }
    assert np.array_equal(read_mask(str(again.path / "masks/a1.png")), changed)


def test_deleted_objects_leave_the_mirror(dataset):
    _, uri = dataset
    mirror(uri)
    for rel in ("images/c0.png", "masks/c0.png"):
        Location.parse(uri).join(rel).delete()
    again = mirror(uri)
    assert again.removed == ("images/c0.png", "masks/c0.png") and again.downloaded == ()
    assert sorted(_stats(again.path)) == [f for f in FILES if "c0" not in f]
    assert [s.key for s in list_samples(_config(uri).data)] == [k for k in KEYS if k != "c0"]


def test_a_file_lost_from_the_cache_is_fetched_again(dataset):
    _, uri = dataset
    first = mirror(uri)
    (first.path / "images" / "b1.png").unlink()
    assert mirror(uri).downloaded == ("images/b1.png",)
    assert (first.path / "images" / "b1.png").is_file()


def test_concurrent_callers_download_each_file_once(dataset):
    _, uri = dataset
    results, errors = [], []

    def call() -> None:
        try:
            results.append(mirror(uri))
        except Exception as e:  # noqa: BLE001  (reported by the assertion below)
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    downloads = sorted(rel for r in results for rel in r.downloaded)
    assert downloads == FILES  # the lock serialised them: one sync fetched, the others reused
    assert all(r.files == len(FILES) for r in results)


def test_fingerprint_and_inspect_on_a_uri(dataset, tmp_path, capsys):
    local, uri = dataset
    remote_fp = fingerprint(_config(uri).data)
    local_fp = fingerprint(_config(local).data)
    assert remote_fp.root == uri and remote_fp.usable
    assert remote_fp.pairs == local_fp.pairs == len(KEYS)
    assert remote_fp.histogram == local_fp.histogram
    assert remote_fp.updates == local_fp.updates
    assert remote_fp.updates["data.mask_mode"] == "threshold"
    cfg, fp = inspect_data(_config(uri))
    assert cfg.data.root == uri and fp.root == uri

    assert main(["inspect", uri, "-o", str(tmp_path / "fp")]) == 0
    saved = json.loads((tmp_path / "fp" / "fingerprint.json").read_text())
    assert saved["root"] == uri and saved["pairs"] == len(KEYS)
    assert uri in capsys.readouterr().out


def test_dataset_problems_name_the_uri(s3_bucket, tmp_path):
    local = _write_folder(tmp_path / "local", 2)
    (local / "masks" / "b0.png").unlink()
    uri = f"{s3_bucket}/broken"
    _upload(local, uri)
    with pytest.raises(DatasetError, match=r"^dataset s3://[^ ]+/broken: 1 problem") as e:
        prepare_data(_config(uri))
    assert str(mirror_dir(uri)) not in str(e.value) and "\n" not in str(e.value)


def test_evaluate_reads_a_uri(dataset, tmp_path):
    local, uri = dataset
    ckpt = _checkpoint(tmp_path / "ckpt", TINY_UNET + [SPLIT_IDS])
    out = tmp_path / "report"
    args = ["evaluate", "--checkpoint", str(ckpt), "--split", "all", "--worst", "1"]
    assert main([*args, "--data", uri, "-o", str(out / "remote")]) == 0
    assert main([*args, "--data", str(local), "-o", str(out / "local")]) == 0
    remote = json.loads((out / "remote" / "metrics.json").read_text())
    here = json.loads((out / "local" / "metrics.json").read_text())
    assert remote["num_images"] == len(KEYS)
    assert {k: v for k, v in remote.items() if k != "data"} == {
        k: v for k, v in here.items() if k != "data"
    }


@pytest.mark.parametrize("where", ["/datasets/nothing-here", "-missing-bucket/data"])
def test_a_missing_uri_is_one_line_naming_it(s3_bucket, where):
    uri = f"{s3_bucket}{where}"
    with pytest.raises(DatasetError, match=r"^data\.root s3://") as e:
        prepare_data(_config(uri))
    assert uri in str(e.value) and "\n" not in str(e.value)


def test_only_hidden_files_is_no_dataset(s3_bucket):
    uri = f"{s3_bucket}/hidden"
    Location.parse(uri).join(".keep").write(b"")
    with pytest.raises(DatasetError, match="no files there"):
        mirror(uri)


def test_synthetic_data_with_a_uri_root_is_refused(s3_bucket):
    cfg = load_config(None, ["data.source=synthetic", f"data.root={s3_bucket}/synth"])
    with pytest.raises(DatasetError, match=r"synthetic data is generated on local disk"):
        prepare_data(cfg)


@pytest.mark.integration
@pytest.mark.slow
def test_training_reads_a_uri_root(ray_exclusive, s3_bucket, tmp_path):
    """`segray train` with 2 DDP workers: the driver and both workers read the one mirror of
    this node, and the run's config keeps the URI."""
    generate(tmp_path / "synth", num=16, size=64, num_classes=2, seed=0)  # keys of TINY
    uri = f"{s3_bucket}/synth16"
    _upload(tmp_path / "synth", uri)
    out, log = tmp_path / "run", tmp_path / "train.log"
    with open(log, "w") as f:  # AWS_* and SEGRAY_CACHE reach the run and its Ray workers
        run = subprocess.run(
            [sys.executable, "-m", "segray.cli", "train", "--output", str(out), *TINY]
            + ["data.source=folder", f"data.root={uri}"],
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    assert run.returncode == 0, log.read_text()[-4000:]
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["root"] == uri
    assert len(pd.read_parquet(out / "history.parquet")) == 2
    assert (mirror_dir(uri) / ".complete").is_file()
    assert log.read_text().count(f"data: mirrored {uri}") == 1  # downloaded once on this node
