"""The ``model`` section: which architecture and its hyperparameters (`segray models`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from segray.config.base import Section, optional

__all__ = ["ModelConfig"]


class ModelConfig(Section):
    """Which architecture and its hyperparameters (see `segray models`)."""

    name: str = Field("resnet_unet", description="registered model name (`segray models`)")
    in_channels: int = Field(
        3,
        ge=1,
        le=64,
        description="image bands the model takes: 1 = grayscale, 3 = RGB, N = multi-band "
        "(derived by `segray auto`; a pretrained RGB stem is adapted, segray.models)",
    )
    encoder: Literal["resnet18", "resnet34", "resnet50"] = Field(
        "resnet50", description="resnet_unet: torchvision ResNet encoder"
    )
    dilation_rates: list[int] = Field(
        [1, 6, 12, 18], description="resnet_unet: dilation of each parallel atrous branch"
    )
    kernel_sizes: list[int] = Field(
        [1, 3, 3, 3], description="resnet_unet: kernel of each atrous branch (odd)"
    )
    decoder_channels: list[int] | None = optional(
        description="resnet_unet: 4 decoder widths; default by encoder"
    )
    atrous: bool = Field(True, description="resnet_unet: atrous decoder blocks (false = plain)")
    base_width: int = Field(64, ge=4, description="unet: channels of the first level")
    pretrained: bool = Field(False, description="load torchvision pretrained weights")
    weights_path: str | None = optional(
        description="local weights file for pretrained=true without network"
    )

    @field_validator("dilation_rates")
    @classmethod
    def _rates(cls, v: list[int]) -> list[int]:
        if not v or any(r < 1 for r in v):
            raise ValueError("need a non-empty list of dilation rates, each >= 1")
        return v

    @field_validator("kernel_sizes")
    @classmethod
    def _kernels(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 or k % 2 == 0 for k in v):
            raise ValueError("need a non-empty list of odd kernel sizes >= 1")
        return v

    @field_validator("decoder_channels")
    @classmethod
    def _decoder(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 4 or any(c < 1 for c in v)):
            raise ValueError("need 4 positive decoder widths (deepest first)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        from segray.models import list_models, model_kwargs

        if self.name not in list_models():
            raise ValueError(f"unknown model {self.name!r}; valid: {', '.join(list_models())}")
        if len(self.dilation_rates) != len(self.kernel_sizes):
            raise ValueError(
                f"dilation_rates {self.dilation_rates} and kernel_sizes {self.kernel_sizes} "
                "must have the same length"
            )
        accepted = model_kwargs(self.name)
        # A non-default value for a knob this model does not have is a mistake (a dump of a
        # whole config, which repeats every default, is not).
        unused = sorted(
            f
            for f in self.model_fields_set - {"name"}
            if f not in accepted and getattr(self, f) != type(self).model_fields[f].default
        )
        if unused:
            raise ValueError(
                f"model.{unused[0]} is not a parameter of model {self.name!r} "
                f"(it takes: {', '.join(sorted(k for k in accepted if k != 'num_classes'))})"
            )
        ignored = sorted(
            f
            for f in self.model_fields_set & {"dilation_rates", "kernel_sizes"}
            if not self.atrous and getattr(self, f) != type(self).model_fields[f].default
        )
        if ignored:  # the plain decoder has no atrous branches
            raise ValueError(f"model.{ignored[0]} is unused with model.atrous=false")
        return self

    def kwargs(self, num_classes: int) -> dict[str, Any]:
        """Constructor arguments for `segray.models.create_model(self.name, ...)`."""
        from segray.models import model_kwargs

        accepted = model_kwargs(self.name)
        values = self.model_dump()
        out = {k: values[k] for k in accepted if k in values}
        out["num_classes"] = num_classes
        return out
