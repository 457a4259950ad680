"""The dataset fingerprint: mask encodings found and mapped, problems, `segray inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segray.cli import main
from segray.config import load_config
from segray.data import DatasetError, build_datasets, fingerprint, inspect_data, prepare_data

W, H = 16, 12
CLASS1 = (slice(0, 3), slice(0, 8))  # 24 of the 192 pixels
CLASS2 = (slice(6, 9), slice(0, 16))  # 48 pixels
BORDER = (slice(3, 4), slice(0, 8))  # 8 pixels


def labels(kind: str) -> np.ndarray:
    """(H, W) class indices: binary (class 1 = 1/8 of the pixels) or 3 classes."""
    out = np.zeros((H, W), np.uint8)
    out[CLASS1] = 1
    if kind == "palette":
        out[CLASS2] = 2
    return out


def mask_image(kind: str) -> Image.Image:
    """The mask of ``labels(kind)`` in the encoding ``kind``."""
    lab = labels(kind)
    gray = lab * 255
    if kind == "0/1":
        return Image.fromarray(lab)
    if kind == "0/255":
        return Image.fromarray(gray)
    if kind == "16-bit 0/65535":
        return Image.fromarray(lab.astype(np.uint16) * 65535)
    if kind == "LA":
        return Image.fromarray(np.dstack([gray, np.full_like(gray, 255)]), mode="LA")
    if kind == "RGBA":
        return Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 200)]))
    if kind == "RGB gray":
        return Image.fromarray(np.dstack([gray] * 3))
    if kind == "palette":
        img = Image.fromarray(lab, mode="P")
        img.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30])
        return img
    if kind == "trimap":
        tri = np.full((H, W), 2, np.uint8)
        tri[CLASS1] = 1
        tri[BORDER] = 3
        return Image.fromarray(tri)
    if kind == "ambiguous":
        out = lab * 200
        out[BORDER] = 37
        return Image.fromarray(out)
    raise ValueError(kind)


def image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))


def make_layout(root: Path, kind: str, n: int = 4, *, mask_name: str = "{}.png") -> Path:
    """``n`` pairs of ``kind`` masks: images/ + masks/, or the Oxford Pet layout (trimap)."""
    if kind == "trimap":
        images, masks = root / "images", root / "annotations" / "trimaps"
        (root / "annotations").mkdir(parents=True)
        (root / "annotations" / "trainval.txt").write_text(
            "".join(f"cat_{i} 1 1 1\n" for i in range(n))
        )
        names = [f"cat_{i}" for i in range(n)]
    else:
        images, masks = root / "images", root / "masks"
        names = [f"{i:02d}" for i in range(n)]
    images.mkdir(parents=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        image(i).save(images / f"{name}.{'jpg' if kind == 'trimap' else 'png'}")
        mask_image(kind).save(masks / mask_name.format(name))
    return root


# layout -> (classes, detected mode, mapping, class fractions)
BINARY = {"background": 7 / 8, "foreground": 1 / 8}
LAYOUTS = {
    "0/1": (2, "index", {"0": "background", "1": "foreground"}, BINARY),
    "0/255": (2, "threshold", {"0": "background", "255": "foreground"}, BINARY),
    "16-bit 0/65535": (2, "threshold", {"0": "background", "65535": "foreground"}, BINARY),
    "LA": (2, "threshold", {"0": "background", "255": "foreground"}, BINARY),
    "RGBA": (2, "threshold", {"0": "background", "255": "foreground"}, BINARY),
    "RGB gray": (2, "threshold", {"0": "background", "255": "foreground"}, BINARY),
    "palette": (
        3,
        "index",
        {"0": "background", "1": "a", "2": "b"},
        {"background": 120 / 192, "a": 24 / 192, "b": 48 / 192},
    ),
    "trimap": (
        2,
        "trimap",
        {"1": "foreground", "2": "background", "3": "foreground"},
        {"background": 160 / 192, "foreground": 32 / 192},
    ),
}


def inspect_args(kind: str, root: Path) -> list[str]:
    classes = LAYOUTS[kind][0]
    args = [str(root)]
    if kind == "trimap":
        args.append("data.source=pet")
    if classes == 3:
        args += ["data.classes=[background,a,b]", "loss.name=ce"]
    return args


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_inspect_detects_each_encoding(kind, tmp_path, capsys):
    root = make_layout(tmp_path / "data", kind)
    out = tmp_path / "out"
    assert main(["inspect", *inspect_args(kind, root), "--output", str(out)]) == 0
    classes, mode, mapping, fractions = LAYOUTS[kind]
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["pairs"] == 4 and fp["sampled_pairs"] == 4
    assert fp["mask_mode"] == mode and fp["mask_mode_auto"] is True
    assert fp["mask_settings"]["data.mask_mode"] == mode
    assert fp["mapping"] == mapping
    assert fp["class_fraction"] == pytest.approx(fractions)
    assert fp["foreground_fraction"] == pytest.approx(1 - next(iter(fractions.values())))
    assert fp["error"] is None and fp["problems"]["counts"] == {}
    assert fp["images"]["width"] == {"min": W, "median": W, "max": W}
    text = capsys.readouterr().out
    assert f"mask_mode              {mode} (auto: " in text
    assert f"train and tune will use: data.mask_mode={mode}" in text


@pytest.mark.parametrize("kind", ["0/1", "RGBA", "palette", "trimap"])
def test_prepare_data_resolves_auto_to_a_concrete_mode(kind, tmp_path):
    root = make_layout(tmp_path / "data", kind)
    overrides = [o for o in inspect_args(kind, root)[1:]]
    source = [] if kind == "trimap" else ["data.source=folder"]
    cfg = load_config(None, [*source, f"data.root={root}", "model.name=unet", *overrides])
    assert cfg.data.mask_mode == "auto"
    prepared, fp = inspect_data(cfg)
    assert prepared.data.mask_mode == LAYOUTS[kind][1] == fp.mask_mode
    assert "mask_mode: auto" not in prepared.to_yaml()  # what checkpoints and segment read
    # The mapped targets hold the classes, exactly where they were drawn.
    split = {"train": ["00", "01"], "val": ["02", "03"]}
    if kind == "trimap":
        split = {"train": ["cat_0", "cat_1"], "val": ["cat_2", "cat_3"]}
    prepared = prepared.model_copy(
        update={"data": prepared.data.model_copy(update={"split_ids": split})}
    )
    _, target = build_datasets(prepared)["val"][0]
    expected = labels(kind).astype(np.int64)
    if kind == "trimap":
        expected[BORDER] = 1  # border -> foreground (data.trimap_uncertain)
    assert target.numpy().tolist() == expected.tolist()


def test_threshold_keeps_working_and_isbi_style_config_is_unchanged(tmp_path):
    root = make_layout(tmp_path / "data", "0/255")
    base = ["data.source=folder", f"data.root={root}"]
    explicit = prepare_data(load_config(None, [*base, "data.mask_mode=threshold"]))
    auto = prepare_data(load_config(None, base))
    assert explicit.data == auto.data  # threshold at 127, as the ISBI config sets it


def test_ambiguous_values_are_one_line_with_the_histogram(tmp_path):
    root = make_layout(tmp_path / "data", "ambiguous")
    cfg = load_config(None, ["data.source=folder", f"data.root={root}"])
    with pytest.raises(DatasetError) as e:
        prepare_data(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{root}: cannot choose data.mask_mode; mask values {{0: ")
    assert "37: 4.2%" in msg and "200: 12.5%" in msg  # the histogram (pixel shares)
    assert "data.mask_mode=threshold data.mask_threshold=T" in msg
    assert "data.mask_mode=values" in msg


def test_no_foreground_under_the_mapping_fails_before_training(tmp_path):
    root = make_layout(tmp_path / "data", "0/1")
    cfg = load_config(None, ["data.source=folder", f"data.root={root}", "data.mask_mode=threshold"])
    with pytest.raises(DatasetError) as e:  # 0/1 masks under the old default: all background
        prepare_data(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{root}: no mask has foreground under data.mask_mode=threshold")
    assert "mask values {0: 87.5%, 1: 12.5%} over 4 masks" in msg


def test_all_background_masks_fail_under_auto(tmp_path):
    root = make_layout(tmp_path / "data", "0/1")
    for path in (root / "masks").iterdir():
        Image.fromarray(np.zeros((H, W), np.uint8)).save(path)
    with pytest.raises(DatasetError, match=r"no foreground: every sampled mask is background; "):
        prepare_data(load_config(None, ["data.source=folder", f"data.root={root}"]))


def test_rare_foreground_outside_the_sample_is_found(tmp_path):
    root = make_layout(tmp_path / "data", "0/255", n=9)
    masks = sorted((root / "masks").iterdir())
    for path in masks[:3] + masks[4:]:  # only 03 has foreground; 00 and 08 are sampled first
        Image.fromarray(np.zeros((H, W), np.uint8)).save(path)
    cfg = prepare_data(load_config(None, ["data.source=folder", f"data.root={root}"]))
    data = cfg.data.model_copy(update={"mask_mode": "auto"})
    fp = fingerprint(data, sample=2)
    assert fp.error is None and fp.mask_mode == "threshold"
    assert fp.sampled > 2  # read on until a mask with foreground turned up
    assert sum(1 for kind, _ in fp.suspicious if kind == "empty mask") == fp.sampled - 1


def test_problems_and_suspicious_files_are_reported(tmp_path, capsys):
    root = make_layout(tmp_path / "data", "0/255", n=3)
    Image.new("RGB", (W, H), (7, 7, 7)).save(root / "images" / "00.png")  # constant image
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "masks" / "01.png")  # empty mask
    image(5).save(root / "images" / "lonely.png")
    out = tmp_path / "out"
    assert main(["inspect", str(root), "-o", str(out)]) == 2
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["problems"]["counts"] == {"image without a mask": 1}
    assert fp["problems"]["first"] == [f"images/lonely.png: no mask in {root / 'masks'}"]
    assert fp["suspicious"]["counts"] == {"empty mask": 1, "constant image": 1}
    assert "masks/01.png: empty mask (all background)" in fp["suspicious"]["first"]
    assert "images/00.png: constant image (every pixel 7)" in fp["suspicious"]["first"]
    captured = capsys.readouterr()
    assert "problems (1):" in captured.out and "suspicious (2):" in captured.out
    assert captured.err.startswith("segray: error: dataset ") and "1 image without a mask" in (
        captured.err
    )


def test_colour_masks_are_a_problem_naming_the_file(tmp_path):
    root = make_layout(tmp_path / "data", "0/255", n=2)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[CLASS1] = (200, 30, 30)
    Image.fromarray(rgb).save(root / "masks" / "01.png")
    with pytest.raises(DatasetError, match=r"1 unusable file\); first: masks/01\.png: colour mask"):
        prepare_data(load_config(None, ["data.source=folder", f"data.root={root}"]))


def test_mask_suffix_layout_and_synthetic_default(tmp_path, capsys):
    root = make_layout(tmp_path / "data", "0/1", mask_name="{}_mask.gif")
    assert main(["inspect", str(root), "-o", str(tmp_path)]) == 0
    fp = json.loads((tmp_path / "fingerprint.json").read_text())
    assert fp["pairs"] == 4 and fp["mask_mode"] == "index" and fp["masks"]["modes"] == {"P": 4}
    # Without DATA: the config's dataset (the built-in synthetic one), its mode set by prepare_data
    assert (
        main(["inspect", "data.synthetic.num=8", "data.synthetic.size=32", "-o", str(tmp_path)])
        == 0
    )
    fp = json.loads((tmp_path / "fingerprint.json").read_text())
    assert fp["source"] == "synthetic" and fp["pairs"] == 8
    assert fp["mask_mode"] == "threshold" and fp["mask_mode_auto"] is False
    assert 0 < fp["foreground_fraction"] < 1


@pytest.mark.integration
def test_training_on_0_1_masks_records_the_chosen_mapping(ray_local, tmp_path):
    from segray.checkpoint import load_checkpoint_config
    from segray.train import run_training

    root = make_layout(tmp_path / "data", "0/1", n=6)
    split = "data.split_ids={train: ['00','01','02','03'], val: ['04','05']}"
    overrides = ["data.source=folder", f"data.root={root}", split, "data.image_size=32"]
    tiny = ["data.train_transform=resize", "data.eval_transform=resize", "model.name=unet"]
    cfg = load_config(None, overrides + tiny + ["train.epochs=1", "train.num_workers=1"])
    result = run_training(cfg, tmp_path / "run")
    fp = json.loads((tmp_path / "run" / "fingerprint.json").read_text())
    assert fp["mask_mode"] == "index" and fp["mapping"] == {"0": "background", "1": "foreground"}
    assert load_config(tmp_path / "run" / "config.yaml", []).data.mask_mode == "index"
    assert load_checkpoint_config(result.best).data.mask_mode == "index"  # what segment reads


def test_pet_trimaps_in_a_plain_folder_suggest_trimap(tmp_path):
    root = make_layout(tmp_path / "pet", "trimap")
    (root / "masks").mkdir()
    for path in (root / "annotations" / "trimaps").iterdir():
        path.rename(root / "masks" / path.name)
    with pytest.raises(DatasetError) as e:  # {1, 2, 3} is Pet's only with data.source=pet
        prepare_data(load_config(None, ["data.source=folder", f"data.root={root}"]))
    msg = str(e.value)
    assert "cannot choose data.mask_mode; mask values {1: 12.5%, 2: 83.3%, 3: 4.2%}" in msg
    assert "set one of data.mask_mode=trimap (Oxford Pet" in msg
