"""The dataset fingerprint: mask encodings found and mapped, problems, `segray inspect`."""

from __future__ import annotations

import json
import re
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


def test_slices_of_volumes_without_group_by_are_a_warning(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for v in range(3):
        for z in range(4):
            image(4 * v + z).save(root / "images" / f"vol{v}_z{z:03d}.png")
            mask_image("0/255").save(root / "masks" / f"vol{v}_z{z:03d}.png")
    out = tmp_path / "out"
    assert main(["inspect", str(root), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 of 12 stems look like slices of 3 volumes" in printed
    assert r"data.group_by='^(vol\d+)'" in printed
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["suspicious"]["counts"] == {"slices of volumes": 1}
    grouped = tmp_path / "grouped"
    assert main(["inspect", str(root), r"data.group_by=^(vol\d+)", "-o", str(grouped)]) == 0
    assert "look like slices" not in capsys.readouterr().out
    assert json.loads((grouped / "fingerprint.json").read_text())["suspicious"]["counts"] == {}


# --------------------------------------------------------------------------- mask encodings
def disc_mask(size: int, seed: int = 0) -> np.ndarray:
    """A 0/255 disc on (size, size), off-centre by ``seed``."""
    y, x = np.mgrid[:size, :size]
    cx, cy, r = size * (0.45 + 0.02 * seed), size * 0.5, size * 0.22
    return (((x - cx) ** 2 + (y - cy) ** 2) < r * r).astype(np.uint8) * 255


def anti_aliased(size: int, seed: int = 0) -> np.ndarray:
    """A binary mask resized with bilinear interpolation: 0/255 plus in-between edge values."""
    big = Image.fromarray(disc_mask(int(size * 1.37), seed))
    return np.asarray(big.resize((size, size), Image.Resampling.BILINEAR))


def write_set(root: Path, masks: list[Image.Image], ext: str = "png", **save) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(masks):
        w, h = mask.size
        rgb = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{i:02d}.png")
        mask.save(root / "masks" / f"{i:02d}.{ext}", **save)
    return root


def test_anti_aliased_masks_are_threshold_with_a_warning(tmp_path, capsys):
    masks = [anti_aliased(256, i) for i in range(4)]
    share = np.mean([((m > 31) & (m < 224)).mean() for m in masks])
    assert 0.001 < share < 0.01 and len(np.unique(masks[0])) > 20  # edges, as a resize makes
    root = write_set(tmp_path / "data", [Image.fromarray(m) for m in masks])
    out = tmp_path / "out"
    assert main(["inspect", str(root), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["mask_mode"] == "threshold" and fp["error"] is None
    assert fp["mask_settings"] == {"data.mask_mode": "threshold", "data.mask_threshold": 127}
    assert fp["warning"].startswith(f"masks are near-binary 0/255: {share:.2%} of the pixels ")
    assert "anti-aliased edges" in fp["warning"]
    assert "warning: masks are near-binary 0/255" in printed
    assert re.search(r"0\.\.12\d -> background, 1[23]\d\.\.255 -> foreground", printed)
    # train and tune read them so: the training target is the thresholded mask
    cfg = load_config(None, ["data.source=folder", f"data.root={root}", "data.split=[0.5,0.5,0]"])
    prepared = prepare_data(cfg)
    assert prepared.data.mask_mode == "threshold" and prepared.data.mask_threshold == 127
    ds = build_datasets(prepared.model_copy(update={}))
    pairs = [*ds["train"].samples, *ds["val"].samples]
    target = ds["train"].mapper.read(pairs[0].mask)
    expected = (np.asarray(Image.open(pairs[0].mask)) > 127).astype(np.int64)
    assert target.tolist() == expected.tolist()


def test_jpeg_masks_are_threshold_with_a_warning_naming_jpeg(tmp_path):
    masks = [Image.fromarray(disc_mask(96, i)) for i in range(4)]
    root = write_set(tmp_path / "data", masks, ext="jpg", quality=75)
    raw = np.asarray(Image.open(root / "masks" / "00.jpg"))
    assert ((raw > 0) & (raw < 255)).mean() > 0.01  # JPEG ringing: more than 1% off 0/255
    fp = fingerprint(load_config(None, ["data.source=folder", f"data.root={root}"]).data)
    assert fp.error is None and fp.mask_mode == "threshold"
    assert fp.updates["data.mask_threshold"] == 127
    assert fp.warning is not None and "JPEG artefacts" in fp.warning
    assert "JPEG artefacts" in fp.summary()  # the line train and tune print


def test_heavily_anti_aliased_masks_are_refused_naming_the_encoding_and_setting(tmp_path):
    root = write_set(tmp_path / "data", [Image.fromarray(anti_aliased(24, i)) for i in range(4)])
    with pytest.raises(DatasetError) as e:
        prepare_data(load_config(None, ["data.source=folder", f"data.root={root}"]))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{root}: cannot choose data.mask_mode; mask values")
    assert "binary masks with anti-aliased edges" in msg
    assert msg.endswith("set data.mask_mode=threshold data.mask_threshold=127")


def test_index_and_palette_masks_with_stray_values_are_still_refused(tmp_path):
    lab = labels("0/1")
    stray = lab.copy()
    stray[10, :4] = [5, 7, 9, 11]  # stray values in 0/1 index masks
    root = write_set(tmp_path / "index", [Image.fromarray(stray)] * 4)
    with pytest.raises(DatasetError, match="cannot choose data.mask_mode; mask values"):
        prepare_data(load_config(None, ["data.source=folder", f"data.root={root}"]))
    pal = (lab * 200).astype(np.uint8)
    pal[10, :5] = [20, 60, 90, 120, 150]  # palette indices between 0 and 200: not anti-aliasing
    img = Image.fromarray(pal, mode="P")
    img.putpalette([v for i in range(256) for v in (i, i, i)])
    root = write_set(tmp_path / "palette", [img] * 4)
    with pytest.raises(DatasetError) as e:
        prepare_data(load_config(None, ["data.source=folder", f"data.root={root}"]))
    assert "cannot choose data.mask_mode" in str(e.value) and "anti-aliased" not in str(e.value)


def test_index_masks_0_to_3_give_4_classes_in_inspect_as_in_auto(tmp_path, capsys):
    lab = np.zeros((H, W), np.uint8)
    lab[:, 4:8], lab[:, 8:12], lab[:, 12:] = 1, 2, 3
    root = write_set(tmp_path / "data", [Image.fromarray(lab)] * 4)
    out = tmp_path / "out"
    assert main(["inspect", str(root), "-o", str(out)]) == 0
    names = ["background", "class_1", "class_2", "class_3"]
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["mask_mode"] == "index" and list(fp["class_fraction"]) == names
    assert fp["mapping"] == dict(zip("0123", names, strict=True))
    printed = capsys.readouterr().out
    assert f"train and tune will use: data.mask_mode=index data.classes={names}" in printed
    prepared = prepare_data(load_config(None, ["data.source=folder", f"data.root={root}"]))
    assert prepared.data.classes == names and prepared.num_classes == 4  # train and tune
    # two classes set explicitly: refused, naming the encoding and the setting
    two = ["data.source=folder", f"data.root={root}", "data.classes=[bg,fg]"]
    with pytest.raises(DatasetError) as e:
        prepare_data(load_config(None, two))
    assert "index masks with 4 classes (values 0..3): set data.classes=[background,class_1," in (
        str(e.value)
    )


def test_colour_masks_map_through_mask_colors(tmp_path, capsys):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[CLASS1] = (255, 0, 0)
    rgb[CLASS2] = (0, 255, 0)
    root = write_set(tmp_path / "data", [Image.fromarray(rgb)] * 4)
    base = ["data.source=folder", f"data.root={root}"]
    with pytest.raises(DatasetError) as e:  # without the setting: the colours and the setting
        prepare_data(load_config(None, base))
    assert "colour mask (mode RGB; colours (0, 255, 0), (255, 0, 0))" in str(e.value)
    assert (
        """set data.mask_colors to each colour's class, e.g. 'data.mask_colors={"#000000": 0"""
        in (str(e.value))
    )
    colors = 'data.mask_colors={"#000000": 0, "255,0,0": 1, "#00FF00": 2}'
    out = tmp_path / "out"
    assert main(["inspect", str(root), colors, "-o", str(out)]) == 0
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["mask_mode"] == "colors"
    assert fp["mapping"] == {"#000000": "background", "#00ff00": "class_2", "#ff0000": "class_1"}
    assert fp["class_fraction"] == {
        "background": 120 / 192,
        "class_1": 24 / 192,
        "class_2": 48 / 192,
    }
    prepared = prepare_data(load_config(None, [*base, colors]))
    assert prepared.data.mask_mode == "colors" and prepared.data.classes[1:] == [
        "class_1",
        "class_2",
    ]
    ds = build_datasets(prepared)["train"]
    expected = labels("palette").astype(np.int64)
    assert ds.mapper.read(ds.samples[0].mask).tolist() == expected.tolist()
    missing = [*base, 'data.mask_colors={"#000000": 0, "#ff0000": 1}']  # green not listed
    with pytest.raises(DatasetError, match=r"mask colours #00ff00 are not in data.mask_colors"):
        prepare_data(load_config(None, missing))


def test_nnunet_layout_pairs_the_0000_channel_with_its_label(tmp_path):
    root = tmp_path / "Dataset001"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(4):
        image(i).save(root / "imagesTr" / f"case_{i:03d}_0000.png")
        mask_image("0/1").save(root / "labelsTr" / f"case_{i:03d}.png")
    out = tmp_path / "out"
    assert main(["inspect", str(root), "-o", str(out)]) == 0  # the folders found by name
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["pairs"] == 4 and fp["problems"]["counts"] == {} and fp["mask_mode"] == "index"
    image(9).save(root / "imagesTr" / "case_000_0001.png")  # a second channel: one file a case
    cfg = load_config(
        None,
        ["data.source=folder", f"data.root={root}", "data.images_dir=imagesTr"]
        + ["data.masks_dir=labelsTr"],
    )
    with pytest.raises(DatasetError, match=r"1 multi-channel case\); first: labelsTr/case_000"):
        prepare_data(cfg)


def test_data_pointed_at_the_image_folder_gets_a_hint(tmp_path, capsys):
    root = make_layout(tmp_path / "data", "0/255")
    assert main(["inspect", str(root / "images"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{root}/images/images: image folder not found" in err
    assert f"{root}/images is the image folder itself: give its parent {root}" in err
