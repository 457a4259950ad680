"""Raw mask values -> class indices (``data.mask_mode``).

``data.mask_mode: auto`` is resolved to one of the concrete modes below by
`segray.data.prepare_data` (from the dataset's mask values, see `segray.data.inspect`):

mapper = MaskMapper.from_config(prepare_data(cfg).data)
target = mapper.read(path, key="a/1")   # (H, W) int64: 0..K-1 or ignore_index
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segray.config import DataConfig
from segray.data.io import COLOR_BASE, ImageError, Source, color_name, read_mask
from segray.data.split import unit_hash

__all__ = ["COLOR_BASE", "MASK_MODES", "MaskMapper", "color_name"]

MASK_MODES = ("threshold", "index", "values", "trimap", "colors")
_TRIMAP_UNCERTAIN = ("foreground", "ignore", "random")
# Oxford-IIIT Pet trimaps: 1 = pet, 2 = background, 3 = border (uncertain).
_PET, _BACKGROUND, _BORDER = 1, 2, 3


@dataclass(frozen=True)
class MaskMapper:
    """Maps a raw mask to class indices.

    - ``threshold``: raw > threshold is 1, else 0 (binary).
    - ``index``: raw values are the class indices; any other value than 0..K-1 and
      ``ignore_index`` is an error naming the file.
    - ``values``: ``values`` maps raw value -> class; every other value becomes ``ignore_index``.
    - ``trimap``: Oxford Pet, 1 (pet) -> 1, 2 (background) -> 0, 3 (border) -> 1
      (``foreground``), ``ignore_index`` (``ignore``) or, for ``random``, 0 or 1 for the whole
      border of an image from a coin seeded by (seed, key): the same every epoch.
    - ``colors``: ``colors`` maps a colour (``#rrggbb``) to its class; the mask is read with
      its colours (`read`, ``read_mask(colors=True)``) and a colour not listed is an error.

    ``num_classes`` is the total class count including background (2 for binary).
    """

    mode: str
    num_classes: int
    threshold: int = 127
    values: dict[int, int] | None = None
    colors: dict[str, int] | None = None
    trimap_uncertain: str = "foreground"
    ignore_index: int = 255
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode == "auto":
            raise ValueError(
                "mask mode 'auto' is chosen from the dataset's mask values: build the mapper "
                "from the config that segray.data.prepare_data(cfg) returns"
            )
        if self.mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {self.mode!r}; valid: {', '.join(MASK_MODES)}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes includes background: need >= 2, got {self.num_classes}")
        if self.mode in ("threshold", "trimap") and self.num_classes != 2:
            raise ValueError(f"mask mode {self.mode!r} is binary, not {self.num_classes} classes")
        if self.trimap_uncertain not in _TRIMAP_UNCERTAIN:
            raise ValueError(
                f"unknown trimap_uncertain {self.trimap_uncertain!r}; "
                f"valid: {', '.join(_TRIMAP_UNCERTAIN)}"
            )
        if self.mode in ("values", "colors"):
            table = self.values if self.mode == "values" else self.colors
            if not table:
                what = "values (pixel value" if self.mode == "values" else "colors (colour"
                raise ValueError(f"mask mode {self.mode!r} needs {what} -> class)")
            bad = sorted(
                c
                for c in table.values()
                if not 0 <= c < self.num_classes and c != self.ignore_index
            )
            if bad:
                raise ValueError(
                    f"mask {self.mode} map to {bad}, not a class 0..{self.num_classes - 1} "
                    f"or ignore_index {self.ignore_index}"
                )

    @classmethod
    def from_config(cls, data_cfg: DataConfig) -> MaskMapper:
        """The mapper of ``data_cfg``; the trimap coin is seeded by ``data.split_seed``."""
        return cls(
            mode=data_cfg.mask_mode,
            num_classes=len(data_cfg.classes),
            threshold=data_cfg.mask_threshold,
            values=data_cfg.mask_values,
            colors=data_cfg.mask_colors,
            trimap_uncertain=data_cfg.trimap_uncertain,
            ignore_index=data_cfg.ignore_index,
            seed=data_cfg.split_seed,
        )

    def read(
        self,
        source: Source,
        key: str = "",
        *,
        name: str | None = None,
        max_pixels: int | None = None,
    ) -> np.ndarray:
        """Decode the mask ``source`` (`read_mask`, with its colours in ``colors`` mode) and
        map it; errors name ``name`` (default: the file)."""
        raw = read_mask(source, colors=self.mode == "colors", max_pixels=max_pixels, name=name)
        return self(raw, key, name=name or (str(source) if not isinstance(source, bytes) else None))

    def __call__(self, raw: np.ndarray, key: str = "", *, name: str | None = None) -> np.ndarray:
        """``(H, W)`` raw values -> ``(H, W)`` int64 class indices or ``ignore_index``.

        ``key`` seeds the trimap coin; errors name ``name`` (default: the key).
        """
        raw = np.asarray(raw)
        label = name or key or "<mask>"
        if self.mode == "threshold":
            return (raw > self.threshold).astype(np.int64)
        if self.mode == "index":
            out = raw.astype(np.int64)
            valid = (out >= 0) & ((out < self.num_classes) | (out == self.ignore_index))
            expected = (
                f"class indices 0..{self.num_classes - 1} (or ignore_index {self.ignore_index})"
            )
            self._check(label, out, valid, expected)
            return out
        if self.mode == "values":
            assert self.values is not None  # checked in __post_init__
            out = np.full(raw.shape, self.ignore_index, dtype=np.int64)
            for value, cls in self.values.items():
                out[raw == value] = cls
            return out
        if self.mode == "colors":
            return self._colors(raw, label)
        expected = (
            "trimap values 1 (pet), 2 (background), 3 (border); other masks need another mask_mode"
        )
        self._check(label, raw, (raw >= _PET) & (raw <= _BORDER), expected)
        out = (raw != _BACKGROUND).astype(np.int64)
        if self.trimap_uncertain != "foreground":
            out[raw == _BORDER] = self._border_class(key)
        return out

    def _colors(self, raw: np.ndarray, label: str) -> np.ndarray:
        assert self.colors is not None  # checked in __post_init__
        if raw.size and int(raw.min()) < COLOR_BASE:
            raise ImageError(
                f"{label}: a mask read without its colours under data.mask_mode=colors "
                "(read it with MaskMapper.read or read_mask(colors=True))"
            )
        table = {COLOR_BASE + int(c.lstrip("#"), 16): cls for c, cls in self.colors.items()}
        found, inverse = np.unique(raw, return_inverse=True)
        classes = np.array([table.get(int(v), -1) for v in found], dtype=np.int64)
        if (classes < 0).any():
            bad = [color_name(int(v)) for v in found[classes < 0]]
            shown = ", ".join(bad[:8]) + (", ..." if len(bad) > 8 else "")
            raise ImageError(
                f"{label}: mask colours {shown} are not in data.mask_colors "
                f"({', '.join(self.colors)}): add them with their class"
            )
        return classes[inverse].reshape(raw.shape)

    def _border_class(self, key: str) -> int:
        if self.trimap_uncertain == "ignore":
            return self.ignore_index
        return int(unit_hash(f"{self.seed}:trimap:{key}") < 0.5)

    @staticmethod
    def _check(label: str, values: np.ndarray, valid: np.ndarray, expected: str) -> None:
        if not valid.all():
            bad = np.unique(values[~valid])
            shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
            raise ImageError(f"{label}: mask values {shown} are not {expected}")
