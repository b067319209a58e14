"""`model.arch: module:factory`: the user's own network, found when a spec loads, imported and
checked where the job runs (or under `validate --check-env`), called with the data's shapes it
declares, held to the output shape the task needs, and trained by Ray Train workers that
import it themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import env_without_tracking, runs_of, write
from trainyard.cli import main
from trainyard.loader import SpecError, load_spec

MODELS = '''
open("imported.marker", "w").close()
import torch
from torch import nn


def small_cnn(in_channels, num_classes, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.LazyLinear(num_classes))


def takes_everything(**shapes):
    seen.update(shapes)
    return nn.Linear(1, 1)


def three_classes(in_channels, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(3))


def a_string(num_classes):
    return "not a network"


seen = {}
'''


@pytest.fixture(autouse=True)
def fresh_module():
    """Each test imports its own folder's mymodels (the marker file says whether it ran)."""
    sys.modules.pop("mymodels", None)
    yield
    sys.modules.pop("mymodels", None)


def _job(folder: Path, arch: str = "mymodels:small_cnn", extra: str = "") -> Path:
    write(folder / "mymodels.py", MODELS)
    return write(folder / "job.yaml", "name: mine\nkind: supervised\ndata: {name: digits}\n"
                                      f"model:\n  arch: {arch}\n  options: {{width: 4}}\n{extra}")


def test_validate_finds_the_factory_without_running_it_and_check_env_imports_it(workdir,
                                                                               capsys):
    job = _job(workdir)
    assert main(["validate", str(job)]) == 0
    assert not (workdir / "imported.marker").exists()  # none of the user's code ran
    assert main(["validate", "--check-env", str(job)]) == 0
    assert (workdir / "imported.marker").exists()
    assert "arch: mymodels:small_cnn" in capsys.readouterr().out


def test_the_shipped_example_checks_from_its_folder(monkeypatch, capsys):
    from conftest import REPO

    monkeypatch.chdir(REPO / "examples")
    assert main(["validate", "--check-env", "my_net_digits.yaml"]) == 0
    assert "arch: mymodels:small_vgg" in capsys.readouterr().out


@pytest.mark.parametrize("arch,deep,expected", [
    ("resnt", False, "model.arch: unknown arch 'resnt' (did you mean 'resnet'?); one of "
                     "'resnet', 'lstm', 'gru', 'transformer', 'vae', 'dcgan', 'seq2seq_gru', "
                     "'seq2seq_transformer', or module:factory"),
    ("gone:make_net", False, "model.arch: cannot find module 'gone' of 'gone:make_net'; run from "
                             "the folder that holds it"),
    ("mymodels:nothere", True, "model.arch: module 'mymodels' has no function 'nothere'"),
    ("my models:x", False, "write your own model as module:name"),
])
def test_a_bad_factory_is_one_problem_at_the_arch_line(workdir, arch, deep, expected):
    job = _job(workdir, arch)
    with pytest.raises(SpecError) as caught:
        load_spec(job, user_code=deep)
    [problem] = caught.value.problems
    assert problem.startswith("job.yaml:5: ") and expected in problem, problem


def test_the_factory_gets_the_shapes_it_declares_and_the_options(workdir):
    from trainyard.supervised.custom_model import build, check_output
    from trainyard.supervised.data import DataInfo

    _job(workdir)
    info = DataInfo(task="image", num_classes=10, in_channels=1)
    images = torch.zeros(2, 1, 8, 8)
    spec = load_spec(_job(workdir), user_code=True).spec
    net = build(spec.model, info, images)
    assert net[0].out_channels == 4  # options: {width: 4}; task etc. were not passed to it
    check_output(spec.model, info, images)
    import mymodels

    everything = spec.model.model_copy(update={"arch": "mymodels:takes_everything"})
    build(everything, info, images)
    assert mymodels.seen == {"task": "image", "num_classes": 10, "seq_len": 0,
                             "in_channels": 1, "image_size": (8, 8), "width": 4}
    wrong = spec.model.model_copy(update={"arch": "mymodels:three_classes", "options": {}})
    with pytest.raises(ValueError, match=r"a batch of shape \(2, 1, 8, 8\) gave \(2, 3\); it "
                                         r"should give \(2, 10\) \(class logits\)"):
        check_output(wrong, info, images)
    string = spec.model.model_copy(update={"arch": "mymodels:a_string", "options": {}})
    with pytest.raises(ValueError, match="returned str, not a torch.nn.Module"):
        build(string, info, images)


@pytest.mark.slow
def test_a_custom_network_trains_on_ray_train_workers_that_import_it(workdir):
    # the console script from the folder holding the module, as a user runs it; the Train
    # workers are other processes that import mymodels themselves (its LazyLinear takes its
    # shape from a sample before DDP wraps it)
    job = _job(workdir, extra="resources: {workers: 2}\nstop: {epochs: 2}\n"
                              "tracking: {experiment: mine, system_metrics: false}\n")
    script = Path(sys.executable).with_name("trainyard")
    out = subprocess.run([str(script), "run", str(job)], cwd=workdir, env=env_without_tracking(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, [run] = runs_of(f"sqlite:///{workdir / 'trainyard-runs' / 'mlflow.db'}", "mine")
    assert run.info.status == "FINISHED"
    assert run.data.tags["trainyard.model"] == "mymodels:small_cnn"
    assert run.data.metrics["test/accuracy"] > 0.5, run.data.metrics  # chance is 0.1
