"""Bad job files give exit code 2 and one message naming the file, line, field and the fix."""

from __future__ import annotations

import pytest

from trainyard.cli import main
from trainyard.loader import SpecError, load_spec

GOOD = """\
name: digits-test
kind: supervised
resources:
  workers: 1
model:
  arch: resnet
  widths: [8]
train:
  lr: 1.0e-3
stop:
  epochs: 2
"""

# (case id, file text, overrides, fragments the message must contain)
BAD = [
    ("unknown-key", GOOD.replace("  lr: 1.0e-3", "  lr: 1.0e-3\n  lrr: 2"), [],
     ["bad.yaml:10", "train.lrr", "unknown field", "did you mean 'lr'"]),
    ("unknown-section", GOOD + "optimiser: {}\n", [],
     ["bad.yaml:12", "optimiser", "unknown field"]),
    ("wrong-type", GOOD.replace("workers: 1", "workers: two"), [],
     ["bad.yaml:4", "resources.workers", "valid integer", "'two'"]),
    ("zero-workers", GOOD.replace("workers: 1", "workers: 0"), [],
     ["bad.yaml:4", "resources.workers", "greater than or equal to 1"]),
    ("negative-epochs", GOOD.replace("epochs: 2", "epochs: -5"), [],
     ["bad.yaml:11", "stop.epochs", "greater than or equal to 1"]),
    ("negative-lr", GOOD.replace("lr: 1.0e-3", "lr: -0.1"), [],
     ["bad.yaml:9", "train.lr", "greater than 0"]),
    ("custom-names-cpu", GOOD.replace("workers: 1", "workers: 1\n  custom: {CPU: 2}"), [],
     ["bad.yaml:5", "resources.custom.CPU", "Ray's own resource", "cpus_"]),
    ("bad-placement", GOOD, ["resources.placement=scatter"],
     ["resources.placement", "'pack'", "'spread'"]),
    ("bad-choice", GOOD.replace("arch: resnet", "arch: vgg"), [],
     ["bad.yaml:6", "model.arch", "'resnet'", "'vgg'"]),
    ("missing-name", GOOD.replace("name: digits-test\n", ""), [],
     ["bad.yaml", "name", "required field is missing"]),
    ("missing-kind", GOOD.replace("kind: supervised\n", ""), [],
     ["bad.yaml", "kind: is missing", "rl", "supervised"]),
    ("unknown-kind", GOOD.replace("kind: supervised", "kind: unsupervised"), [],
     ["bad.yaml:2", "kind: is 'unsupervised'", "expected one of"]),
    ("yaml-syntax", GOOD.replace("  workers: 1", "  workers: [1"), [],
     ["bad.yaml:", "YAML syntax error"]),
    ("bad-indent", GOOD.replace("  lr: 1.0e-3", "    lr: 1.0e-3\n  batch_size: 4"), [],
     ["bad.yaml:", "YAML syntax error"]),
    ("duplicate-key", GOOD + "name: again\n", [],
     ["bad.yaml:12", "name", "twice"]),
    ("not-a-mapping", "- just\n- a list\n", [], ["bad.yaml", "YAML mapping"]),
    ("bad-seeds", GOOD + "seeds: [0, 0]\n", [], ["bad.yaml:12", "seeds", "must not repeat"]),
    ("bad-name", GOOD.replace("name: digits-test", "name: 'my job!'"), [],
     ["bad.yaml:1", "name", "pattern"]),
    ("override-unknown", GOOD, ["train.lrr=3"],
     ["-o train.lrr=3", "train.lrr", "unknown field"]),
    ("override-type", GOOD, ["stop.epochs=many"],
     ["-o stop.epochs=many", "stop.epochs", "valid integer"]),
    ("override-syntax", GOOD, ["train.lr"], ["train.lr", "KEY.PATH=VALUE"]),
    ("override-into-scalar", GOOD, ["name.first=x"], ["name.first=x", "not a section"]),
    ("sweep-grammar", GOOD + "sweep: {metric: val/accuracy, space: {train.lr: 'between(1, 2)'}}\n",
     [], ["bad.yaml:12", "sweep.space", "unknown function 'between'"]),
    ("sweep-bounds", GOOD + "sweep: {metric: m, space: {train.lr: 'loguniform(0, 1)'}}\n",
     [], ["bad.yaml:12", "loguniform() needs low > 0"]),
    ("resnet-on-text", GOOD.replace("  widths: [8]\n", "") + "data: {name: text}\n", [],
     ["bad.yaml:6", "model.arch resnet needs image data", "use lstm, gru or transformer"]),
    ("lstm-on-images", GOOD.replace("  arch: resnet\n  widths: [8]", "  arch: lstm"), [],
     ["bad.yaml:6", "model.arch lstm reads sequences", "digits_rows"]),
    ("bidirectional-lm", GOOD.replace("  arch: resnet\n  widths: [8]",
                                      "  arch: gru\n  bidirectional: true")
     + "data: {name: text}\n", [], ["bad.yaml:7", "cannot read ahead"]),
    ("heads-divide", GOOD.replace("  arch: resnet\n  widths: [8]",
                                  "  arch: transformer\n  d_model: 30\n  heads: 4")
     + "data: {name: digits_rows}\n", [], ["bad.yaml:5", "heads (4) must divide d_model (30)"]),
    ("unknown-dataset", GOOD + "data: {name: imagenet}\n", [],
     ["bad.yaml:12", "data", "'digits'", "'imagenet'"]),
    ("union-member-unknown-field", GOOD.replace("  arch: resnet\n  widths: [8]",
                                                "  arch: lstm\n  hiden: 3")
     + "data: {name: digits_rows}\n", [],
     ["bad.yaml:7", "model.hiden", "did you mean 'hidden'", "bidirectional"]),
    ("union-tag-missing", GOOD + "data: {val_fraction: 0.2}\n", [],
     ["bad.yaml:12", "data.name", "required field is missing: one of 'digits'", "'text'"]),
    ("unknown-env", "name: x\nkind: rl\nagent:\n  algo: dqn\n  env: CartPol-v1\n", [],
     ["bad.yaml:5", "agent.env", "unknown environment", "CartPole-v1"]),
    ("rl-negative-steps", "name: x\nkind: rl\nagent: {env: CartPole-v1}\nstop:\n  env_steps: -1\n",
     [], ["bad.yaml:5", "stop.env_steps", "greater than or equal to 1"]),
    # impossible resource requests (what the schema can tell; what the cluster lacks is
    # tests/test_launcher.py: exit 3 naming the resource)
    ("batch-smaller-than-workers", GOOD.replace("workers: 1", "workers: 4")
     .replace("  lr: 1.0e-3", "  lr: 1.0e-3\n  batch_size: 2"), [],
     ["bad.yaml:10", "train.batch_size (2) must be at least resources.workers (4)"]),
    ("negative-gpus", GOOD.replace("workers: 1", "workers: 1\n  gpus_per_worker: -1"), [],
     ["bad.yaml:5", "resources.gpus_per_worker", "greater than or equal to 0"]),
    ("zero-cpus", GOOD.replace("workers: 1", "workers: 1\n  cpus: 0"), [],
     ["bad.yaml:5", "resources.cpus", "greater than 0"]),
    ("rl-zero-cpus-per-runner", "name: x\nkind: rl\nagent: {env: CartPole-v1}\nresources:\n"
     "  env_runners: 2\n  cpus_per_env_runner: 0\n", [],
     ["bad.yaml:6", "resources.cpus_per_env_runner", "greater than 0"]),
    # fault tolerance
    ("negative-max-failures", GOOD + "fault_tolerance: {max_failures: -1}\n", [],
     ["bad.yaml:12", "fault_tolerance.max_failures", "greater than or equal to 0"]),
    ("rl-zero-sample-timeout", "name: x\nkind: rl\nagent: {env: CartPole-v1}\n", [
        "fault_tolerance.sample_timeout_s=0"],
     ["-o fault_tolerance.sample_timeout_s=0", "greater than 0"]),
    # more sweep grammar
    ("sweep-unclosed", GOOD + "sweep: {metric: m, space: {train.lr: 'choice(1e-3, 1e-4'}}\n", [],
     ["bad.yaml:12", "sweep.space", "cannot read 'choice(1e-3, 1e-4'"]),
    ("sweep-arity", GOOD + "sweep: {metric: m, space: {train.lr: 'uniform(0.1)'}}\n", [],
     ["bad.yaml:12", "uniform() takes 2 arguments"]),
    ("sweep-unknown-path", GOOD + "sweep:\n  metric: m\n  space:\n    train.lrr: uniform(0.1, 1)\n",
     [], ["bad.yaml:15", "sweep.space.train.lrr", "no such field", "did you mean 'train.lr'"]),
    ("sweep-invalid-value",
     GOOD + "sweep:\n  metric: m\n  space:\n    model.arch: choice(resnet, vgg)\n", [],
     ["bad.yaml:15", "sweep.space.model.arch", "the sweep can try 'vgg'"]),
    # more override syntax
    ("override-empty-path", GOOD, ["=3"], ["override '=3'", "KEY.PATH=VALUE"]),
    ("override-empty-key", GOOD, ["train..lr=3"], ["override 'train..lr=3'", "KEY.PATH=VALUE"]),
]


