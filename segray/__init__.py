"""segray: tune, train and run image-segmentation models at cluster scale on Ray."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segray.inference.segmenter import load_segmenter

from segray.version import __version__

__all__ = ["__version__", "load_segmenter"]


def __getattr__(name: str) -> Any:
    """``segray.load_segmenter``, imported on first use so ``import segray`` stays light."""
    if name == "load_segmenter":
        from segray.inference.segmenter import load_segmenter

        return load_segmenter
    raise AttributeError(f"module 'segray' has no attribute {name!r}")
