"""The model registry: each architecture module registers its class under a name with
``@register_model`` (description and encoders beside it); `segray.models.build` builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["register_model"]


@dataclass(frozen=True)
class _Entry:
    constructor: Callable[..., nn.Module]  # the model class (keyword-only constructor)
    description: str  # one line for `segray` listings
    encoders: tuple[str, ...]  # values of the model's `encoder` kwarg; empty if it has none


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str, *, description: str, encoders: tuple[str, ...] = ()
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a model to the registry under ``name``.

    Args:
        name: registry key passed to :func:`create_model`.
        description: one-line summary shown by :func:`model_info`.
        encoders: values the model's ``encoder`` argument accepts; empty for models without
            that argument (so ``"encoder" in model_kwargs(name)`` iff ``encoders``).

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(
                f"model '{name}' is already registered "
                f"(by {_REGISTRY[name].constructor.__qualname__})"
            )
        _REGISTRY[name] = _Entry(cls, description, tuple(encoders))
        return cls

    return decorator
