"""The generative tasks: a VAE (ELBO, importance-weighted bound) and a DCGAN (classifier FID,
class coverage, memorisation), trained by the same loop as the classifiers (see tasks.py)."""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from trainyard.checkpoints import save_state
from trainyard.supervised import gen_metrics
from trainyard.supervised.generative import (
    ConvVAE,
    Discriminator,
    Generator,
    Sampler,  # here too: MLflow models logged before it moved unpickle it from this module
    bernoulli_log_prob,
    diff_augment,
    importance_weighted_bound,
)
from trainyard.supervised.tasks import Nets, Task, all_sum

GRID = 64  # images in a logged sample grid (8 x 8)
SCALE = 4  # 8x8 digits drawn 4x larger


def _side(data) -> int:
    return int(data.val.tensors[0].shape[-1])


def _log_grid(records, images: torch.Tensor, key: str, step: int, columns: int = 8) -> np.ndarray:
    from trainyard.media import grid

    picture = grid(images.detach().cpu().numpy(), columns, SCALE if images.shape[-1] < 32 else 1)
    records.log_image(picture, key, step)
    return picture


def _save_best(records, nets: Nets, spec, info, sampler: nn.Module, side: int) -> None:
    """best_model/: every network's weights (weights-only state.pt) and info.json; the
    sampler (noise -> pixels in [0, 1]) as the MLflow pytorch flavour."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "best_model")
        save_state(folder, {name: net.state_dict() for name, net in nets.items()})
        (folder / "info.json").write_text(json.dumps({
            "model": spec.model.model_dump(mode="json"), "task": spec.task,
            "class_names": info.class_names, "in_channels": info.in_channels,
            "image_side": side}))
        records.log_artifacts(folder, "best_model")
    if spec.output.log_model:
        noise = torch.randn(2, sampler.noise_dim)
        records.log_torch_model(sampler.cpu().eval(), noise.numpy(),
                                spec.output.register_as)


class SampleQuality:
    """What both generative tasks measure on their samples with one classifier's features:
    the FID to the test images beside the real-data floor, class coverage, memorisation.
    The classifier is `eval.feature_run`'s or the pinned digits one, the same for every run
    and both tasks, so a VAE's FID and a GAN's compare."""

    _features = None  # the FeatureNet, built on first use on each rank
    classifier_accuracy: float | None = None
    _nearest = None

    def use_features(self, net) -> None:
        self._features = net

    def features(self):
        if self._features is None:
            self._features, self.classifier_accuracy = gen_metrics.pinned_classifier()
        return self._features

    def has_features(self) -> bool:
        return self._features is not None or self.spec.data.name == "digits"

    def sample_metrics(self, images: torch.Tensor, data) -> dict[str, float]:
        """`images`: samples in [0, 1]."""
        net = self.features()
        fake, classes = net(images)
        heldout = data.test.tensors[0] if data.test_pixels is None else data.test_pixels
        test, _ = net(heldout)
        train_images = data.train.tensors[0]
        pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))
        train, _ = net(train_images[pick[:len(images)]])
        metrics = {"test/fid": gen_metrics.frechet_distance(test, fake),
                   # what a generator that drew training images would score
                   "test/fid_real_floor": gen_metrics.frechet_distance(test, train)}
        if self.classifier_accuracy is not None:
            metrics["fid/classifier_test_accuracy"] = self.classifier_accuracy
        coverage = gen_metrics.class_coverage(classes, max(2, self.info.num_classes))
        metrics.update({f"test/{k}": v for k, v in coverage.items()})
        copies = gen_metrics.memorisation(images.numpy(), train_images.numpy(),
                                          heldout.numpy())
        metrics.update({f"test/{k}": v for k, v in copies.items()})
        self._nearest = images[:16], train_images
        return metrics

    def log_nearest(self, records) -> None:
        """Samples over their nearest training images: copies would show as twins."""
        if self._nearest is not None:
            samples, train = self._nearest
            index, _ = gen_metrics.nearest(samples.flatten(1).numpy(), train.flatten(1).numpy())
            pairs = torch.stack([samples, train[torch.from_numpy(index)]], 1).flatten(0, 1)
            _log_grid(records, pairs, "nearest_training_image", 0)


# --------------------------------------------------------------------------- VAE


class VAETask(SampleQuality, Task):
    """Bernoulli pixels: training images binarised afresh at every step (dynamic binarisation),
    validation and test binarised once with a fixed seed, so every epoch and every run score
    the same pixels. Metrics in nats per image: the ELBO, its reconstruction and KL parts; at
    the end also the GAN's sample measures (FID, coverage, memorisation) on the decoder's
    pixel means, where a classifier of the images is at hand."""

    pixels = "unit"
    steps_per_epoch = 1

    def prepare(self, data):
        generator = torch.Generator().manual_seed(0)
        data.test_pixels = data.test.tensors[0]
        for name in ("val", "test"):
            x, y = getattr(data, name).tensors
            setattr(data, name, TensorDataset(torch.bernoulli(x, generator=generator), y))
        return data

    def build(self, sample: torch.Tensor) -> Nets:
        model = self.spec.model
        return {"model": VAENet(self.info.in_channels, int(sample.shape[-1]),
                                list(model.widths), model.latent_dim)}

    def transform(self, inputs: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return torch.bernoulli(inputs, generator=rng)

    def kl_weight(self, step: int) -> float:
        warmup = self.spec.model.kl_warmup_epochs * self.steps_per_epoch
        return 1.0 if warmup <= 0 else min(1.0, step / warmup)

    def loss(self, model, inputs, targets, step: int):
        logits, mean, log_var = model(inputs)
        recon = bernoulli_log_prob(logits.float(), inputs)
        kl = 0.5 * (mean ** 2 + log_var.exp() - 1.0 - log_var).float().sum(-1)
        loss = (self.kl_weight(step) * kl - recon).mean()
        elbo = (recon - kl).detach()
        return loss, {"loss": -elbo.sum(), "elbo": elbo.sum(), "recon": recon.detach().sum(),
                      "kl": kl.detach().sum()}, len(inputs)

    def epoch_metrics(self, stats: dict, val: dict, lr: float, epoch: int) -> dict:
        metrics = super().epoch_metrics(stats, val, lr, epoch)
        metrics["train/kl_weight"] = self.kl_weight(epoch * self.steps_per_epoch)
        return metrics

    def test_metrics(self, nets: Nets, data, device, autocast) -> dict[str, float]:
        metrics = super().test_metrics(nets, data, device, autocast)
        vae, k = nets["model"], self.spec.eval.iw_samples
        vae.eval()
        torch.manual_seed(0)
        bounds = [importance_weighted_bound(vae, x.to(device), k)
                  for x, _ in torch.utils.data.DataLoader(data.test, batch_size=100)]
        metrics[f"test/log_px_iw{k}"] = float(torch.cat(bounds).mean())
        # the baseline: every pixel its own Bernoulli, fitted to the training images
        p = data.train.tensors[0].float().mean(0).clamp(1e-3, 1 - 1e-3)
        x = data.test.tensors[0].float()
        metrics["baseline/log_px_pixelwise"] = float(bernoulli_log_prob(
            torch.logit(p).expand_as(x), x).mean())
        if self.has_features():
            with torch.no_grad():
                z = torch.randn(self.spec.eval.samples, vae.latent_dim,
                                generator=torch.Generator().manual_seed(0))
                images = torch.sigmoid(vae.decode(z.to(device))).cpu()
            metrics.update(self.sample_metrics(images, data))
        return metrics

    def epoch_images(self, nets: Nets, data, records, step: int, epoch: int) -> None:
        if epoch % self.spec.eval.images_every_epochs:
            return
        vae = nets["model"]
        vae.eval()
        device = next(vae.parameters()).device
        with torch.no_grad():
            x = data.val.tensors[0][:32].to(device)
            recon = torch.sigmoid(vae.decode(vae.encode(x)[0]))
            pairs = torch.stack([x, recon], 1).flatten(0, 1)  # input, reconstruction, ...
            _log_grid(records, pairs, "reconstructions", step)
            z = torch.randn(GRID, vae.latent_dim, generator=torch.Generator().manual_seed(0))
            _log_grid(records, torch.sigmoid(vae.decode(z.to(device))), "samples", step)
            if vae.latent_dim == 2:
                means = vae.encode(data.test.tensors[0].to(device))[0].cpu().numpy()
                records.log_image(_scatter(means, data.test.tensors[1].numpy(),
                                          self.info.class_names), "latent", step)

    def final_artifacts(self, nets: Nets, data, records, device) -> None:
        self.log_nearest(records)
        vae = nets["model"].cpu()
        _save_best(records, nets, self.spec, self.info, Sampler(vae, vae.latent_dim), _side(data))


class VAENet(ConvVAE):
    """The VAE as the training loop calls it (through DDP): one forward gives the
    reconstruction logits from a reparameterised sample, and the posterior."""

    def forward(self, x: torch.Tensor):
        mean, log_var = self.encode(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        return self.decode(z), mean, log_var


def _scatter(points: np.ndarray, labels: np.ndarray, names: list[str]) -> np.ndarray:
    """A 2-d latent map coloured by class, as an RGB array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 5))
    for k, name in enumerate(names):
        pick = labels == k
        axis.scatter(points[pick, 0], points[pick, 1], s=6, label=name)
    axis.legend(markerscale=3, fontsize=7, loc="best")
    axis.set_xlabel("z[0]")
    axis.set_ylabel("z[1]")
    axis.set_title("test images' posterior means")
    from trainyard.media import figure_pixels

    return figure_pixels(fig)


