"""Building blocks shared by the segray architectures.

Everything two model files would otherwise copy lives here: the conv/BN/ReLU units, the
atrous (dilated) multi-branch block of the ResNet-U-Net decoder, resizing helpers, and
:class:`SegmentationModel`, the small base class that validates the common constructor
arguments and the input tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MIN_INPUT_SIZE = 32  # smallest H and W every model accepts (ResNet encoders downsample 32x)


class ConvBNReLU(nn.Module):
    """``Conv2d -> BatchNorm2d -> ReLU`` with "same" padding for odd kernels.

    Args:
        in_channels: channels of the input tensor.
        out_channels: channels produced by the convolution.
        kernel_size: square, odd kernel size.
        dilation: dilation rate; the padding ``dilation * (kernel_size - 1) // 2`` keeps H x W.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
    ) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        # No conv bias: the BatchNorm right after it has its own shift.
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    @property
    def out_channels(self) -> int:
        """Channels this block produces (read from its convolution)."""
        return self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class DoubleConv(nn.Sequential):
    """Two 3x3 :class:`ConvBNReLU` in a row: the classic U-Net unit.

    Args:
        in_channels: channels of the input tensor.
        out_channels: channels of both convolutions' outputs.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels)
        )

    @property
    def out_channels(self) -> int:
        """Channels this block produces (read from its last convolution)."""
        return self[-1].out_channels


class AtrousBlock(nn.Module):
    """Parallel dilated convolutions, concatenated and fused by a 1x1 conv (seed 000).

    Branch ``i`` is ``ConvBNReLU(in, out, kernel_sizes[i], dilation=dilation_rates[i])``; the
    concatenated branches (``out * len(dilation_rates)`` channels) go through a 1x1
    ``ConvBNReLU`` back to ``out_channels``. Spatial size is preserved.

    Args:
        in_channels: channels of the input tensor.
        out_channels: channels of every branch and of the fused output.
        dilation_rates: one dilation rate (>= 1) per branch.
        kernel_sizes: one odd kernel size per branch, same length as ``dilation_rates``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilation_rates: Sequence[int],
        kernel_sizes: Sequence[int],
    ) -> None:
        super().__init__()
        if len(dilation_rates) != len(kernel_sizes):
            raise ValueError(
                f"AtrousBlock needs one kernel size per dilation rate, got "
                f"dilation_rates={list(dilation_rates)} and kernel_sizes={list(kernel_sizes)}"
            )
        self.branches = nn.ModuleList(
            ConvBNReLU(in_channels, out_channels, k, dilation=d)
            for d, k in zip(dilation_rates, kernel_sizes, strict=True)
        )
        self.fuse = ConvBNReLU(out_channels * len(self.branches), out_channels, kernel_size=1)

    @property
    def dilation_rates(self) -> list[int]:
        """Dilation rate of each branch, read from the built convolutions."""
        return [branch.conv.dilation[0] for branch in self.branches]

    @property
    def kernel_sizes(self) -> list[int]:
        """Kernel size of each branch, read from the built convolutions."""
        return [branch.conv.kernel_size[0] for branch in self.branches]

    @property
    def out_channels(self) -> int:
        """Channels this block produces (read from its fusing convolution)."""
        return self.fuse.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize ``x`` (N, C, h, w) to ``size`` = (H, W); a no-op when already there."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def input_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """``conv`` itself when it already takes ``in_channels``, else a copy of its geometry that
    takes ``in_channels`` (1 for grayscale, N for multi-band images).

    Pretrained RGB filters are adapted to it at load time (``weights.adapt_input_weight``).
    """
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )


class SegmentationModel(nn.Module):
    """Base class of every registered model: validated ``in_channels`` / ``num_classes``.

    Subclasses build their layers, call :meth:`check_input` first thing in ``forward`` and
    implement :meth:`applied_hparams`.

    Args:
        in_channels: image channels (bands) the model takes: 1 (grayscale), 3 (RGB) or any
            N >= 1 (multi-band imagery).
        num_classes: logit channels; 1 = binary (sigmoid), K > 1 = K classes (softmax).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(
                f"num_classes must be an int >= 1 (1 = binary with one logit), got {num_classes!r}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (N, in_channels, H, W) with H, W >= 32."""
        expected = f"(N, {self.in_channels}, H, W) with H, W >= {MIN_INPUT_SIZE}"
        if x.ndim != 4:
            raise ValueError(
                f"{type(self).__name__} expects a 4-D input {expected}, "
                f"got a {x.ndim}-D tensor of shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input {expected}, got {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); convert the images to {self.in_channels} channels "
                "or build the model with a matching in_channels"
            )
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"{type(self).__name__} expects input {expected}, got shape {tuple(x.shape)}; "
                "resize or pad the images"
            )

    def applied_hparams(self) -> dict[str, object]:
        """Architecture hyperparameters read back from the built modules."""
        raise NotImplementedError
