"""Raw mask values -> class indices, per mask mode."""

from __future__ import annotations

import numpy as np
import pytest

from segray.config import DataConfig
from segray.data.io import ImageError
from segray.data.masks import MaskMapper

TRIMAP = np.array([[1, 2, 3], [3, 2, 1]])


def test_threshold():
    mapper = MaskMapper("threshold", 2, threshold=127)
    out = mapper(np.array([[0, 127, 128, 255]]))
    assert out.dtype == np.int64 and out.tolist() == [[0, 0, 1, 1]]
    assert MaskMapper("threshold", 2, threshold=0)(np.array([[0, 1]])).tolist() == [[0, 1]]


def test_index_keeps_classes_and_ignore():
    mapper = MaskMapper("index", 4, ignore_index=255)
    raw = np.array([[0, 1, 2, 3, 255]])
    assert mapper(raw).tolist() == raw.tolist()


def test_index_rejects_values_that_are_not_classes():
    mapper = MaskMapper("index", 3)
    with pytest.raises(ImageError) as e:
        mapper(np.array([[0, 1, 2, 7, 9, 7, -1]]), "a/1")
    assert str(e.value) == (
        "a/1: mask values -1, 7, 9 are not class indices 0..2 (or ignore_index 255)"
    )
    with pytest.raises(ImageError, match=r"^/data/m\.png: mask values 7"):
        mapper(np.array([[7]]), "m", name="/data/m.png")


def test_values_maps_listed_values_and_ignores_the_rest():
    mapper = MaskMapper("values", 3, values={10: 0, 20: 1, 30: 2}, ignore_index=99)
    assert mapper(np.array([[10, 20, 30, 40, 0]])).tolist() == [[0, 1, 2, 99, 99]]


def test_values_must_map_to_classes():
    with pytest.raises(ValueError, match=r"map to \[5\]"):
        MaskMapper("values", 3, values={1: 5})
    with pytest.raises(ValueError, match="needs values"):
        MaskMapper("values", 3)


@pytest.mark.parametrize(
    ("uncertain", "expected"),
    [("foreground", [[1, 0, 1], [1, 0, 1]]), ("ignore", [[1, 0, 255], [255, 0, 1]])],
)
def test_trimap(uncertain, expected):
    mapper = MaskMapper("trimap", 2, trimap_uncertain=uncertain)
    assert mapper(TRIMAP, "Abyssinian_1").tolist() == expected


def test_trimap_random_is_one_coin_per_image_and_deterministic():
    mapper = MaskMapper("trimap", 2, trimap_uncertain="random", seed=0)
    coins = {}
    for i in range(40):
        key = f"pet_{i}"
        out = mapper(TRIMAP, key)
        border = out[TRIMAP == 3]
        assert len(set(border.tolist())) == 1  # the whole border of one image alike
        assert out[TRIMAP == 1].tolist() == [1, 1] and out[TRIMAP == 2].tolist() == [0, 0]
        assert (mapper(TRIMAP, key) == out).all()  # same key, same coin, every call
        coins[key] = int(border[0])
    assert set(coins.values()) == {0, 1}
    other = MaskMapper("trimap", 2, trimap_uncertain="random", seed=1)
    assert any(int(other(TRIMAP, k)[0, 2]) != c for k, c in coins.items())


def test_trimap_rejects_other_values():
    with pytest.raises(ImageError, match=r"^k: mask values 0, 255 are not trimap values"):
        MaskMapper("trimap", 2)(np.array([[0, 1, 255]]), "k")


def test_binary_modes_need_two_classes_and_modes_are_checked():
    with pytest.raises(ValueError, match="binary"):
        MaskMapper("threshold", 3)
    with pytest.raises(ValueError, match="unknown mask mode"):
        MaskMapper("palette", 2)
    with pytest.raises(ValueError, match="trimap_uncertain"):
        MaskMapper("trimap", 2, trimap_uncertain="maybe")


def test_from_config():
    cfg = DataConfig(
        classes=["bg", "a", "b"],
        mask_mode="values",
        mask_values={0: 0, 128: 1, 255: 2},
        ignore_index=7,
        split_seed=3,
    )
    mapper = MaskMapper.from_config(cfg)
    assert mapper == MaskMapper(
        "values", 3, threshold=127, values={0: 0, 128: 1, 255: 2}, ignore_index=7, seed=3
    )
    assert mapper(np.array([[0, 128, 255, 5]])).tolist() == [[0, 1, 2, 7]]


def test_auto_is_resolved_before_a_mapper_is_built():
    with pytest.raises(ValueError, match=r"'auto' is chosen from the dataset.*prepare_data"):
        MaskMapper("auto", 2)
    with pytest.raises(ValueError, match="prepare_data"):
        MaskMapper.from_config(DataConfig())  # the default mask_mode is auto