# --------------------------------------------------------------------------- DCGAN


class GANTask(SampleQuality, Task):
    """Non-saturating GAN: per batch one discriminator step (real and fake passes separate, each
    with its own backward) and one generator step; Adam with beta1 = 0.5 for both. Quality is
    the classifier FID of `eval.samples` samples against the validation (per epoch, picks the
    best generator) and test images (at the end). With `model.ema_decay` the samples come from
    a running average of the generator's weights (`generator_ema`), which every measure,
    picture and the saved sampler use."""

    pixels = "unit"

    def __init__(self, spec, info=None):
        super().__init__(spec, info)
        self.frames: list[np.ndarray] = []
        self.averaged = {"generator_ema": "generator"} if spec.model.ema_decay else {}

    def build(self, sample: torch.Tensor) -> Nets:
        model, side, channels = self.spec.model, int(sample.shape[-1]), self.info.in_channels
        nets = {"generator": Generator(channels, side, list(model.generator_widths),
                                       model.noise_dim),
                "discriminator": Discriminator(channels, side, list(model.discriminator_widths),
                                               model.spectral_norm)}
        if self.averaged:
            nets["generator_ema"] = copy.deepcopy(nets["generator"]).requires_grad_(False)
        return nets

    def optimizers(self, nets: Nets) -> dict[str, torch.optim.Optimizer]:
        return {name: torch.optim.Adam(nets[name].parameters(), lr=self.base_lr(name),
                                       betas=(0.5, 0.999))
                for name in ("generator", "discriminator")}

    def sampler(self, nets: Nets) -> nn.Module:
        """The generator the samples come from: the averaged one where there is one."""
        return nets.get("generator_ema", nets["generator"])

    @torch.no_grad()
    def _average(self, nets: Nets) -> None:
        ema = nets.get("generator_ema")
        if ema is None:
            return
        gen = getattr(nets["generator"], "module", nets["generator"])  # DDP's inner network
        weight = 1.0 - self.spec.model.ema_decay
        for mine, theirs in zip(ema.parameters(), gen.parameters(), strict=True):
            mine.lerp_(theirs, weight)
        for mine, theirs in zip(ema.buffers(), gen.buffers(), strict=True):  # batch norm's
            mine.copy_(theirs)

    def base_lr(self, name: str) -> float:
        if name == "discriminator" and self.spec.model.discriminator_lr:
            return self.spec.model.discriminator_lr
        return self.spec.train.lr

    def train_epoch(self, nets: Nets, loader, optimizers, schedulers, device, rng, precision,
                    step: int) -> dict:
        gen, disc = nets["generator"], nets["discriminator"]
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        clip, cap = self.spec.train.grad_clip, self.spec.train.steps_per_epoch
        noise_dim, r1 = self.spec.model.noise_dim, self.spec.model.r1_gamma
        augment = (lambda x: diff_augment(x, rng)) if self.spec.model.diff_augment else \
            (lambda x: x)
        gen.train()
        disc.train()
        sums = np.zeros(5)  # d_loss, g_loss, D(x), D(G(z)), examples
        steps, start = 0, time.perf_counter()
        for real, _ in loader:
            real = real.to(device) * 2.0 - 1.0  # tanh's range
            n = len(real)
            z = torch.randn(n, noise_dim, generator=rng).to(device)
            fake = gen(z)
            # discriminator: real and fake batches in separate passes (batch norm sees each
            # alone), each with its own backward
            opt_d.zero_grad(set_to_none=True)
            seen = augment(real)
            if r1:
                seen = seen.detach().requires_grad_(True)
            d_real = disc(seen)
            loss_real = F.softplus(-d_real).mean()  # -log D(x)
            if r1:  # a discriminator flat around the real images: no overshoot to oscillate
                grad, = torch.autograd.grad(d_real.sum(), seen, create_graph=True)
                (loss_real + r1 / 2 * grad.square().flatten(1).sum(1).mean()).backward()
            else:
                loss_real.backward()
            d_fake = disc(augment(fake.detach()))
            loss_fake = F.softplus(d_fake).mean()  # -log(1 - D(G(z)))
            loss_fake.backward()
            if clip:
                nn.utils.clip_grad_norm_(disc.parameters(), clip)
            opt_d.step()
            # generator, non-saturating: maximise log D(G(z))
            opt_g.zero_grad(set_to_none=True)
            loss_g = F.softplus(-disc(augment(fake))).mean()
            loss_g.backward()
            if clip:
                nn.utils.clip_grad_norm_(gen.parameters(), clip)
            opt_g.step()
            self._average(nets)
            for scheduler in schedulers.values():
                scheduler.step()
            with torch.no_grad():
                sums += [float(loss_real + loss_fake) * n, float(loss_g) * n,
                         float(torch.sigmoid(d_real).sum()), float(torch.sigmoid(d_fake).sum()),
                         n]
            steps += 1
            if cap and steps >= cap:
                break
        seconds = time.perf_counter() - start
        d_loss, g_loss, d_x, d_gz, count = all_sum(sums.tolist(), device)
        return {"train/d_loss": d_loss / count, "train/g_loss": g_loss / count,
                "train/d_real": d_x / count, "train/d_fake": d_gz / count,
                "perf/samples_per_s": count / seconds, "perf/epoch_s": seconds, "steps": steps}

    @torch.no_grad()
    def samples(self, gen: nn.Module, count: int, seed: int = 0) -> torch.Tensor:
        """`count` samples in [0, 1] from fixed noise (the same for every epoch and run)."""
        gen.eval()
        device = next(gen.parameters()).device
        z = torch.randn(count, self.spec.model.noise_dim,
                        generator=torch.Generator().manual_seed(seed))
        out = torch.cat([gen(chunk.to(device)).cpu() for chunk in z.split(500)])
        return (out + 1.0) / 2.0

    def evaluate(self, nets: Nets, dataset, device, autocast=None) -> dict[str, float]:
        fake, _ = self.features()(self.samples(self.sampler(nets), self.spec.eval.samples))
        real, _ = self.features()(dataset.tensors[0])
        return {"fid": gen_metrics.frechet_distance(real, fake)}

    def test_metrics(self, nets: Nets, data, device, autocast) -> dict[str, float]:
        return self.sample_metrics(self.samples(self.sampler(nets), self.spec.eval.samples),
                                   data)

    def epoch_images(self, nets: Nets, data, records, step: int, epoch: int) -> None:
        if epoch % self.spec.eval.images_every_epochs == 0:
            self.frames.append(_log_grid(records, self.samples(self.sampler(nets), GRID),
                                         "samples", step))

    def final_artifacts(self, nets: Nets, data, records, device) -> None:
        from trainyard.media import write_gif

        with tempfile.TemporaryDirectory() as tmp:
            if self.frames:
                gif = write_gif(self.frames, Path(tmp, "samples_over_training.gif"), fps=4)
                records.log_artifact(gif, "plots")
        self.log_nearest(records)
        gen = self.sampler(nets).cpu()
        _save_best(records, nets, self.spec, self.info, Sampler(gen, gen.noise_dim), _side(data))
