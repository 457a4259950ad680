"""What every registered model is, without building one or importing torch: its description,
encoders, constructor defaults and parameter counts (3 input channels, 1 class).

The config's validation, `segray models` and `segray config show` read this table; model code
lives in the architecture modules, registered by `segray.models.registry`. A test builds every
model and checks that this table says exactly what the registry does, so it cannot drift.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["CATALOG", "list_models", "model_info", "model_kwargs", "parameter_count"]

CATALOG: dict[str, dict[str, Any]] = {
    "deeplabv3": {
        "description": "torchvision DeepLabV3 (ASPP head) on a dilated ResNet50 backbone",
        "encoders": [],
        "defaults": {
            "in_channels": 3,
            "num_classes": 1,
            "pretrained": False,
            "weights_path": None,
        },
        "params": {None: 39_633_729},
    },
    "resnet_unet": {
        "description": "U-Net with a torchvision ResNet encoder and atrous (dilated) decoder blocks",
        "encoders": ["resnet18", "resnet34", "resnet50"],
        "defaults": {
            "in_channels": 3,
            "num_classes": 1,
            "encoder": "resnet50",
            "dilation_rates": [1, 6, 12, 18],
            "kernel_sizes": [1, 3, 3, 3],
            "decoder_channels": None,
            "atrous": True,
            "pretrained": False,
            "weights_path": None,
        },
        "params": {"resnet18": 16_917_217, "resnet34": 27_025_377, "resnet50": 114_484_097},
    },
    "unet": {
        "description": "classic U-Net: four max-pool levels, transposed-conv decoder",
        "encoders": [],
        "defaults": {
            "in_channels": 3,
            "num_classes": 1,
            "base_width": 64,
            "pretrained": False,
            "weights_path": None,
        },
        "params": {None: 31_037_633},
    },
}


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(CATALOG)


def _entry(name: str) -> dict[str, Any]:
    if name not in CATALOG:
        raise ValueError(f"unknown model '{name}'; valid models: {', '.join(list_models())}")
    return CATALOG[name]


def model_kwargs(name: str) -> dict[str, object]:
    """Keyword arguments model ``name`` accepts, mapped to their defaults (fresh copies; lists
    where the constructor has tuples).

    Raises:
        ValueError: ``name`` is not registered.
    """
    return copy.deepcopy(_entry(name)["defaults"])


def model_info(name: str) -> dict[str, object]:
    """``{"name", "description", "encoders", "defaults"}`` of model ``name``.

    Raises:
        ValueError: ``name`` is not registered.
    """
    entry = _entry(name)
    return {
        "name": name,
        "description": entry["description"],
        "encoders": list(entry["encoders"]),
        "defaults": model_kwargs(name),
    }


def parameter_count(name: str, encoder: str | None = None) -> int:
    """Parameters of model ``name`` (with ``encoder``) for 3 input channels and 1 class."""
    return _entry(name)["params"][encoder]
