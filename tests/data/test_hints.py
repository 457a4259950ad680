"""`dataset.yaml`: the hints a dataset gives about itself, read beside its images."""

from __future__ import annotations

import pytest

from segray.data import DatasetError
from segray.data.hints import HINTS_FILE, DatasetHints, load_hints, parse_hints
from segray.data.synth import generate


def write(root, text: str):
    root.mkdir(exist_ok=True)
    (root / HINTS_FILE).write_text(text)
    return root


def test_no_file_no_hints(tmp_path):
    assert load_hints(str(tmp_path)) is None
    assert load_hints(None) is None


def test_all_keys_read(tmp_path):
    root = write(
        tmp_path,
        "orientation: free\nchannel_names: [dapi, gfp]\nclass_names: [background, nucleus]\n",
    )
    hints = load_hints(str(root))
    assert hints == DatasetHints(
        orientation="free", channel_names=["dapi", "gfp"], class_names=["background", "nucleus"]
    )
    assert hints.to_dict() == {
        "orientation": "free",
        "channel_names": ["dapi", "gfp"],
        "class_names": ["background", "nucleus"],
    }


def test_every_key_is_optional(tmp_path):
    assert load_hints(str(write(tmp_path, "orientation: fixed\n"))).to_dict() == {
        "orientation": "fixed"
    }
    assert load_hints(str(write(tmp_path, "# nothing said yet\n"))) == DatasetHints()


def test_a_uri_root_is_read_through_storage(tmp_path):
    write(tmp_path, "orientation: fixed\n")
    assert load_hints(f"file://{tmp_path}").orientation == "fixed"


def test_unknown_key_is_refused_naming_file_and_key(tmp_path):
    root = write(tmp_path, "orientation: free\nrotations: yes\n")
    with pytest.raises(DatasetError) as e:
        load_hints(str(root))
    message = str(e.value)
    assert "\n" not in message and str(root / HINTS_FILE) in message
    assert "'rotations'" in message and "orientation" in message  # the valid keys listed


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("orientation: sideways\n", "orientation"),
        ("class_names: [background]\n", "at least 2"),
        ("class_names: [bg, cell, cell]\n", "repeat"),
        ("channel_names: ['']\n", "non-empty"),
        ("- orientation\n", "expected keys"),
        ("orientation: [free\n", "not valid YAML"),
    ],
)
def test_bad_values_are_refused_in_one_line(text, problem):
    with pytest.raises(DatasetError) as e:
        parse_hints(text, "data/cells/dataset.yaml")
    message = str(e.value)
    assert message.startswith("data/cells/dataset.yaml: ") and problem in message
    assert "\n" not in message


@pytest.mark.parametrize("num_classes", [2, 4])
def test_synthetic_data_says_it_has_no_orientation(tmp_path, num_classes):
    out = generate(tmp_path / "synth", num=2, size=16, num_classes=num_classes)
    hints = load_hints(str(out))
    assert hints.orientation == "free"
    assert hints.class_names is not None and len(hints.class_names) == num_classes


def test_synthetic_data_made_before_the_hints_is_made_again(tmp_path):
    out = generate(tmp_path / "synth", num=2, size=16)
    (out / HINTS_FILE).unlink()
    assert generate(tmp_path / "synth", num=2, size=16) == out
    assert load_hints(str(out)).orientation == "free"
