"""Helpers for tests that run a real local Serve application."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from serve_app.app import build_application
from serve_app.config import AppConfig, BatchingConfig
from serve_app.deployments.server import ModelFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "blip2"


def fast_autoscaling(min_replicas: int = 1, max_replicas: int = 2) -> dict[str, Any]:
    """Test-only autoscaling that reacts within seconds (production waits much longer)."""
    return {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
    }


def load_config(name: str = "serve_config.cpu.yaml") -> dict[str, Any]:
    """A copy of one of the repository's Serve config files."""
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / name).read_text())
    return copy.deepcopy(loaded)


def fit_for_tests(config: dict[str, Any]) -> dict[str, Any]:
    """Pin the model deployment to one logical GPU and let every deployment use no CPU."""
    args = config["applications"][0]["args"]
    args["model_deployment"].update(num_gpus=1, num_cpus=0)
    args["ingress_deployment"].update(num_cpus=0)
    if "retrieval_deployment" in args:
        args["retrieval_deployment"].update(num_gpus=0, num_cpus=0)
    return config


def run_app(
    model_factory: ModelFactory,
    overrides: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
) -> None:
    """Run the app with another model, one logical GPU per model replica and no CPUs.

    ``overrides`` maps sections of ``AppConfig`` (``model_deployment``, ``limits``, ...) to the
    fields to change; ``batching`` is the model deployment's ``user_config``. Callers are
    served anonymously unless ``overrides`` sets ``auth``.
    """
    args: dict[str, Any] = {
        "model_deployment": {"num_gpus": 1, "num_cpus": 0},
        "ingress_deployment": {"num_cpus": 0},
        # Test modules start Serve's gRPC proxy, which listens on every address.
        "auth": {"allow_anonymous": True},
    }
    for section, values in (overrides or {}).items():
        args[section] = values if section == "auth" else {**args.get(section, {}), **values}
    config = AppConfig.model_validate(args)
    settings = BatchingConfig.model_validate(batching or {})
    serve.run(build_application(config, model_factory, settings), name=APP_NAME)


def deploy_config(config: dict[str, Any], timeout_s: float = 120) -> None:
    """Deploy a config the way ``serve run``/``serve deploy`` do, and wait until it runs."""
    client = serve.context._get_global_client()
    client.deploy_apps(ServeDeploySchema.model_validate(config))
    wait_until(lambda: app_status() == "RUNNING", timeout_s, "application to be RUNNING")


def app_status(name: str = APP_NAME) -> str | None:
    app = serve.status().applications.get(name)
    return None if app is None else app.status.value


def running_replicas(deployment: str, name: str = APP_NAME) -> int:
    app = serve.status().applications.get(name)
    if app is None or deployment not in app.deployments:
        return 0
    return int(app.deployments[deployment].replica_states.get("RUNNING", 0))


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25
) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