@pytest.mark.parametrize("case,text,overrides,fragments", BAD, ids=[c[0] for c in BAD])
def test_bad_spec_exit_2_with_one_clear_message(tmp_path, capsys, case, text, overrides,
                                                fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    argv = ["validate", str(path)] + [a for o in overrides for a in ("-o", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: job spec ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} missing from:\n{err}"


def test_missing_file_names_the_path(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "does not exist" in err and "Traceback" not in err


def test_all_problems_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("workers: 1", "workers: 0").replace("lr: 1.0e-3", "lr: -1"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert len(info.value.problems) == 2
    assert "2 problems" in str(info.value)


def test_overrides_are_typed_by_the_schema_and_recorded(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(GOOD)
    loaded = load_spec(path, ["train.lr=3e-4", "stop.epochs=2e1", "seeds=[1, 2]",
                              "name=123", "model.widths=[4, 8]"])
    spec = loaded.spec
    assert spec.train.lr == pytest.approx(3e-4) and isinstance(spec.train.lr, float)
    assert spec.stop.epochs == 20 and isinstance(spec.stop.epochs, int)
    assert spec.seeds == [1, 2] and spec.name == "123" and spec.model.widths == [4, 8]
    assert loaded.overrides[0] == "train.lr=3e-4"
    assert main(["validate", str(path), "-o", "train.lr=3e-4"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "overrides: train.lr=3e-4" in out


@pytest.mark.parametrize("written,expected", [("2e6", 2_000_000), ("10k", 10_000),
                                              ("2M", 2_000_000), ("1_000", 1000), (3.0, 3)])
def test_counts_accept_the_usual_notations(tmp_path, written, expected):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\nkind: rl\nagent: {env: CartPole-v1}\n"
                    f"stop: {{env_steps: {written}}}\n")
    assert load_spec(path).spec.stop.env_steps == expected


def test_count_rejects_fractions(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\nkind: rl\nagent: {env: CartPole-v1}\nstop: {env_steps: 2.5}\n")
    with pytest.raises(SpecError, match="stop.env_steps"):
        load_spec(path)


def test_cross_section_check_says_what_to_do_without_echoing_the_spec(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(GOOD)
    assert main(["validate", str(path), "-o", "resources.workers=2",
                 "-o", "train.batch_size=1"]) == 2
    err = capsys.readouterr().err
    assert "must be at least resources.workers (2)" in err and "(got {" not in err


# Dataset paths are checked when the job runs (a cluster job's data may exist only on the
# cluster): a missing one is a DataError naming the field and the path, and exit code 2.
MISSING_DATA = [
    ({"name": "image_folder", "path": "/nowhere/images"}, "resnet",
     "data.path: image folder not found: /nowhere/images"),
    ({"name": "mnist_idx", "path": "/nowhere/mnist"}, "resnet",
     "data.path: MNIST folder not found: /nowhere/mnist"),
    ({"name": "cifar10", "path": "/nowhere/cifar"}, "resnet",
     "data.path: CIFAR-10 folder not found: /nowhere/cifar"),
    ({"name": "table", "path": "/nowhere/t.csv", "features": ["a"], "label": "y"}, "lstm",
     "data.path: table not found: /nowhere/t.csv"),
    ({"name": "text", "source": "/nowhere/corpus.txt"}, "lstm",
     "data.source: text file not found: /nowhere/corpus.txt"),
]


@pytest.mark.parametrize("data,arch,message", MISSING_DATA, ids=[d["name"] for d, *_ in
                                                                  MISSING_DATA])
def test_missing_dataset_path_is_a_data_error_naming_field_and_path(tmp_path, data, arch,
                                                                     message):
    from trainyard.loader import validate_data
    from trainyard.supervised.data import load_dataset
    from trainyard.supervised.formats import DataError

    spec = validate_data({"name": "x", "kind": "supervised", "data": data,
                          "model": {"arch": arch}}, "job.yaml").spec
    with pytest.raises(DataError, match=message):
        load_dataset(spec.data, 0)


def test_run_with_a_missing_dataset_path_exits_2_without_a_traceback(workdir, capsys,
                                                                     monkeypatch):
    from trainyard import launcher

    def no_ray(*args, **kwargs):  # the inputs are checked before Ray starts
        raise AssertionError("Ray was started for a job whose data.path is missing")

    monkeypatch.setattr(launcher, "ray_session", no_ray)
    path = workdir / "job.yaml"
    path.write_text(GOOD)
    assert main(["run", str(path), "-o", "data={name: image_folder, path: nowhere/images}",
                 "-o", "tracking.system_metrics=false"]) == 2
    err = capsys.readouterr().err
    assert "data.path: not found: nowhere/images" in err
    assert "Traceback" not in err
