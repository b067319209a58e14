"""Generative networks for images: a convolutional VAE and a DCGAN, sized from the spec.

Both work on square images whose side halves cleanly once per stage (8x8 digits with two
stages, 28x28 MNIST with two, 32x32 with up to five); the spec checks it before Ray starts.
Pixels are in [0, 1] for the VAE (Bernoulli means) and in [-1, 1] for the GAN (tanh).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def _down(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 4, 2, 1)  # halves an even side exactly


def _up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1)  # doubles a side exactly


class ConvVAE(nn.Module):
    """Encoder: stride-2 convs (widths) -> mean and log-variance of a diagonal Gaussian latent.
    Decoder: the mirror image -> Bernoulli logits of every pixel."""

    def __init__(self, channels: int, size: int, widths: list[int], latent_dim: int):
        super().__init__()
        self.latent_dim, self.channels, self.size = latent_dim, channels, size
        layers, ch = [], channels
        for width in widths:
            layers += [_down(ch, width), nn.GELU()]
            ch = width
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.side = size // 2 ** len(widths)
        flat = ch * self.side * self.side
        self.posterior = nn.Linear(flat, 2 * latent_dim)
        self.expand = nn.Linear(latent_dim, flat)
        layers = []
        for width, out in zip(widths[::-1], [*widths[::-1][1:], channels], strict=True):
            layers += [_up(width, out), nn.GELU()]
        layers[-1] = nn.Identity()  # logits out of the last layer
        self.decoder = nn.Sequential(*layers)
        self.top = widths[-1]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.posterior(self.encoder(x)).chunk(2, dim=-1)
        return mean, log_var.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.expand(z))
        return self.decoder(h.view(-1, self.top, self.side, self.side))  # logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits at the posterior mean (what an MLflow pyfunc would serve)."""
        return self.decode(self.encode(x)[0])


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(log_var)) summed over the last dimension."""
    return -0.5 * (((z - mean) ** 2) * torch.exp(-log_var) + log_var
                   + math.log(2 * math.pi)).sum(-1)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) of binary pixels, summed per image: (B, C, H, W) -> (B,)."""
    return -nn.functional.binary_cross_entropy_with_logits(
        logits, x, reduction="none").flatten(1).sum(-1)


