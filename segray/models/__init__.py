"""Segmentation models and their registry.

Each architecture lives in its own module and registers its class under a name with
``@register_model``; everything else builds models by name::

    from segray.models import create_model, list_models
    model = create_model("resnet_unet", encoder="resnet34", num_classes=1)

Every model takes ``in_channels`` (any N >= 1: 1 grayscale, 3 RGB, N bands), ``num_classes``
(1 = binary, one logit channel), ``pretrained`` and ``weights_path``, maps
(N, in_channels, H, W) to logits (N, num_classes, H, W) for any H, W >= 32, and reports the
hyperparameters it was actually built with through ``applied_hparams()``. Pretrained RGB
stems are adapted to ``in_channels`` by timm's rule (`segray.models.weights.adapt_input_weight`:
1 channel sums the RGB filters; N channels repeat them R, G, B, R, ... scaled by 3/N).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from segray.models.catalog import list_models, model_info, model_kwargs, parameter_count

if TYPE_CHECKING:
    from segray.models.build import create_model
    from segray.models.registry import register_model
    from segray.models.weights import PretrainedWeightsError

__all__ = [
    "PretrainedWeightsError",
    "create_model",
    "list_models",
    "model_info",
    "model_kwargs",
    "parameter_count",
    "register_model",
]

# Building models needs torch: imported on first use, so that reading the catalog (the
# config's validation, `segray models`) does not.
_HEAVY = {
    "PretrainedWeightsError": "weights",
    "create_model": "build",
    "register_model": "registry",
}


def __getattr__(name: str) -> Any:
    if name in _HEAVY:
        importlib.import_module("segray.models.build")  # every architecture registered
        return getattr(importlib.import_module(f"segray.models.{_HEAVY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
