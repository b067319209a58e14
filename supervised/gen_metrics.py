"""How good a generator's samples are, measured: a classifier FID, class coverage and a
memorisation check.

Inception features mean nothing on 8x8 digits, so the Fréchet distance is taken in the
penultimate-layer features of one digits classifier. Which one is pinned, so that the FIDs of
different runs compare: by default a small ResNet trained here from a fixed seed on a fixed
split (`pinned_classifier`: the same code and data give the same weights), or the best model of
a classifier run the job names (`eval.feature_run: runs:/RUN_ID`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

#: the pinned classifier's recipe; change it and every FID changes: bump the version
PINNED = {"name": "digits-resnet-v1", "widths": [32, 64], "epochs": 30, "seed": 1234,
          "lr": 3e-3, "batch": 64}


class FeatureNet:
    """A classifier's logits and penultimate features of images given in [0, 1]."""

    def __init__(self, model: nn.Module, mean: np.ndarray, std: np.ndarray, name: str):
        self.model, self.name = model.eval(), name
        # the classifier was trained on standardised pixels: the same shift and scale here
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._features: list[torch.Tensor] = []
        head = self.model.head[-1]  # every classifier here ends in a Linear named head[-1]
        head.register_forward_hook(lambda _m, inputs, _out: self._features.append(inputs[0]))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, F), predicted classes (N,)) of (N, C, H, W) images in [0, 1]."""
        features, classes = [], []
        for start in range(0, len(images), batch):
            self._features.clear()
            x = (images[start:start + batch].float().cpu() - self.mean) / self.std
            logits = self.model(x)
            features.append(self._features[0].double())
            classes.append(logits.argmax(-1))
        return torch.cat(features).numpy(), torch.cat(classes).numpy()


CACHE_ENV = "TRAINYARD_CACHE"  # where the pinned classifier is kept (default ~/.cache/trainyard)


def _cache_file() -> Path:
    """The pinned classifier's weights, per recipe and torch version (the same code on another
    torch may round differently, so it trains anew there)."""
    import hashlib
    import json
    import os

    root = Path(os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME")
                                                   or Path.home() / ".cache") / "trainyard")
    key = hashlib.sha256(json.dumps([PINNED, torch.__version__], sort_keys=True).encode())
    return root / "pinned" / f"{PINNED['name']}-{key.hexdigest()[:12]}" / "state.pt"


def pinned_classifier() -> tuple[FeatureNet, float]:
    """The default feature network and its test accuracy: a ResNet trained on scikit-learn's
    digits (standard split, seed 0) with a fixed seed, single-threaded so it is the same
    network every time. Training it takes ~30 s of a core, which every generative run (each
    DDP rank) paid: it is trained once per machine and recipe and kept in the user's cache
    (`TRAINYARD_CACHE`), read back as plain tensors; a file that cannot be read is trained
    anew."""
    import os
    import tempfile

    from sklearn.datasets import load_digits

    from trainyard.checkpoints import CheckpointError, load_state, save_state
    from trainyard.supervised.data import split_indices
    from trainyard.supervised.models import ResNet

    bunch = load_digits()
    x = torch.from_numpy(bunch.images[:, None].astype(np.float32) / 16.0)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    split = split_indices(bunch.target, 0.15, 0.15, 0)
    train = torch.from_numpy(np.concatenate([split["train"], split["val"]]))
    mean, std = x[train].mean().reshape(1), x[train].std().reshape(1)
    torch.manual_seed(PINNED["seed"])  # the initial weights are part of the recipe
    model = ResNet(1, 10, PINNED["widths"], dropout=0.0)
    cached = _cache_file()
    try:
        model.load_state_dict(load_state(cached.parent)["model"])
    except (CheckpointError, KeyError, RuntimeError, OSError):
        _train_pinned(model, (x[train] - mean.view(1, 1, 1, 1)) / std.view(1, 1, 1, 1),
                      y[train])
        try:  # written aside and renamed: DDP ranks may write it at once
            cached.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cached.parent) as aside:
                os.replace(save_state(aside, {"model": model.state_dict()}), cached)
        except OSError:  # a read-only home: the run goes on with what it trained
            pass
    net = FeatureNet(model, mean.numpy(), std.numpy(), PINNED["name"])
    test = torch.from_numpy(split["test"])
    _, predicted = net(x[test])
    return net, float((predicted == y[test].numpy()).mean())


def _train_pinned(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(PINNED["seed"])
        optimizer = torch.optim.Adam(model.parameters(), lr=PINNED["lr"])
        model.train()
        for _ in range(PINNED["epochs"]):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(order), PINNED["batch"]):
                pick = order[start:start + PINNED["batch"]]
                loss = nn.functional.cross_entropy(model(inputs[pick]), labels[pick])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)


def classifier_from_run(saved: dict, source: str) -> FeatureNet:
    """The feature network of `eval.feature_run`: a trainyard image classifier's best model
    (`saved`: its info.json as "info" and its weights as "state"); ValueError if it is not
    one."""
    from pydantic import TypeAdapter

    from trainyard.supervised.data import DataInfo
    from trainyard.supervised.models import build_model
    from trainyard.supervised.spec import ModelSection

    info = saved["info"]
    if info.get("task") != "image" or not info.get("pixel_mean"):
        raise ValueError(f"eval.feature_run {source}: not an image classifier trained by this "
                         "trainyard version (its best_model/info.json has no task 'image' and "
                         "pixel statistics); train one, e.g. supervised/configs/cnn_digits.yaml")
    model_spec = TypeAdapter(ModelSection).validate_python(info["model"])
    data_info = DataInfo("image", num_classes=len(info["class_names"]),
                         in_channels=info["in_channels"], class_names=info["class_names"])
    model = build_model(model_spec, data_info)
    model.load_state_dict(saved["state"]["model"])
    if not isinstance(getattr(model, "head", None), nn.Sequential):
        raise ValueError(f"eval.feature_run {source}: its model has no `head` ending in a "
                         "Linear layer to take features before; use a resnet classifier")
    return FeatureNet(model, np.array(info["pixel_mean"]), np.array(info["pixel_std"]),
                      f"run {source}")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():  # near-singular product: nudge both (the usual fix)
        eps = np.eye(len(cov_a)) * 1e-6
        root, _ = linalg.sqrtm((cov_a + eps) @ (cov_b + eps), disp=False)
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def class_coverage(predicted: np.ndarray, classes: int) -> dict[str, float]:
    """The predicted-class histogram of the samples: its normalised entropy (1: every class
    equally often; mode collapse drives it down) and how many classes get at least half of
    their fair share."""
    share = np.bincount(predicted, minlength=classes) / max(1, len(predicted))
    nonzero = share[share > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(classes))
    return {"class_entropy": entropy,
            "classes_covered": float((share >= 0.5 / classes).sum()),
            **{f"class_share_{k}": float(s) for k, s in enumerate(share)}}


def nearest(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query (N, D), the index of and Euclidean distance to its nearest reference."""
    q, r = torch.from_numpy(queries).double(), torch.from_numpy(references).double()
    distances = torch.cdist(q, r)
    best = distances.min(dim=1)
    return best.indices.numpy(), best.values.numpy()


def memorisation(samples: np.ndarray, train: np.ndarray, heldout: np.ndarray,
                 quantile: float = 0.05) -> dict[str, float]:
    """Are samples copies of training images? Held-out real images are never copies; the 5%
    closest of them to the training set set the bar, and a generator that does not memorise
    puts about 5% of its samples under it. A share well above `quantile` means copying."""
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    _, heldout_d = nearest(flat(heldout), flat(train))
    _, sample_d = nearest(flat(samples), flat(train))
    bar = float(np.quantile(heldout_d, quantile))
    return {"memorised_share": float((sample_d < bar).mean()),
            "nn_distance_samples": float(np.median(sample_d)),
            "nn_distance_heldout": float(np.median(heldout_d))}
