"""The cluster launcher config and the KubeRay manifest: valid, and in step with the app."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig
from tests.support.serving import REPO_ROOT, load_config


def cluster_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())
    return loaded


def model_demand() -> dict[str, float]:
    """The resources one model replica asks for in the production config."""
    args = AppConfig.model_validate(load_config("serve_config.yaml")["applications"][0]["args"])
    deployment = args.model_deployment
    return {"CPU": deployment.num_cpus, "GPU": deployment.num_gpus, **deployment.resources}


def test_cluster_yaml_passes_rays_own_schema() -> None:
    validate_config(prepare_config(copy.deepcopy(cluster_config())))


def test_model_replicas_fit_gpu_workers_and_never_the_head() -> None:
    config = cluster_config()
    demand = model_demand()
    custom = set(demand) - {"CPU", "GPU"}
    assert custom, "the model deployment must ask for a custom resource that pins it to GPU workers"
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]["resources"]
    assert head.get("GPU", 0) == 0 and not custom & set(head)
    fitting = [
        name
        for name, node_type in node_types.items()
        if all(node_type["resources"].get(key, 0) >= amount for key, amount in demand.items())
    ]
    assert fitting and config["head_node_type"] not in fitting
    for name in fitting:
        assert node_types[name]["resources"]["GPU"] >= 1


def test_the_dashboard_is_bound_to_localhost_and_token_auth_is_on() -> None:
    config = cluster_config()
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(commands)


def kuberay_manifest() -> dict[str, Any]:
    text = (REPO_ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text()
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def test_kuberay_serve_config_is_the_production_config() -> None:
    manifest = kuberay_manifest()
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    served = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)
    production = load_config("serve_config.yaml")
    assert served["applications"] == production["applications"]
    assert served["grpc_options"] == production["grpc_options"]


def test_kuberay_exposes_grpc_and_caps_its_messages_on_every_pod() -> None:
    cluster = kuberay_manifest()["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 9000, "name": "serve-grpc"} in head["ports"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == "16777216"


def test_kuberay_gpu_workers_carry_the_resource_and_the_head_has_no_gpu() -> None:
    cluster = kuberay_manifest()["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    custom = set(model_demand()) - {"CPU", "GPU"}
    for group in cluster["workerGroupSpecs"]:
        declared = yaml.safe_load(yaml.safe_load(group["rayStartParams"]["resources"]))
        assert custom <= set(declared)
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kuberay_pods_outlast_the_replicas_graceful_shutdown() -> None:
    cluster = kuberay_manifest()["spec"]["rayClusterConfig"]
    args = AppConfig.model_validate(load_config("serve_config.yaml")["applications"][0]["args"])
    drain = max(
        args.model_deployment.graceful_shutdown_timeout_s,
        args.ingress_deployment.graceful_shutdown_timeout_s,
    )
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] > drain
