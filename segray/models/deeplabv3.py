"""torchvision's DeepLabV3-ResNet50 with its last classifier conv resized (seed 003).

::

    input ─ ResNet50 backbone (dilated, output stride 8) ─ ASPP (rates 12/24/36 + image pool)
          ─ 3x3 conv ─ 1x1 conv to num_classes ─ bilinear upsample to the input size

The auxiliary FCN head is never built (``aux_loss=False``), so every parameter takes part in
the loss, as DistributedDataParallel requires.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, deeplabv3_resnet50

from segray.models.blocks import SegmentationModel, input_conv
from segray.models.registry import register_model
from segray.models.weights import check_pretrained_args, load_pretrained


@register_model(
    "deeplabv3", description="torchvision DeepLabV3 (ASPP head) on a dilated ResNet50 backbone"
)
class DeepLabV3(SegmentationModel):
    """DeepLabV3-ResNet50 returning plain logits.

    Args:
        in_channels: image channels (bands), any N >= 1 (other than 3 replaces
            ``backbone.conv1``).
        num_classes: logit channels (1 = binary); replaces ``classifier[4]``.
        pretrained: load the COCO (VOC labels) weights of the whole network; the classifier
            conv keeps its random init unless num_classes is 21.
        weights_path: local copy of those weights (for machines without network).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 1,
        pretrained: bool = False,
        weights_path: str | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes)
        check_pretrained_args("deeplabv3", pretrained, weights_path)
        self.net = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False)
        self.net.classifier[4] = nn.Conv2d(256, num_classes, kernel_size=1)
        self.net.backbone.conv1 = input_conv(self.net.backbone.conv1, in_channels)
        if pretrained:
            load_pretrained(
                self.net,
                DeepLabV3_ResNet50_Weights.DEFAULT,
                weights_path,
                input_conv="backbone.conv1.weight",
                ignore_prefixes=("aux_classifier.",),
                skip_mismatched=True,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.net(x)["out"]

    def applied_hparams(self) -> dict[str, object]:
        """``in_channels`` and ``num_classes`` of the built network."""
        return {
            "in_channels": self.net.backbone.conv1.in_channels,
            "num_classes": self.net.classifier[4].out_channels,
        }
