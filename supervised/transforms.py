"""Image augmentation on batches, in plain torch (no torchvision on CPU here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None):
    """Pad by `pad` (edge values) and crop back at a random offset per image: (B,C,H,W)."""
    if pad <= 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    rows = (dy[:, None] + torch.arange(height)[None]).to(images.device)  # (B, H)
    cols = (dx[:, None] + torch.arange(width)[None]).to(images.device)  # (B, W)
    index = torch.arange(batch, device=images.device)[:, None, None]
    # (B, H, W, C) gathered, then back to (B, C, H, W)
    out = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None):
    """Mirror a random half of the images left-right: (B, C, H, W)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    out = images.clone()
    out[flip] = images[flip].flip(-1)
    return out


def augment_batch(images: torch.Tensor, data_spec, generator: torch.Generator):
    """The augmentation the spec's image `data` section asks for (crop with padding, flips)."""
    if not data_spec.augment:
        return images
    images = random_shift(images, data_spec.pad, generator)
    if data_spec.flip:
        images = random_flip(images, generator)
    return images
