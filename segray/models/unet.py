"""The classic U-Net (Ronneberger et al. 2015; seeds 001, 002 and 004).

::

    input ─ stem (w) ──────────────────────────────────────────── up[3] (w) ─ 1x1 head
              └ down[0] (2w) ───────────────────────────── up[2] (2w)
                  └ down[1] (4w) ──────────────────── up[1] (4w)
                      └ down[2] (8w) ───────── up[0] (8w)
                          └ bottleneck (16w) ─┘

``w`` is ``base_width``; every level is a :class:`DoubleConv`, each down step a 2x2 max-pool and
each up step a 2x2 transposed conv whose output is padded to the skip's size (odd inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segray.models.blocks import DoubleConv, SegmentationModel
from segray.models.registry import register_model
from segray.models.weights import check_pretrained_args


class Down(nn.Sequential):
    """2x2 max-pool, then :class:`DoubleConv` (halves H x W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """2x2 transposed conv (doubles H x W, halves channels), pad to the skip, concat, DoubleConv.

    Args:
        in_channels: channels of the deeper map; the skip has ``in_channels // 2``.
        out_channels: channels of the output.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # An odd skip size s was floored by the max-pool, so x is 2*(s//2) = s - 1: pad it.
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.conv(torch.cat([skip, x], dim=1))


@register_model("unet", description="classic U-Net: four max-pool levels, transposed-conv decoder")
class UNet(SegmentationModel):
    """The classic U-Net with BatchNorm.

    Args:
        in_channels: image channels (bands), any N >= 1.
        num_classes: logit channels (1 = binary).
        base_width: channels of the first level; level i has ``base_width * 2**i``.
        pretrained: must stay False: the U-Net has no pretrained encoder.
        weights_path: must stay None (kept so every model accepts the same common kwargs).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 1,
        base_width: int = 64,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes)
        check_pretrained_args("unet", pretrained, weights_path, available=False)
        if not isinstance(base_width, int) or isinstance(base_width, bool) or base_width < 1:
            raise ValueError(f"base_width must be an int >= 1, got {base_width!r}")
        w = base_width
        self.stem = DoubleConv(in_channels, w)
        self.encoder = nn.ModuleList([Down(w, 2 * w), Down(2 * w, 4 * w), Down(4 * w, 8 * w)])
        self.bottleneck = Down(8 * w, 16 * w)
        self.decoder = nn.ModuleList(
            [Up(16 * w, 8 * w), Up(8 * w, 4 * w), Up(4 * w, 2 * w), Up(2 * w, w)]
        )
        self.head = nn.Conv2d(w, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = [self.stem(x)]
        for down in self.encoder:
            skips.append(down(skips[-1]))
        y = self.bottleneck(skips[-1])
        for up, skip in zip(self.decoder, reversed(skips), strict=True):
            y = up(y, skip)
        return self.head(y)

    def applied_hparams(self) -> dict[str, object]:
        """``base_width``, ``in_channels`` and ``num_classes`` of the built network."""
        first_conv = self.stem[0].conv
        return {
            "base_width": first_conv.out_channels,
            "in_channels": first_conv.in_channels,
            "num_classes": self.head.out_channels,
        }
