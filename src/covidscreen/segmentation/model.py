"""A U-Net-like lung segmenter: an ImageNet-pretrained encoder from the model registry and a light decoder.

The encoder is the trunk of a registry model (its pretrained weights are loaded through the registry, offline), cut
into resolution levels (strides 2, 4, 8, 16, 32). The decoder upsamples step by step, concatenating the encoder's
output at each level (skip connections), so the mask keeps the fine lung borders. Input: greyscale ``(B, 1, H, W)``
in [0, 1] with H, W multiples of 32; output: one logit per pixel ``(B, 1, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..models import create_model


@dataclass(frozen=True)
class EncoderLayout:
    """How to cut a registry backbone into resolution levels.

    Attributes:
        levels: per level (strides 2, 4, 8, 16, 32), the dotted module paths of the backbone run in order.
    """

    levels: tuple[tuple[str, ...], ...]


ENCODER_LAYOUTS: dict[str, EncoderLayout] = {
    "mobilenet_v2_035": EncoderLayout(levels=(
        ("features.0", "features.1"),
        ("features.2", "features.3"),
        ("features.4", "features.5", "features.6"),
        tuple(f"features.{i}" for i in range(7, 14)),
        tuple(f"features.{i}" for i in range(14, 18)),  # features.18 (the 1x1 conv to 1280 channels) is not needed
    )),
    "efficientnet_lite0": EncoderLayout(levels=(
        ("conv_stem", "bn1", "blocks.0"),
        ("blocks.1",),
        ("blocks.2",),
        ("blocks.3", "blocks.4"),
        ("blocks.5", "blocks.6"),
    )),
}

# Four stages end at stride 2; the logits are then upsampled bilinearly. A fifth, full-resolution stage would double
# the cost (the full-resolution convolutions dominate it) for no measurable gain on lungs, which are large, smooth.
DEFAULT_DECODER = (64, 32, 24, 16)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv_bn_relu(cin + cskip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else tuple(2 * s for s in x.shape[-2:])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class LungSegNet(nn.Module):
    """Registry encoder + U-Net decoder, one logit per pixel.

    Args:
        encoder: a name of :data:`ENCODER_LAYOUTS` (a registry model with offline ImageNet weights).
        pretrained: load the encoder's ImageNet weights through the registry.
        decoder_channels: channels of the decoder stages from the deepest up: four (ending at stride 2) or five
            (ending at full resolution).
        image_size: square side the network was trained at (images are resized to it before prediction).
        equalize: histogram-equalise each resized input first (makes the net less sensitive to the exposure and
            processing of the source, since masks exist for one collection only).
    """

    def __init__(self, encoder: str = "mobilenet_v2_035", pretrained: bool = True,
                 decoder_channels: tuple[int, ...] = DEFAULT_DECODER, image_size: int = 192,
                 equalize: bool = True) -> None:
        super().__init__()
        if image_size % 32 or not 64 <= image_size <= 1024:
            raise ModelError(f"segmentation image_size must be a multiple of 32 from 64 to 1024, got {image_size}")
        self.image_size = int(image_size)
        self.equalize = bool(equalize)
        if encoder not in ENCODER_LAYOUTS:
            raise ModelError(f"unknown segmentation encoder {encoder!r}; available: {', '.join(ENCODER_LAYOUTS)}")
        if len(decoder_channels) not in (4, 5):
            raise ModelError(f"decoder_channels needs 4 or 5 numbers (one per decoder stage), got {decoder_channels}")
        self.encoder_name = encoder
        self.decoder_channels = tuple(int(c) for c in decoder_channels)
        backbone = create_model(encoder, pretrained=pretrained, num_classes=2)
        self.register_buffer("mean", backbone.mean.clone(), persistent=False)
        self.register_buffer("std", backbone.std.clone(), persistent=False)
        layout = ENCODER_LAYOUTS[encoder]
        self.levels = nn.ModuleList(
            nn.Sequential(*[backbone.backbone.get_submodule(p) for p in paths]) for paths in layout.levels)
        with torch.no_grad():
            was = self.levels.training
            self.levels.eval()
            feats = self._encode(torch.zeros(1, 3, 64, 64))
            self.levels.train(was)
        skips = [f.shape[1] for f in feats]
        blocks, cin = [], skips[-1]
        # level i's decoder block joins the upsampled deeper map with the encoder output of level i-1
        for i, cout in enumerate(self.decoder_channels):
            skip_level = len(skips) - 2 - i
            cskip = skips[skip_level] if skip_level >= 0 else 0
            blocks.append(_UpBlock(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, 1, kernel_size=1)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        feats = self._encode(x)
        y = feats[-1]
        for i, block in enumerate(self.decoder):
            skip_level = len(feats) - 2 - i
            y = block(y, feats[skip_level] if skip_level >= 0 else None)
        logits = self.head(y)
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits

    def describe(self) -> dict:
        """What a checkpoint sidecar needs to rebuild this network."""
        return {"encoder": self.encoder_name, "decoder_channels": list(self.decoder_channels),
                "image_size": self.image_size, "equalize": self.equalize,
                "parameters": int(sum(p.numel() for p in self.parameters()))}
