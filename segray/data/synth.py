"""The built-in synthetic dataset: textured scenes with objects at very different scales.

It is built so that multi-scale context, and so a decoder's dilation rates, visibly matters:

- backgrounds are textured and noisy (a smooth random field, sinusoid texture, pixel noise; all
  parameters random per image);
- object radii range from ~2% to ~45% of the image side;
- small objects are locally distinct (a clear brightness shift, a tint, little texture), while
  the interiors of large ones are locally ambiguous: another realisation of the background's
  own texture process with only a small mean shift, told apart by a distinct rim (edge band).

A model with a small receptive field gets the small objects right and the insides of large ones
wrong; one that sees the rim from the inside gets both. With K > 2 classes, class k objects
have their own shape (ellipse, rectangle, triangle, pentagon, hexagon, ...) and tint.

Layout: ``images/NNNN.png`` (RGB), ``masks/NNNN.png`` (binary: 0/255 for
``mask_mode: threshold``; K > 2: class indices 0..K-1 for ``mask_mode: index``),
``synth.json`` (parameters, counts, mask convention) and ``dataset.yaml`` (`segray.data.hints`:
``orientation: free``, the objects lie at any angle, and the class names). Same arguments,
byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from segray.data.hints import HINTS_FILE
from segray.data.io import encode_png

__all__ = ["SYNTH_VERSION", "SceneObject", "generate", "render", "synth_params"]

SYNTH_VERSION = 1  # bump when the pixels change, so cached datasets are regenerated
_SHAPES = ("ellipse", "rectangle", "triangle", "pentagon", "hexagon")
_POLYGON_SIDES = {"triangle": 3, "pentagon": 5, "hexagon": 6}
# Object radius as a fraction of the side: small objects are distinct, large ones ambiguous.
_SMALL, _LARGE = (0.02, 0.08), (0.25, 0.45)
_MEDIUM = (_SMALL[1], _LARGE[0])


def synth_params(*, num: int, size: int, num_classes: int, seed: int) -> dict[str, int]:
    """The parameters that define a synthetic dataset (and its ``synth.json``)."""
    if num < 1 or size < 16:
        raise ValueError(f"need num >= 1 and size >= 16, got num={num}, size={size}")
    if not 2 <= num_classes <= 255:
        raise ValueError(f"num_classes (background included) must be 2..255, got {num_classes}")
    return {
        "version": SYNTH_VERSION,
        "num": num,
        "size": size,
        "num_classes": num_classes,
        "seed": seed,
    }


def generate(
    out_dir: str | Path,
    *,
    num: int,
    size: int,
    num_classes: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write the dataset to ``out_dir`` (absolute path returned); reuse it if already complete.

    The files are written to a temporary folder next to ``out_dir`` and renamed into place, so
    a crashed or concurrent run never leaves a half dataset that looks complete. A folder that
    holds a synthetic dataset with other parameters is replaced; any other non-empty folder is
    an error.
    """
    out = Path(out_dir).expanduser().absolute()
    params = synth_params(num=num, size=size, num_classes=num_classes, seed=seed)
    if _complete(out, params):
        return out
    if out.is_dir() and any(out.iterdir()) and not (out / "synth.json").is_file():
        raise FileExistsError(
            f"{out}: not empty and not a segray synthetic dataset (no synth.json); "
            "choose another folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        counts = _write_pairs(tmp, params, progress)
        info = {
            "generator": "segray.data.synth",
            "params": params,
            "counts": counts,
            "mask_convention": (
                "binary: 0 = background, 255 = foreground (data.mask_mode: threshold)"
                if num_classes == 2
                else f"class index per pixel, 0 = background .. {num_classes - 1} "
                "(data.mask_mode: index)"
            ),
            "class_shapes": {str(k): _class_shape(k, num_classes) for k in range(1, num_classes)},
        }
        (tmp / "synth.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        (tmp / HINTS_FILE).write_text(_hints_yaml(num_classes))
        _publish(tmp, out, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- files
def _complete(out: Path, params: dict[str, int]) -> bool:
    try:
        same = json.loads((out / "synth.json").read_text())["params"] == params
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return same and (out / HINTS_FILE).is_file()  # made before dataset.yaml: made again


def _hints_yaml(num_classes: int) -> str:
    """The dataset's ``dataset.yaml``: no natural orientation, and the class names that
    `segray inspect` gives its masks."""
    names = ["background", "foreground"] if num_classes == 2 else ["background"]
    names += [f"class_{k}" for k in range(1, num_classes)] if num_classes > 2 else []
    return (
        "# segray's synthetic scenes (segray.data.synth); segray auto reads this file\n"
        "orientation: free  # objects and textures at any angle: no natural up\n"
        f"class_names: [{', '.join(names)}]\n"
    )


def _publish(tmp: Path, out: Path, params: dict[str, int]) -> None:
    """Rename ``tmp`` to ``out`` (replacing an older synthetic dataset there)."""
    try:
        os.rename(tmp, out)  # also onto an empty folder
        return
    except OSError:
        if _complete(out, params):  # a concurrent run got there first
            return
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_pairs(folder: Path, params: dict[str, int], progress: bool) -> dict[str, Any]:
    num, size, k = params["num"], params["size"], params["num_classes"]
    width = max(4, len(str(num - 1)))
    objects = np.zeros((3, k), dtype=np.int64)  # scale band x class
    pixels = np.zeros(k, dtype=np.int64)
    for index in tqdm(range(num), desc="synthetic data", unit="img", disable=not progress):
        rng = np.random.default_rng([params["seed"] % 2**64, index])
        image, mask, drawn = render(rng, size, k)
        name = f"{index:0{width}d}.png"
        (folder / "images" / name).write_bytes(encode_png(image))
        (folder / "masks" / name).write_bytes(encode_png(mask * 255 if k == 2 else mask))
        pixels += np.bincount(mask.ravel(), minlength=k)
        for obj in drawn:
            objects[_band(obj.radius / size), obj.cls] += 1
    return {
        "images": num,
        "objects_by_scale": dict(
            zip(("small", "medium", "large"), objects.sum(1).tolist(), strict=True)
        ),
        "objects_per_class": objects.sum(0)[1:].tolist(),
        "pixel_fraction_per_class": [round(float(p), 6) for p in pixels / pixels.sum()],
    }


def _band(fraction: float) -> int:
    return 0 if fraction < _SMALL[1] else 2 if fraction >= _LARGE[0] else 1


# --------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class SceneObject:
    """One object of a scene, as drawn by `render`."""

    cls: int
    shape: str
    radius: float  # circumradius / semi-major axis, pixels
    cy: float
    cx: float
    angle: float
    aspect: float  # minor / major (ellipse, rectangle)
    sign: float  # +1 brighter fill and darker rim, -1 the opposite


class _Grid:
    """Per-size constants: pixel coordinates and the smoothing matrix of the random fields."""

    def __init__(self, size: int, coarse: int = 6) -> None:
        self.y, self.x = np.mgrid[0:size, 0:size].astype(np.float32)
        centres = np.linspace(0, size - 1, coarse, dtype=np.float32)
        spacing = (size - 1) / (coarse - 1)
        w = np.exp(-0.5 * ((np.arange(size, dtype=np.float32)[:, None] - centres) / spacing) ** 2)
        self.smooth = w / w.sum(1, keepdims=True)  # (size, coarse)
        self.coarse = coarse


@lru_cache(maxsize=8)
def _grid(size: int) -> _Grid:
    return _Grid(size)


def render(
    rng: np.random.Generator, size: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray, list[SceneObject]]:
    """One scene: ``(image (S, S, 3) uint8, mask (S, S) uint8 class indices, objects)``."""
    grid = _grid(size)
    texture = _Texture(rng, grid)
    base = rng.uniform(0.3, 0.7, 3).astype(np.float32)
    background = base + texture.smooth + texture.waves(rng, grid)
    # Object interiors: the same smooth field, another realisation of the same texture.
    inner = base + texture.smooth + texture.waves(rng, grid)
    noise = rng.uniform(0.03, 0.07) * rng.standard_normal((size, size, 3), dtype=np.float32)

    image = background
    mask = np.zeros((size, size), dtype=np.uint8)
    objects = sorted(_draw_objects(rng, size, num_classes), key=lambda o: -o.radius)
    rim_width = max(1.0, 0.015 * size)
    for obj in objects:
        box, depth = _depth(obj, grid, size)
        inside = depth > 0
        if not inside.any():
            continue
        d = _distinctness(obj.radius / size)
        tint = _tint(obj.cls, num_classes)
        fill = (
            inner[box] * (1 - 0.7 * d)
            + base * 0.7 * d
            + obj.sign * (0.04 + 0.26 * d)
            + tint * (0.03 + 0.12 * d)
        )
        rim = base + 0.3 * (inner[box] - base) - obj.sign * 0.35 + tint * 0.2
        paint = np.where((depth <= rim_width)[..., None], rim, fill)
        image[box][inside] = paint[inside]
        mask[box][inside] = obj.cls
    image = np.clip((image + noise) * 255 + 0.5, 0, 255).astype(np.uint8)
    return image, mask, objects


class _Texture:
    """A random texture process: one smooth random field (luminance and colour) per scene and
    sinusoid textures of fixed orientations, periods and amplitudes but fresh phases per call."""

    def __init__(self, rng: np.random.Generator, grid: _Grid) -> None:
        amplitude = rng.uniform(0.05, 0.15)
        self.gain = (1 + 0.25 * rng.standard_normal(3)).astype(np.float32)  # colour of texture
        coarse = rng.standard_normal((4, grid.coarse, grid.coarse)).astype(np.float32)
        fields = grid.smooth @ coarse @ grid.smooth.T  # (4, S, S): luminance + 3 colour
        fields *= amplitude / (fields.std(axis=(1, 2), keepdims=True) + 1e-6)
        self.smooth = fields[0][..., None] * self.gain + 0.3 * np.moveaxis(fields[1:], 0, -1)
        size = grid.x.shape[0]
        angles = rng.uniform(0, np.pi, 2)
        periods = rng.uniform(3, max(6, size / 12), 2)
        self.amplitudes = rng.uniform(0.03, 0.08, 2).astype(np.float32)
        self.kx = (2 * np.pi * np.cos(angles) / periods).astype(np.float32)
        self.ky = (2 * np.pi * np.sin(angles) / periods).astype(np.float32)

    def waves(self, rng: np.random.Generator, grid: _Grid) -> np.ndarray:
        """One realisation of the sinusoid texture, (S, S, 3)."""
        lum = np.zeros_like(grid.x)
        coords = grid.x[0]
        for i, phase in enumerate(rng.uniform(0, 2 * np.pi, len(self.kx))):
            # sin(kx x + ky y + phase), separable: sin(a + b) = sin a cos b + cos a sin b
            a, b = self.kx[i] * coords, self.ky[i] * coords + np.float32(phase)
            lum += self.amplitudes[i] * (
                np.outer(np.cos(b), np.sin(a)) + np.outer(np.sin(b), np.cos(a))
            )
        return lum[..., None] * self.gain


def _draw_objects(rng: np.random.Generator, size: int, num_classes: int) -> list[SceneObject]:
    """Usually one large object, up to one medium and 2-6 small ones, classes 1..K-1."""
    radii = []
    if rng.random() < 0.9:
        radii.append(rng.uniform(*_LARGE))
    radii += list(np.exp(rng.uniform(*np.log(_MEDIUM), rng.integers(0, 2))))
    radii += list(np.exp(rng.uniform(*np.log(_SMALL), rng.integers(2, 7))))
    objects = []
    for fraction in radii:
        cls = int(rng.integers(1, num_classes))
        shape = _class_shape(cls, num_classes) if num_classes > 2 else str(rng.choice(_SHAPES))
        margin = 0.15 if fraction >= _LARGE[0] else 0.0
        cy, cx = rng.uniform(margin, 1 - margin, 2) * size
        objects.append(
            SceneObject(
                cls=cls,
                shape=shape,
                radius=max(1.5, float(fraction) * size),
                cy=float(cy),
                cx=float(cx),
                angle=float(rng.uniform(0, np.pi)),
                aspect=float(rng.uniform(0.5, 1.0)),
                sign=float(rng.choice((-1.0, 1.0))),
            )
        )
    return objects


def _class_shape(cls: int, num_classes: int) -> str:
    """The shape of class ``cls`` (K > 2); binary foreground objects take any shape."""
    return "any" if num_classes == 2 else _SHAPES[(cls - 1) % len(_SHAPES)]


def _tint(cls: int, num_classes: int) -> np.ndarray:
    """A zero-mean colour direction per class, hues evenly spread over the classes."""
    theta = 2 * np.pi * (cls - 1) / (num_classes - 1)
    return np.cos(theta + np.array([0, -2 * np.pi / 3, 2 * np.pi / 3])).astype(np.float32)


def _distinctness(fraction: float) -> float:
    """1 for small objects (locally distinct) .. 0 for large ones (locally ambiguous)."""
    t = (math.log(_LARGE[0]) - math.log(fraction)) / (math.log(_LARGE[0]) - math.log(_SMALL[1]))
    return min(1.0, max(0.0, t))


def _depth(obj: SceneObject, grid: _Grid, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Bounding box of the object and, inside it, the distance to the object's edge (> 0 inside)."""
    r = obj.radius
    y0, y1 = max(0, int(obj.cy - r) - 1), min(size, int(obj.cy + r) + 2)
    x0, x1 = max(0, int(obj.cx - r) - 1), min(size, int(obj.cx + r) + 2)
    box = (slice(y0, y1), slice(x0, x1))
    dy, dx = grid.y[box] - obj.cy, grid.x[box] - obj.cx
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    if obj.shape == "ellipse":
        a, b = r, r * obj.aspect
        q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / np.maximum(q, 1e-6)
        return box, (1 - q) / np.maximum(grad, 1e-6)  # first-order distance to the ellipse
    if obj.shape == "rectangle":
        half_w = r / math.sqrt(1 + obj.aspect**2)  # r is the half-diagonal
        return box, np.minimum(half_w - np.abs(u), obj.aspect * half_w - np.abs(v))
    sides = _POLYGON_SIDES[obj.shape]
    normals = 2 * np.pi * np.arange(sides) / sides  # (u, v) is already rotated by obj.angle
    apothem = r * math.cos(math.pi / sides)
    edges = apothem - (u[..., None] * np.cos(normals) + v[..., None] * np.sin(normals))
    return box, edges.min(-1).astype(np.float32)
