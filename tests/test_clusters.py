"""Cluster definitions validate with Ray's own schema and KubeRay's required fields, and the
spec's GPU counts reach the RLlib and Ray Train configs."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
from trainyard.loader import load_spec, validate_data

# local-fake.yaml runs on this machine only; tests/test_autoscaling.py brings it up for real
LAUNCHERS = sorted(p for p in (REPO / "clusters").glob("*.yaml") if p.name != "local-fake.yaml")
KUBE = sorted((REPO / "clusters" / "kuberay").glob("*.yaml"))


def test_every_kind_of_cluster_is_shipped():
    names = {p.name for p in LAUNCHERS}
    assert {"aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml"} <= names
    assert {"raycluster.yaml", "rayjob.yaml"} <= {p.name for p in KUBE}


@pytest.mark.parametrize("path", LAUNCHERS, ids=[p.name for p in LAUNCHERS])
def test_launcher_yaml_passes_rays_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs first
    setup = " ".join(config["setup_commands"])
    assert "requirements.txt -c" in setup and "trainyard-*.whl" in setup
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_cloud_clusters_have_gpu_workers_that_autoscale_from_zero(name):
    config = yaml.safe_load((REPO / "clusters" / name).read_text())
    workers = {k: v for k, v in config["available_node_types"].items()
               if k != config["head_node_type"]}
    assert len(workers) >= 2
    for node in workers.values():
        assert node["min_workers"] == 0 and node["max_workers"] >= 1
        gpu = node["node_config"].get("InstanceType", "").startswith(("g5", "p4d")) or \
            node["node_config"].get("guestAccelerators") or \
            node["node_config"].get("machineType", "").startswith("a2-")
        assert gpu, node
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


def _check_ray_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert container["image"]
        limits = container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]


@pytest.mark.parametrize("path", KUBE, ids=[p.name for p in KUBE])
def test_kuberay_manifests_have_what_kuberay_requires(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    for doc in docs:
        assert doc["apiVersion"] in ("ray.io/v1", "v1") and doc["metadata"]["name"]
    if "RayCluster" in kinds:
        _check_ray_cluster_spec(kinds["RayCluster"]["spec"])
    if "RayJob" in kinds:
        job = kinds["RayJob"]["spec"]
        assert job["entrypoint"].startswith("python -m trainyard.cli run ")
        yaml.safe_load(job["runtimeEnvYAML"])
        _check_ray_cluster_spec(job["rayClusterSpec"])
        config_map = kinds["ConfigMap"]
        loaded = validate_data(yaml.safe_load(config_map["data"]["job.yaml"]), "configmap")
        assert loaded.spec.resources.use_gpu  # the job it carries asks for the GPUs


def test_gpu_counts_reach_ray_train(tmp_path):
    from trainyard.runs import RunContext
    from trainyard.supervised.trainer import build_trainer
    from trainyard.tracking import RunRef

    spec = load_spec(REPO / "supervised" / "configs" / "cifar10_resnet_4gpu.yaml").spec
    ctx = RunContext(RunRef("sqlite:///x.db", "r"), 0, str(tmp_path), "r")
    trainer = build_trainer(spec, ctx, data=None)
    scaling = trainer.scaling_config
    assert scaling.num_workers == 4 and scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": 8, "GPU": 1}
    assert spec.resource_demand() == {"CPU": 32, "GPU": 4}


def test_gpu_counts_reach_rllib(tmp_path):
    from trainyard.agents.rl_config import build_config

    path = tmp_path / "job.yaml"
    path.write_text("name: g\nkind: rl\nagent: {env: CartPole-v1}\nresources:\n"
                    "  env_runners: 4\n  gpus_per_env_runner: 0.25\n  learners: 2\n"
                    "  gpus_per_learner: 1\n")
    spec = load_spec(path).spec
    config = build_config(spec, seed=0)
    assert config.num_gpus_per_learner == 1 and config.num_learners == 2
    assert config.num_gpus_per_env_runner == 0.25 and config.num_env_runners == 4
    assert spec.resource_demand()["GPU"] == 4 * 0.25 + 2 * 1
