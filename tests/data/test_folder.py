"""Folder datasets: pairs matched by relative path, every problem reported in one error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segray.data.folder import DatasetError, Sample, find_pairs


def write(path: Path, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> Path:
    """An image of ``size`` = (width, height) at ``path`` (format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


def test_nested_pairs_match_by_relative_path(tmp_path):
    write(tmp_path / "images" / "a" / "1.jpg")
    write(tmp_path / "masks" / "a" / "1.png", mode="L")
    write(tmp_path / "images" / "b.PNG")
    write(tmp_path / "masks" / "b.tif", mode="L")
    write(tmp_path / "images" / "a" / "deeper" / "2.bmp")
    write(tmp_path / "masks" / "a" / "deeper" / "2.png", mode="L")
    (tmp_path / "images" / "README.txt").write_text("not an image")
    write(tmp_path / "images" / ".hidden" / "c.png")  # hidden folders are skipped

    samples = find_pairs(tmp_path / "images", tmp_path / "masks")
    assert [s.key for s in samples] == ["a/1", "a/deeper/2", "b"]
    assert samples[0] == Sample(
        "a/1", str(tmp_path / "images/a/1.jpg"), str(tmp_path / "masks/a/1.png")
    )
    assert all(Path(s.image).is_absolute() and Path(s.mask).is_absolute() for s in samples)


def test_all_problems_in_one_error(tmp_path):
    root = tmp_path / "x"
    for name in ("ok", "mismatch", "broken", "lonely1", "lonely2"):
        write(root / "images" / f"{name}.png")
    write(root / "masks" / "ok.png", mode="L")
    write(root / "masks" / "mismatch.png", size=(4, 4), mode="L")
    write(root / "masks" / "broken.png", mode="L")
    (root / "images" / "broken.png").write_text("this is not a png")
    write(root / "masks" / "orphan.png", mode="L")

    with pytest.raises(DatasetError) as e:
        find_pairs(root / "images", root / "masks")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"dataset {root}: 5 problems (2 images without a mask, 1 mask without an image, "
        "1 unreadable file, 1 size mismatch); first: "
    )
    assert f"images/lonely1.png: no mask in {root / 'masks'}" in msg
    assert f"images/lonely2.png: no mask in {root / 'masks'}" in msg
    assert f"masks/orphan.png: no image in {root / 'images'}" in msg
    assert "images/broken.png: not an image (cannot identify image file)" in msg
    assert "images/mismatch.png: 8x6 but masks/mismatch.png is 4x4" in msg

    # Without the header check only the pairing problems remain.
    with pytest.raises(DatasetError, match=r"3 problems \(2 images without a mask, 1 mask"):
        find_pairs(root / "images", root / "masks", check=False)


def test_only_the_first_five_offenders_are_listed(tmp_path):
    for i in range(8):
        write(tmp_path / "images" / f"{i}.png")
    write(tmp_path / "masks" / "0.png", mode="L")
    with pytest.raises(DatasetError) as e:
        find_pairs(tmp_path / "images", tmp_path / "masks")
    msg = str(e.value)
    assert "7 problems (7 images without a mask)" in msg
    assert msg.count("no mask in") == 5
    assert msg.endswith("; ... and 2 more")
    assert "images/6.png" not in msg


def test_two_files_with_one_key(tmp_path):
    write(tmp_path / "images" / "a.png")
    write(tmp_path / "images" / "a.jpg")
    write(tmp_path / "masks" / "a.png", mode="L")
    with pytest.raises(
        DatasetError,
        match=r"1 problem \(1 duplicate name\); first: images/a\.png: "
        r"same name as images/a\.jpg",
    ):
        find_pairs(tmp_path / "images", tmp_path / "masks")


def test_missing_or_empty_folder_is_one_line(tmp_path):
    write(tmp_path / "images" / "a.png")
    with pytest.raises(DatasetError) as e:
        find_pairs(tmp_path / "images", tmp_path / "masks")
    assert str(e.value) == f"{tmp_path / 'masks'}: mask folder not found"
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=rf"^{tmp_path / 'masks'}: no mask files found"):
        find_pairs(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(DatasetError, match="image folder not found"):
        find_pairs(tmp_path / "nothing", tmp_path / "masks")


def test_exif_rotated_image_matches_its_upright_mask(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "i.png", exif=exif)
    (tmp_path / "images").mkdir()
    (tmp_path / "i.png").rename(tmp_path / "images" / "i.png")
    write(tmp_path / "masks" / "i.png", size=(6, 8), mode="L")  # as the image is displayed
    assert [s.key for s in find_pairs(tmp_path / "images", tmp_path / "masks")] == ["i"]


@pytest.mark.parametrize(
    ("mask_name", "suffix"),
    [
        ("x_mask.png", None),
        ("x_segmentation.png", None),
        ("x_mask.gif", None),  # Carvana
        ("x.gif", None),
        ("x-label.tif", "-label"),  # data.mask_suffix
    ],
)
def test_mask_name_conventions_pair_with_their_image(tmp_path, mask_name, suffix):
    write(tmp_path / "images" / "sub" / "x.jpg")
    write(tmp_path / "images" / "y.png")
    write(tmp_path / "masks" / "sub" / mask_name, mode="P" if mask_name.endswith("gif") else "L")
    write(tmp_path / "masks" / "y_mask.png", mode="L")
    samples = find_pairs(tmp_path / "images", tmp_path / "masks", mask_suffix=suffix)
    assert samples == [
        Sample(
            "sub/x", str(tmp_path / "images/sub/x.jpg"), str(tmp_path / "masks/sub" / mask_name)
        ),
        Sample("y", str(tmp_path / "images/y.png"), str(tmp_path / "masks/y_mask.png")),
    ]


def test_unknown_suffix_is_a_mask_without_an_image(tmp_path):
    write(tmp_path / "images" / "x.png")
    write(tmp_path / "masks" / "x-label.png", mode="L")
    with pytest.raises(DatasetError, match=r"1 image without a mask, 1 mask without an image"):
        find_pairs(tmp_path / "images", tmp_path / "masks")  # without data.mask_suffix=-label


def test_two_candidate_masks_for_one_image_name_both(tmp_path):
    write(tmp_path / "images" / "x.png")
    write(tmp_path / "images" / "y.png")
    write(tmp_path / "masks" / "x.png", mode="L")
    write(tmp_path / "masks" / "x_mask.png", mode="L")
    write(tmp_path / "masks" / "y_mask.png", mode="L")
    with pytest.raises(DatasetError) as e:
        find_pairs(tmp_path / "images", tmp_path / "masks")
    assert str(e.value) == (
        f"dataset {tmp_path}: 1 problem (1 ambiguous mask); first: images/x.png: "
        "two candidate masks, masks/x.png and masks/x_mask.png"
    )
