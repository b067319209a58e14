"""Supervised models: pure torch modules, configured from the spec's `model` section."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """conv-norm-relu-conv-norm + shortcut; the shortcut projects when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: bool):
        super().__init__()
        make_norm = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=not norm)
        self.norm1 = make_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=not norm)
        self.norm2 = make_norm(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=not norm),
                                          make_norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for small images (8x8 to 32x32): no max-pool stem, global average pool.

    widths=[32, 64] gives two stages; each stage after the first halves the resolution.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: list[int],
                 blocks_per_stage: int = 1, dropout: float = 0.0, norm: str = "batch"):
        super().__init__()
        use_norm = norm == "batch"
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not use_norm),
            nn.BatchNorm2d(widths[0]) if use_norm else nn.Identity(), nn.ReLU())
        blocks, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(ResidualBlock(channels, width, stride, use_norm))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.head(self.blocks(self.stem(x)))


def build_model(model_spec, in_channels: int, num_classes: int) -> nn.Module:
    """The model the spec's `model` section describes."""
    if model_spec.arch == "resnet":
        return ResNet(in_channels, num_classes, list(model_spec.widths),
                      model_spec.blocks_per_stage, model_spec.dropout, model_spec.norm)
    raise ValueError(f"unknown model arch {model_spec.arch!r}")
