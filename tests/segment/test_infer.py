"""segray.segment.infer and checks: per-image results, actor options, settings (no Ray)."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segray.segment.infer import encode_mask_png, ground_truth_metrics, mask_stats
from segray.segment.stage import mask_png_name


def test_mask_png_keeps_class_indices():
    mask = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    decoded = Image.open(io.BytesIO(encode_mask_png(mask, 3)))
    assert decoded.mode == "P" and np.array_equal(np.asarray(decoded), mask)


def test_mask_stats_binary_and_multiclass():
    proba = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.65]], np.float32)
    mask = (proba >= 0.5).astype(np.uint8)
    s = mask_stats(proba, mask, low=0.3, high=0.7)
    assert s["foreground_fraction"] == pytest.approx(4 / 6)
    assert s["class_fraction"] == pytest.approx([2 / 6, 4 / 6])
    assert s["uncertain_fraction"] == pytest.approx(2 / 6)
    assert s["mean_confidence"] == pytest.approx(np.mean([0.9, 0.9, 0.5, 0.8, 0.8, 0.65]))
    assert s["num_components"] == 1  # (1,0) touches (0,1) diagonally: 8-connected
    two = np.array([[0.9, 0.1, 0.9], [0.9, 0.1, 0.9]], np.float32)
    assert mask_stats(two, (two >= 0.5).astype(np.uint8), low=0.3, high=0.7)["num_components"] == 2
    proba3 = np.stack([1 - proba, proba * 0.5, proba * 0.5])
    mask3 = proba3.argmax(0).astype(np.uint8)
    s3 = mask_stats(proba3, mask3, low=0.3, high=0.7)
    assert len(s3["class_fraction"]) == 3 and sum(s3["class_fraction"]) == pytest.approx(1)


def test_ground_truth_metrics_are_null_where_undefined():
    none = np.zeros((4, 4), np.uint8)
    some = none.copy()
    some[0] = 1
    some[1, 0] = 255  # ignored
    empty = ground_truth_metrics(none, none.astype(np.int32), num_classes=1, ignore_index=255)
    assert empty == {
        "gt_foreground_fraction": 0.0,
        "dice": None,  # nothing to find, nothing found: undefined, not 1.0
        "iou": None,
        "precision": None,
        "recall": None,
        "accuracy": 1.0,
        "hd95": None,  # boundaries: undefined too, never a perfect 0 / 1.0 (segray.structure)
        "msd": None,
        "boundary_f1": None,
    }
    missed = ground_truth_metrics(none, some.astype(np.int32), num_classes=1, ignore_index=255)
    assert missed["gt_foreground_fraction"] == pytest.approx(4 / 15)
    assert (missed["dice"], missed["recall"], missed["precision"]) == (0.0, 0.0, None)
    # missed entirely: the worst case, the image diagonal (4 x 4) and F1 0
    assert (missed["hd95"], missed["msd"], missed["boundary_f1"]) == (
        pytest.approx(math.hypot(4, 4)),
        pytest.approx(math.hypot(4, 4)),
        0.0,
    )
    hit = ground_truth_metrics(
        some.clip(0, 1), some.astype(np.int32), num_classes=1, ignore_index=255
    )
    assert (hit["dice"], hit["precision"], hit["recall"]) == (1.0, 1.0, 1.0)
    assert (hit["hd95"], hit["msd"], hit["boundary_f1"]) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="class indices"):
        ground_truth_metrics(none, none.astype(np.int32) + 7, num_classes=1, ignore_index=255)


def test_mask_png_names_keep_the_extension_and_stay_inside_the_folder():
    ids = ["x.jpg", "x.png", "a/x.png", "s.tar/../up.png", "s.tar/a.png#2", "p%2E%2E.png", "..x"]
    names = ["/".join(mask_png_name(i)) for i in ids]
    assert names[:3] == ["x.jpg.png", "x.png.png", "a/x.png.png"]
    assert len(set(names)) == len(ids)  # distinct ids, distinct files
    assert all(".." not in n.split("/") and "." not in n.split("/") for n in names)
    assert names[3] == "s.tar/%2E%2E/up.png.png" and names[5] == "p%252E%252E.png.png"


def test_segment_settings_from_a_config_file_then_overrides(tmp_path: Path):
    from segray.checkpoint import save_checkpoint
    from segray.config import ConfigError, load_config
    from segray.models import create_model
    from segray.segment.checks import segment_config

    cfg = load_config(None, ["model.name=unet", "model.base_width=4", "segment.batch_size=2"])
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, model=create_model("unet", base_width=4), config=cfg, metrics={})
    cluster = Path(__file__).resolve().parents[2] / "configs" / "segment_cluster.yaml"
    cfg = segment_config(str(ckpt), ["segment.concurrency=3"], cluster)
    assert cfg.model.name == "unet"  # the model stays the checkpoint's
    assert cfg.segment.gpus_per_actor == 1 and cfg.segment.batch_size == 16  # from the file
    assert cfg.segment.concurrency == 3  # the command line wins
    bad = tmp_path / "bad.yaml"
    bad.write_text("segment: {batch_size: 4}\nmodel: {base_width: 8}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: model\.base_width"):
        segment_config(str(ckpt), [], bad)


# --------------------------------------------------------------------------- actor options
@pytest.mark.parametrize(("heap_reuse", "onednn_cache"), [(True, "0"), (False, "null")])
def test_actor_options_carry_resources_and_env(heap_reuse: bool, onednn_cache: str) -> None:
    from segray.cluster import HEAP_REUSE_ENV
    from segray.config import load_config
    from segray.segment import actor_options

    cfg = load_config(
        None,
        [
            "segment.concurrency=3",
            "segment.cpus_per_actor=1.5",
            "segment.gpus_per_actor=0.5",
            f"segment.heap_reuse={str(heap_reuse).lower()}",
            f"segment.onednn_cache={onednn_cache}",
        ],
    )
    options = actor_options(cfg.segment)
    assert (options["compute"].min_size, options["compute"].max_size) == (3, 3)
    assert (options["num_cpus"], options["num_gpus"]) == (1.5, 0.5)
    expected = dict(HEAP_REUSE_ENV) if heap_reuse else {}
    if onednn_cache == "0":  # no per-shape kernel cache; ideep's LRU cache takes at least 1
        expected |= {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "LRU_CACHE_CAPACITY": "1"}
    assert options["runtime_env"] == {"env_vars": expected}


def test_pipeline_modules_import_without_torch() -> None:
    """Ray starts fresh workers for read/decode/write tasks; they must not pay for torch."""
    code = (
        "import sys, segray.segment, segray.segment.run, segray.data.io, segray.data.masks; "
        "heavy = [m for m in ('torch', 'albumentations') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
