"""U-Net with a torchvision ResNet encoder and atrous decoder blocks (seeds 000 and 001).

::

    input ─ stem (/2) ─ layer1 (/4) ─ layer2 (/8) ─ layer3 (/16) ─ layer4 (/32) ─ bridge
              │           │             │             └─ skip ─ decoder[0] (/16) ─┘
              │           │             └─ skip ─────── decoder[1] (/8)
              │           └─ skip ───────────────────── decoder[2] (/4)
              └─ skip ───────────────────────────────── decoder[3] (/2)
                                                          upsample to input ─ 1x1 head

Each decoder stage upsamples the deeper output (bridge or previous stage) to its skip's size,
concatenates the skip, applies a 3x3 ConvBNReLU, then an :class:`AtrousBlock` (``atrous=True``)
or a second 3x3 ConvBNReLU (``atrous=False``, i.e. a plain U-Net decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights, WeightsEnum
from torchvision.models.resnet import BasicBlock, Bottleneck

from segray.models.blocks import (
    AtrousBlock,
    ConvBNReLU,
    SegmentationModel,
    input_conv,
    resize_to,
)
from segray.models.registry import register_model
from segray.models.weights import check_pretrained_args, load_pretrained


class EncoderSpec(NamedTuple):
    """How to build one ResNet encoder and what it produces."""

    builder: Callable[..., torchvision.models.ResNet]  # torchvision constructor
    weights: WeightsEnum  # ImageNet weights loaded by pretrained=True
    channels: list[int]  # output channels of stem, layer1, layer2, layer3, layer4
    default_decoder: list[int]  # decoder_channels used when None is passed


ENCODERS = {
    "resnet18": EncoderSpec(
        torchvision.models.resnet18,
        ResNet18_Weights.IMAGENET1K_V1,
        [64, 64, 128, 256, 512],
        [256, 128, 64, 32],
    ),
    "resnet34": EncoderSpec(
        torchvision.models.resnet34,
        ResNet34_Weights.IMAGENET1K_V1,
        [64, 64, 128, 256, 512],
        [256, 128, 64, 32],
    ),
    "resnet50": EncoderSpec(
        torchvision.models.resnet50,
        ResNet50_Weights.IMAGENET1K_V2,
        [64, 256, 512, 1024, 2048],
        [1024, 512, 256, 64],
    ),
}

# (residual block type, blocks per stage) -> encoder name; lets a built encoder name itself.
_ENCODER_LAYOUTS = {
    (BasicBlock, (2, 2, 2, 2)): "resnet18",
    (BasicBlock, (3, 4, 6, 3)): "resnet34",
    (Bottleneck, (3, 4, 6, 3)): "resnet50",
}


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its classifier, returning the five stage outputs.

    The attribute names (``conv1``, ``bn1``, ``layer1`` ...) are torchvision's, so an ImageNet
    state dict minus its ``fc.*`` keys loads into it strictly.

    Args:
        name: one of :data:`ENCODERS`.
        in_channels: other than 3 replaces ``conv1`` by a conv of the same geometry taking
            that many channels.
    """

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        spec = ENCODERS[name]
        resnet = spec.builder(weights=None)
        self.conv1 = input_conv(resnet.conv1, in_channels)
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4

    @property
    def name(self) -> str:
        """The encoder's name, identified from its built residual blocks."""
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        return _ENCODER_LAYOUTS[(type(self.layer1[0]), tuple(len(layer) for layer in layers))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))  # /2
        c1 = self.layer1(self.maxpool(stem))  # /4
        c2 = self.layer2(c1)  # /8
        c3 = self.layer3(c2)  # /16
        c4 = self.layer4(c3)  # /32
        return [stem, c1, c2, c3, c4]


