"""The network part of inference: raw uint8 images -> probabilities, members and TTA included.

`Preprocess` is training's eval transform (scale to [0, 1], normalise); `ProbabilityModel` runs
every member of an ensemble (a single model is an ensemble of one) on its own `Preprocess`,
under every TTA transform, and averages: first over the transforms per member, then over the
members (`member_probs` keeps the members apart, for their disagreement). Everything after the
networks runs in float32. Used eagerly by `segray.inference.segmenter.Segmenter` and traced into the
exported artefacts by `segray.export`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segray.config import Config
from segray.data import default_norm
from segray.inference.tta import transforms, tta_probs
from segray.metrics import probs_from_logits

__all__ = ["Preprocess", "ProbabilityModel"]


class Preprocess(nn.Module):
    """Raw images ``(N, H, W, C)`` uint8 -> normalised ``(N, C, H, W)`` float32.

    ``(pixel / 255 - mean) / std`` per channel, as training's eval transform. ``mean`` and
    ``std`` are buffers (one value, or one per channel), so they travel with exported models.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        for name, values in (("mean", mean), ("std", std)):
            buffer = torch.tensor(list(values), dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer(name, buffer)

    @classmethod
    def from_config(cls, config: Config, channels: int) -> Preprocess:
        """``data.mean`` / ``data.std`` of ``config``, or `default_norm` of ``channels``."""
        default_mean, default_std = default_norm(channels)
        mean, std = config.data.mean or default_mean, config.data.std or default_std
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, channels):
                raise ValueError(
                    f"data.{name} has {len(values)} values but the model takes {channels} channels"
                )
        return cls(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (x - self.mean) / self.std


class ProbabilityModel(nn.Module):
    """(N, H, W, C) uint8 images -> (N, K, H, W) float32 probabilities, as `Segmenter` computes.

    Args:
        model: the segmentation network, or the members of an ensemble (logits at input
            resolution; same ``num_classes``).
        preprocess: the `Preprocess` of its config, or one per member.
        tta: ``none | flip | d4`` (`segray.inference.tta`).
        channels_last: feed the networks NHWC tensors.
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        preprocess: Preprocess | Sequence[Preprocess],
        *,
        tta: str = "none",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        many = (list, tuple, nn.ModuleList)
        models = list(model) if isinstance(model, many) else [model]
        preprocesses = list(preprocess) if isinstance(preprocess, many) else [preprocess]
        if len(preprocesses) == 1 and len(models) > 1:
            preprocesses = preprocesses * len(models)
        if not models or len(preprocesses) != len(models):
            raise ValueError(
                f"need one preprocess per member, got {len(preprocesses)} for {len(models)}"
            )
        self.members = nn.ModuleList(models)
        self.preprocesses = nn.ModuleList(preprocesses)
        self.tta = tta
        transforms(tta)  # an unknown mode fails here
        self.channels_last = channels_last

    @property
    def model(self) -> nn.Module:
        """The first member (the model, for a single checkpoint)."""
        return self.members[0]

    def member_probs(self, images: torch.Tensor) -> torch.Tensor:
        """(M, N, K, H, W): every member's TTA-averaged probabilities."""
        out = []
        for net, preprocess in zip(self.members, self.preprocesses, strict=True):

            def probs_of(x: torch.Tensor, net: nn.Module = net) -> torch.Tensor:
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                return probs_from_logits(net(x).float())

            out.append(tta_probs(probs_of, preprocess(images), self.tta))
        return torch.stack(out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        members = self.member_probs(images)
        return members[0] if members.shape[0] == 1 else members.mean(0)