def elbo_parts(vae: ConvVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction log-likelihood, KL(q(z|x) || N(0, I))) per image, in nats."""
    mean, log_var = vae.encode(x)
    z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
    recon = bernoulli_log_prob(vae.decode(z), x)
    kl = 0.5 * (mean ** 2 + log_var.exp() - 1.0 - log_var).sum(-1)
    return recon, kl


@torch.no_grad()
def importance_weighted_bound(vae: ConvVAE, x: torch.Tensor, k: int,
                              chunk: int = 25) -> torch.Tensor:
    """The k-sample importance-weighted bound on log p(x) (Burda et al. 2016), per image:
    log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x). Tighter than the ELBO as k grows."""
    mean, log_var = vae.encode(x)
    prior = torch.zeros_like(mean)
    weights = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        z = mean[None] + torch.randn(n, *mean.shape, device=x.device) * torch.exp(
            0.5 * log_var)[None]  # (n, B, D)
        logits = vae.decode(z.flatten(0, 1))
        log_px = bernoulli_log_prob(logits, x.repeat(n, 1, 1, 1)).view(n, -1)
        weights.append(log_px + gaussian_log_prob(z, prior, prior)
                       - gaussian_log_prob(z, mean[None], log_var[None]))
    return torch.logsumexp(torch.cat(weights), dim=0) - math.log(k)


class Generator(nn.Module):
    """DCGAN generator: noise -> a (widths[0], s, s) map -> transposed convs that double the
    side (batch norm + ReLU) -> tanh pixels."""

    def __init__(self, channels: int, size: int, widths: list[int], noise_dim: int):
        super().__init__()
        self.noise_dim, self.first = noise_dim, widths[0]
        self.side = size // 2 ** len(widths)
        self.project = nn.Sequential(nn.Linear(noise_dim, widths[0] * self.side ** 2),
                                     nn.BatchNorm1d(widths[0] * self.side ** 2), nn.ReLU())
        layers = []
        for width, out in zip(widths, [*widths[1:], None], strict=True):
            if out is None:
                layers += [_up(width, channels), nn.Tanh()]
            else:
                layers += [_up(width, out), nn.BatchNorm2d(out), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(-1, self.first, self.side, self.side))


class Discriminator(nn.Module):
    """DCGAN discriminator: stride-2 convs with LeakyReLU (batch norm after the first, or
    spectral norm on every layer), then one logit."""

    def __init__(self, channels: int, size: int, widths: list[int], use_spectral_norm: bool):
        super().__init__()
        wrap = spectral_norm if use_spectral_norm else (lambda layer: layer)
        layers, ch = [], channels
        for index, width in enumerate(widths):
            layers.append(wrap(_down(ch, width)))
            if index > 0 and not use_spectral_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2))
            ch = width
        side = size // 2 ** len(widths)
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.head = wrap(nn.Linear(ch * side * side, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B,) logits
        return self.head(self.net(x)).squeeze(-1)


class Sampler(nn.Module):
    """Noise -> pixels in [0, 1]: what a user loads from MLflow (or `trainyard sample` builds)
    to draw new images, from a VAE's decoder or a GAN's generator."""

    def __init__(self, net: nn.Module, noise_dim: int):
        super().__init__()
        self.net, self.noise_dim = net, noise_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, ConvVAE):
            return torch.sigmoid(self.net.decode(z))
        return (self.net(z) + 1.0) / 2.0


def diff_augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """DiffAugment's translation and cutout (Zhao et al. 2020) for images in [-1, 1] whose
    background is -1 (the digits): each image shifted by up to 1/8 of its side, the uncovered
    border and a random quarter (half the side square) set to the background. Differentiable
    in `x`, so the generator learns through it; applied to real and generated images alike,
    the discriminator cannot tell them apart by the augmentation."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)
    shift = torch.randint(0, 2 * pad + 1, (2, n), generator=rng).to(x.device)
    rows = shift[0][:, None] + torch.arange(h, device=x.device)[None]   # (n, h)
    cols = shift[1][:, None] + torch.arange(w, device=x.device)[None]   # (n, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    corner = torch.stack([torch.randint(0, h - h // 2 + 1, (n,), generator=rng),
                          torch.randint(0, w - w // 2 + 1, (n,), generator=rng)]).to(x.device)
    in_rows = (torch.arange(h, device=x.device)[None] - corner[0][:, None]).clamp(min=-1)
    in_cols = (torch.arange(w, device=x.device)[None] - corner[1][:, None]).clamp(min=-1)
    cut = ((in_rows >= 0) & (in_rows < h // 2))[:, :, None] & \
        ((in_cols >= 0) & (in_cols < w // 2))[:, None, :]
    return torch.where(cut[:, None], torch.full_like(out, -1.0), out)


def draw(run_dir, count: int, seed: int = 0) -> torch.Tensor:
    """`count` new images in [0, 1] from a saved generative run (run_dir: its downloaded
    best_model folder): the DCGAN's averaged generator where it kept one, else its generator;
    the VAE's decoder (pixel means) on prior noise."""
    import json
    from pathlib import Path

    from pydantic import TypeAdapter

    from trainyard.checkpoints import load_state
    from trainyard.supervised.spec import ModelSection

    info = json.loads((Path(run_dir) / "info.json").read_text())
    if info.get("task") not in ("vae", "gan"):
        raise ValueError(f"not a generative run (its task is {info.get('task')!r}): trainyard "
                         "sample is for model.arch vae and dcgan")
    model = TypeAdapter(ModelSection).validate_python(info["model"])
    channels, side, state = info["in_channels"], info["image_side"], load_state(run_dir)
    if info["task"] == "vae":
        net, noise_dim = ConvVAE(channels, side, list(model.widths), model.latent_dim), \
            model.latent_dim
        net.load_state_dict(state["model"])
    else:
        net = Generator(channels, side, list(model.generator_widths), model.noise_dim)
        net.load_state_dict(state.get("generator_ema", state["generator"]))
        noise_dim = model.noise_dim
    z = torch.randn(count, noise_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return Sampler(net, noise_dim).eval()(z)