class DecoderStage(nn.Module):
    """Upsample to the skip's size, concatenate it, 3x3 ConvBNReLU, then ``refine``.

    Args:
        in_channels: channels of the deeper feature map coming up.
        skip_channels: channels of the encoder skip it is merged with.
        out_channels: channels of the stage's output.
        refine: the second unit, ``AtrousBlock`` or ``ConvBNReLU`` (out -> out channels).
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, refine: nn.Module
    ) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels + skip_channels, out_channels)
        self.refine = refine

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([resize_to(x, skip.shape[-2:]), skip], dim=1)
        return self.refine(self.conv(x))


@register_model(
    "resnet_unet",
    description="U-Net with a torchvision ResNet encoder and atrous (dilated) decoder blocks",
    encoders=tuple(ENCODERS),
)
class ResNetUNet(SegmentationModel):
    """ResNet-encoder U-Net with atrous decoder blocks (seed 000; ResNet34-U-Net of seed 001).

    Args:
        in_channels: image channels (bands), any N >= 1.
        num_classes: logit channels (1 = binary).
        encoder: torchvision ResNet used as encoder: resnet18, resnet34 or resnet50.
        dilation_rates: one dilation rate (>= 1) per atrous branch.
        kernel_sizes: one odd kernel size per atrous branch (same length as dilation_rates).
        decoder_channels: output channels of the four decoder stages, deepest first; None
            = [1024, 512, 256, 64] for resnet50, [256, 128, 64, 32] for resnet18/34.
        atrous: True = AtrousBlock after each stage's first conv; False = a plain 3x3 conv.
        pretrained: load ImageNet weights into the encoder.
        weights_path: local copy of those weights (for machines without network).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 1,
        encoder: str = "resnet50",
        dilation_rates: Sequence[int] = (1, 6, 12, 18),
        kernel_sizes: Sequence[int] = (1, 3, 3, 3),
        decoder_channels: Sequence[int] | None = None,
        atrous: bool = True,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes)
        _check_args(encoder, dilation_rates, kernel_sizes, decoder_channels)
        check_pretrained_args("resnet_unet", pretrained, weights_path)
        spec = ENCODERS[encoder]
        dilation_rates = [int(d) for d in dilation_rates]
        kernel_sizes = [int(k) for k in kernel_sizes]
        decoder_channels = [int(c) for c in decoder_channels or spec.default_decoder]
        *skip_channels, deepest_channels = spec.channels

        self.encoder = ResNetEncoder(encoder, in_channels)
        self.bridge = ConvBNReLU(deepest_channels, decoder_channels[0])
        stages = []
        previous = decoder_channels[0]
        # One stage per skip, deepest (layer3) first, shallowest (stem) last.
        for skip, out in zip(reversed(skip_channels), decoder_channels, strict=True):
            refine = (
                AtrousBlock(out, out, dilation_rates, kernel_sizes)
                if atrous
                else ConvBNReLU(out, out)
            )
            stages.append(DecoderStage(previous, skip, out, refine))
            previous = out
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(previous, num_classes, kernel_size=1)

        if pretrained:
            load_pretrained(
                self.encoder,
                spec.weights,
                weights_path,
                input_conv="conv1.weight",
                ignore_prefixes=("fc.",),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        *skips, deepest = self.encoder(x)
        y = self.bridge(deepest)
        for stage, skip in zip(self.decoder, reversed(skips), strict=True):
            y = stage(y, skip)
        return self.head(resize_to(y, x.shape[-2:]))

    def applied_hparams(self) -> dict[str, object]:
        """Encoder, atrous rates/kernels (None when ``atrous=False``), decoder widths, in/out."""
        first_refine = self.decoder[0].refine
        atrous = isinstance(first_refine, AtrousBlock)
        return {
            "encoder": self.encoder.name,
            "dilation_rates": first_refine.dilation_rates if atrous else None,
            "kernel_sizes": first_refine.kernel_sizes if atrous else None,
            "decoder_channels": [stage.refine.out_channels for stage in self.decoder],
            "atrous": atrous,
            "in_channels": self.encoder.conv1.in_channels,
            "num_classes": self.head.out_channels,
        }


def _check_args(
    encoder: str,
    dilation_rates: Sequence[int],
    kernel_sizes: Sequence[int],
    decoder_channels: Sequence[int] | None,
) -> None:
    """Raise a one-line ``ValueError`` for the first invalid ResNet-U-Net argument."""
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    if len(dilation_rates) == 0 or len(dilation_rates) != len(kernel_sizes):
        raise ValueError(
            "dilation_rates and kernel_sizes need the same non-zero length, got "
            f"dilation_rates={list(dilation_rates)} and kernel_sizes={list(kernel_sizes)}"
        )
    if any(int(d) != d or d < 1 for d in dilation_rates):
        raise ValueError(f"dilation_rates must be integers >= 1, got {list(dilation_rates)}")
    if any(int(k) != k or k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise ValueError(f"kernel_sizes must be odd integers >= 1, got {list(kernel_sizes)}")
    if decoder_channels is not None and (
        len(decoder_channels) != 4 or any(int(c) != c or c < 1 for c in decoder_channels)
    ):
        raise ValueError(
            f"decoder_channels must be 4 integers >= 1 (deepest stage first), "
            f"got {list(decoder_channels)}"
        )
