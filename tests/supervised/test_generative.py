"""Generative models as supervised jobs: the VAE's bounds, the GAN's measures of quality (a
classifier FID, class coverage, memorisation), their spec checks, and one trained run of each
on Ray Train checked several ways."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import runs_of, write
from trainyard.cli import main
from trainyard.supervised import gen_metrics
from trainyard.supervised.generative import ConvVAE, elbo_parts, importance_weighted_bound
from trainyard.supervised.spec import SupervisedJob


def _spec(**model) -> dict:
    return {"name": "g", "kind": "supervised", "data": {"name": "digits"}, "model": model}


def test_the_importance_weighted_bound_is_tighter_than_the_elbo():
    torch.manual_seed(0)
    vae = ConvVAE(1, 8, [8, 16], 4)
    with torch.no_grad():  # a posterior far from the prior: the ELBO pays ~6 nats of KL
        vae.posterior.bias.copy_(torch.tensor([1.0] * 4 + [-2.0] * 4))
    x = torch.rand(64, 1, 8, 8).bernoulli()
    with torch.no_grad():
        recon, kl = elbo_parts(vae, x)
    elbo = (recon - kl).mean()
    k1, k100 = (importance_weighted_bound(vae, x, k).mean() for k in (1, 100))
    assert abs(float(k1 - elbo)) < 3.0  # k = 1 is the ELBO itself (another sample of it)
    assert k100 > elbo + 1.0  # and more samples tighten it
    assert float(kl.min()) >= 0


def test_the_frechet_distance_of_a_set_to_itself_is_zero_and_a_shift_costs_its_square():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 5))
    assert gen_metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert gen_metrics.frechet_distance(a, a + 2.0) == pytest.approx(5 * 4.0, rel=1e-6)


def test_class_coverage_sees_mode_collapse():
    uniform = gen_metrics.class_coverage(np.arange(1000) % 10, 10)
    collapsed = gen_metrics.class_coverage(np.full(1000, 3), 10)
    assert uniform["class_entropy"] == pytest.approx(1.0) and uniform["classes_covered"] == 10
    assert collapsed["class_entropy"] == 0.0 and collapsed["classes_covered"] == 1


def test_memorisation_flags_copies_of_training_images_and_not_new_ones():
    rng = np.random.default_rng(0)
    train, heldout, new = (rng.random((n, 1, 8, 8)) for n in (500, 200, 300))
    copies = train[rng.integers(0, 500, 300)]
    assert gen_metrics.memorisation(copies, train, heldout)["memorised_share"] == 1.0
    assert gen_metrics.memorisation(new, train, heldout)["memorised_share"] < 0.15


def test_the_pinned_classifier_is_the_same_network_every_time(monkeypatch, tmp_path):
    # its recipe, shortened (the full one, 30 epochs, scores >= 0.95: the DCGAN test says so)
    monkeypatch.setitem(gen_metrics.PINNED, "epochs", 2)
    monkeypatch.setenv(gen_metrics.CACHE_ENV, str(tmp_path))
    images = torch.rand(20, 1, 8, 8)
    trained, accuracy = gen_metrics.pinned_classifier()  # trained, then kept
    kept = gen_metrics._cache_file()
    assert kept.is_file() and str(kept).startswith(str(tmp_path)) and accuracy > 0.5
    kept.write_bytes(kept.read_bytes()[:100])  # a damaged file is trained anew, the same
    again, accuracy_again = gen_metrics.pinned_classifier()
    read, accuracy_read = gen_metrics.pinned_classifier()  # read back
    assert accuracy == accuracy_again == accuracy_read
    for net in (again, read):
        np.testing.assert_array_equal(trained(images)[0], net(images)[0])
    # another recipe is another file
    monkeypatch.setitem(gen_metrics.PINNED, "epochs", 3)
    assert gen_metrics._cache_file() != kept


@pytest.mark.parametrize("model,data,expected", [
    ({"arch": "dcgan"}, {"name": "digits_rows"}, "model.arch dcgan generates images; data.name "
                                                  "is 'digits_rows'"),
    ({"arch": "vae", "widths": [8, 8, 8, 8]}, {"name": "digits"},
     "4 stride-2 stages need an image side divisible by 16; digits images are 8x8"),
    ({"arch": "vae"}, {"name": "digits"}, None),
])
def test_generative_models_are_held_to_image_data_they_fit(model, data, expected):
    raw = {**_spec(**model), "data": data}
    if expected is None:
        assert SupervisedJob.model_validate(raw).monitor == ("val/elbo", "max")
        return
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        SupervisedJob.model_validate(raw)


def test_a_monitor_the_task_does_not_have_is_named_with_the_ones_it_has(workdir, capsys):
    job = write(workdir / "g.yaml", "name: g\nkind: supervised\ndata: {name: digits}\n"
                                    "model: {arch: dcgan}\nstop: {monitor: val/accuracy}\n")
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert "g.yaml" in err and "stop.monitor 'val/accuracy' is not a metric of this gan task; "\
        "one of: auto, val/fid" in err


def test_a_feature_run_classifier_gives_its_penultimate_features():
    from trainyard.supervised.models import ResNet

    net = ResNet(1, 10, [8, 16])
    info = {"task": "image", "model": {"arch": "resnet", "widths": [8, 16]},
            "class_names": [str(k) for k in range(10)], "in_channels": 1,
            "pixel_mean": [0.3], "pixel_std": [0.4]}
    features = gen_metrics.classifier_from_run({"info": info, "state": {"model":
                                                                        net.state_dict()}},
                                               "runs:/abc")
    found, classes = features(torch.rand(7, 1, 8, 8))
    assert found.shape == (7, 16) and classes.shape == (7,)
    with pytest.raises(ValueError, match="runs:/lm: not an image classifier"):
        gen_metrics.classifier_from_run({"info": {**info, "task": "lm"}, "state": {}},
                                        "runs:/lm")


def _images(client, run_id: str) -> dict[str, list[int]]:
    """The steps at which each MLflow image key was logged."""
    found: dict[str, set[int]] = {}
    for item in client.list_artifacts(run_id, "images"):
        name = item.path.split("/")[-1]  # <key>+step+<step>+timestamp+...png
        key, _, rest = name.partition("+step+")
        if rest and name.endswith(".png"):
            found.setdefault(key, set()).add(int(rest.split("+")[0]))
    return {k: sorted(v) for k, v in found.items()}


@pytest.mark.slow
def test_a_vae_trains_on_ray_train_and_reports_its_bounds_and_pictures(workdir, ray_once):
    from conftest import REPO

    job = REPO / "supervised" / "configs" / "vae_digits.yaml"
    assert main(["run", str(job), "-o", "stop.epochs=12", "-o", "resources.workers=1",
                 "-o", "model.latent_dim=2", "-o", "tracking.system_metrics=false",
                 "-o", "model.kl_warmup_epochs=2", "-o", "eval.images_every_epochs=4"]) == 0
    client, [run] = runs_of(f"sqlite:///{workdir / 'trainyard-runs' / 'mlflow.db'}",
                            "generative")
    metrics = run.data.metrics
    elbo = [m.value for m in client.get_metric_history(run.info.run_id, "val/elbo")]
    assert len(elbo) == 12 and elbo[-1] > elbo[0] + 3  # nats per 8x8 image
    # the bound and its parts add up; the 100-sample bound is tighter; the model beats
    # pixels on their own
    assert metrics["test/elbo"] == pytest.approx(metrics["test/recon"] - metrics["test/kl"],
                                                 abs=1e-3)
    assert metrics["test/log_px_iw100"] > metrics["test/elbo"]
    assert metrics["test/log_px_iw100"] > metrics["baseline/log_px_pixelwise"] + 1.5
    assert metrics["train/kl_weight"] == 1.0
    # the GAN's sample measures, with the same pinned classifier and the same held-out images
    # (grey, as loaded, not the binarised ones the ELBO scores: against those the training
    # images scored a floor of 16 instead of the GAN run's 0.6), so the two compare
    assert metrics["test/fid_real_floor"] < 2 and metrics["test/fid_real_floor"] < \
        metrics["test/fid"] < 1e3
    assert metrics["test/classes_covered"] >= 5, metrics
    assert run.data.tags["trainyard.headline"] == "val/elbo"
    steps = _images(client, run.info.run_id)
    assert set(steps) == {"reconstructions", "samples", "latent", "nearest_training_image"}, \
        steps
    assert len(steps["samples"]) == 3  # epochs 4, 8, 12
    folder = client.download_artifacts(run.info.run_id, "best_model", str(workdir))
    info = json.loads((workdir / "best_model" / "info.json").read_text())
    assert info["task"] == "vae" and folder


@pytest.mark.slow
def test_a_dcgan_trains_two_ddp_networks_and_is_measured(workdir, ray_once):
    from conftest import REPO

    job = REPO / "supervised" / "configs" / "dcgan_digits.yaml"
    # two DDP ranks (the shipped config trains on one worker), so both networks are wrapped
    assert main(["run", str(job), "-o", "stop.epochs=16", "-o", "tracking.system_metrics=false",
                 "-o", "eval.images_every_epochs=4", "-o", "resources.workers=2",
                 "-o", "resources.cpus_per_worker=1"]) == 0
    client, [run] = runs_of(f"sqlite:///{workdir / 'trainyard-runs' / 'mlflow.db'}",
                            "generative")
    metrics, run_id = run.data.metrics, run.info.run_id
    fid = [m.value for m in client.get_metric_history(run_id, "val/fid")]
    assert len(fid) == 16 and min(fid) < fid[0] / 2, fid
    assert metrics["val/best_fid"] == pytest.approx(min(fid))
    assert metrics["test/fid_real_floor"] < metrics["test/fid"]
    assert metrics["test/classes_covered"] >= 6, metrics
    assert 0.0 <= metrics["test/memorised_share"] < 0.5
    assert 0.0 < metrics["train/d_real"] < 1.0 and 0.0 < metrics["train/d_fake"] < 1.0
    assert metrics["fid/classifier_test_accuracy"] > 0.95
    assert _images(client, run_id)["samples"] == sorted(_images(client, run_id)["samples"])
    assert len(_images(client, run_id)["samples"]) == 4
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "plots/samples_over_training.gif" in artifacts
    # new samples from the saved generator: a PNG grid of 16, each 8x8 digit drawn at 32x32
    from PIL import Image

    out = workdir / "grid.png"
    assert main(["sample", run_id, "--n", "16", "--out", str(out)]) == 0
    assert Image.open(out).size == (4 * 33 + 1, 4 * 33 + 1)
    assert main(["sample", run_id, "--n", "0"]) == 2


@pytest.mark.parametrize("arch", ["vae", "dcgan"])
def test_a_users_mnist_idx_folder_trains_a_generative_model_at_its_own_size(tmp_path, arch):
    """28x28 IDX images in [0, 1], the networks sized from them, one epoch step by step."""
    import contextlib

    from test_formats import make_mnist

    from trainyard.supervised.data import load_dataset
    from trainyard.supervised.task_kinds import make_task

    spec = SupervisedJob.model_validate({
        "name": "g", "kind": "supervised",
        "model": {"arch": arch, **({"widths": [8, 16]} if arch == "vae" else
                                   {"generator_widths": [16, 8], "discriminator_widths": [8, 16],
                                    "ema_decay": 0.9, "diff_augment": True, "r1_gamma": 1.0})},
        "data": {"name": "mnist_idx", "path": str(make_mnist(tmp_path / "mnist", 200, 20))},
        "train": {"batch_size": 8}, "eval": {"samples": 100}})
    data = load_dataset(spec.data, 0, make_task(spec).pixels)
    task = make_task(spec, data.info)
    data = task.prepare(data)
    images = data.train.tensors[0]
    assert images.shape[1:] == (1, 28, 28) and 0 <= images.min() and images.max() <= 1
    nets = task.build(data.val.tensors[0][:2])
    first = nets["generator" if "generator" in nets else "model"]
    start = {k: v.clone() for k, v in first.state_dict().items()}
    optimizers = task.optimizers(nets)
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 1.0)
                  for k, o in optimizers.items()}
    loader = torch.utils.data.DataLoader(data.train, batch_size=8, drop_last=True)
    stats = task.train_epoch(nets, loader, optimizers, schedulers, torch.device("cpu"),
                             torch.Generator().manual_seed(0),
                             (contextlib.nullcontext(), None), 0)
    assert stats["steps"] == len(loader) and all(np.isfinite(v) for v in stats.values())
    if arch == "vae":
        assert task.evaluate(nets, data.val, torch.device("cpu"))["elbo"] < 0
    else:  # the averaged generator moved from where it started, but lags the generator
        ema, gen = nets["generator_ema"].state_dict(), nets["generator"].state_dict()
        assert set(optimizers) == {"generator", "discriminator"}
        for name, value in ema.items():
            if value.is_floating_point() and "running" not in name:
                assert not torch.equal(value, start[name]) and not torch.equal(value, gen[name])
        # a checkpoint of every network restores the averaged one too (it has no optimizer)
        from trainyard.supervised.train_loop import _restore

        fresh = task.build(data.val.tensors[0][:2])
        opts = task.optimizers(fresh)
        saved = {"nets": {k: n.state_dict() for k, n in nets.items()},
                 "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                 "best_model": None}
        _restore(saved, fresh, opts, {k: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 1.0)
                                      for k, o in opts.items()}, task)
        assert all(torch.equal(v, fresh["generator_ema"].state_dict()[k]) for k, v in ema.items())


def test_diff_augment_shifts_by_at_most_an_eighth_and_cuts_a_quarter_to_background():
    from trainyard.supervised.generative import diff_augment

    x = torch.full((64, 1, 8, 8), -1.0)
    x[:, :, 4, 4] = 1.0  # one lit pixel in the middle
    x.requires_grad_(True)
    out = diff_augment(x, torch.Generator().manual_seed(0))
    lit = (out[:, 0] == 1.0).nonzero()
    # wherever the pixel survived the cutout it moved by at most one pixel each way
    assert len(lit) > 16 and ((lit[:, 1:] - 4).abs() <= 1).all()
    assert len(set(map(tuple, lit[:, 1:].tolist()))) > 3  # and the shifts differ per image
    assert ((out == -1.0).flatten(1).sum(1) >= 16 - 1).all()  # a 4x4 quarter at least
    out.sum().backward()  # the generator learns through it
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["vae", "dcgan"])
def test_samples_are_drawn_from_the_saved_decoder_or_averaged_generator(tmp_path, arch):
    from trainyard.checkpoints import save_state
    from trainyard.supervised.generative import Generator, draw

    spec = SupervisedJob.model_validate(_spec(arch=arch, **(
        {"widths": [8, 16], "latent_dim": 3} if arch == "vae" else
        {"generator_widths": [16, 8], "discriminator_widths": [8, 16], "noise_dim": 5})))
    torch.manual_seed(0)
    if arch == "vae":
        state = {"model": ConvVAE(1, 8, [8, 16], 3).state_dict()}
    else:  # the averaged generator is the one that draws
        state = {"generator": Generator(1, 8, [16, 8], 5).state_dict(),
                 "generator_ema": Generator(1, 8, [16, 8], 5).state_dict()}
    save_state(tmp_path, state)
    (tmp_path / "info.json").write_text(json.dumps({
        "model": spec.model.model_dump(mode="json"), "task": spec.task, "in_channels": 1,
        "image_side": 8}))
    images = draw(tmp_path, 6, seed=1)
    assert images.shape == (6, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, draw(tmp_path, 6, seed=1))  # the seed decides the noise
    if arch == "dcgan":
        ema = Generator(1, 8, [16, 8], 5)
        ema.load_state_dict(state["generator_ema"])
        z = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(images, (ema.eval()(z) + 1) / 2)
