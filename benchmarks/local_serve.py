"""A private local Ray + Serve for one benchmark run, and the application deployed on it.

Ray is always started fresh (``address="local"``), never joined, with logical GPUs declared
so the GPU-pinned model replica schedules on a CPU machine; deployments take no CPU resource,
as in the tests, so they fit a 2-core machine. Application args start from
``serve_config.cpu.yaml`` with fixed replica counts (no autoscaling while measuring).
"""

from __future__ import annotations

import copy
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import ray
import yaml
from ray import cloudpickle, serve
from ray.serve.schema import ServeDeploySchema

from benchmarks import procs
from serve_app.app import build_application
from serve_app.config import (
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    TINY_RANDOM_OPT,
    AppConfig,
    BatchingConfig,
)
from serve_app.deployments.ingress import serve_proxies
from serve_app.deployments.server import ModelFactory
from serve_app.grpc import SERVICER_FUNCTION
from serve_app.ingress.model_client import MODEL_REFRESH_S

APP_NAME = "blip2"
REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO_ROOT / "serve_config.cpu.yaml"
DEFAULT_MODEL = TINY_RANDOM_OPT


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_serve(num_gpus: int = 2) -> Iterator[str]:
    """Start a private Ray (``num_gpus`` logical GPUs) and Serve, its gRPC proxy on too (see
    :func:`grpc_target`); yield Serve's base URL."""
    ray.init(
        address="local",
        num_cpus=4,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
    )
    port = free_port()
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            grpc_options={"port": free_port(), "grpc_servicer_functions": [SERVICER_FUNCTION]},
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def grpc_target() -> str:
    """``host:port`` of the running Serve's gRPC proxy."""
    _, port = serve_proxies()
    if port is None:
        raise RuntimeError("Serve's gRPC proxy is not on")
    return f"127.0.0.1:{port}"


def app_args(
    model_id: str = DEFAULT_MODEL,
    max_batch_size: int = 16,
    replicas: int = 1,
    shedding: bool = False,
) -> dict[str, Any]:
    """The CPU config's application args with the given model and replica count, admitting
    four batches of ``max_batch_size`` per replica.

    Load shedding is off unless asked for: a closed loop of a fixed number of clients cannot
    overload the service, and a refusal would only distort the throughput measured.
    """
    config = yaml.safe_load(CPU_CONFIG.read_text())
    args: dict[str, Any] = copy.deepcopy(config["applications"][0]["args"])
    args["model"]["model_id"] = model_id
    fixed = {"min_replicas": replicas, "max_replicas": replicas}
    args["model_deployment"].update(
        num_gpus=1,
        num_cpus=0,
        autoscaling_config=fixed,
        max_ongoing_requests=4 * max_batch_size,
    )
    args["ingress_deployment"].update(num_cpus=0)
    if not shedding:
        args["limits"]["max_queue_wait_s"] = None
    return args


def set_calls_per_replica(args: dict[str, Any], calls: int | None) -> None:
    """Set the ingress's ``model_calls_per_replica`` in app args (None: the default)."""
    if calls is None:
        args["ingress_deployment"].pop("model_calls_per_replica", None)
    else:
        args["ingress_deployment"]["model_calls_per_replica"] = calls


def cpu_batching() -> BatchingConfig:
    """The CPU config's batching (its model deployment's ``user_config``)."""
    config = yaml.safe_load(CPU_CONFIG.read_text())
    deployments = config["applications"][0]["deployments"]
    user_config = next(d["user_config"] for d in deployments if d["name"] == MODEL_DEPLOYMENT)
    return BatchingConfig.model_validate(user_config)


def ship_by_value(module: ModuleType) -> None:
    """Send ``module``'s code to Ray's workers inside what is pickled, not as an import."""
    cloudpickle.register_pickle_by_value(module)  # type: ignore[no-untyped-call]


def deploy(
    args: dict[str, Any], batching: BatchingConfig, model_factory: ModelFactory | None = None
) -> None:
    """Deploy (or update in place) the application and wait until it runs."""
    application = build_application(AppConfig.model_validate(args), model_factory, batching)
    serve.run(application, name=APP_NAME, route_prefix="/")


def batch_size_counts() -> Counter[int]:
    """Batches of each size the model replica has run so far (one replica: the one answering)."""
    handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, APP_NAME)
    counts: dict[int, int] = handle.batch_size_counts.remote().result()
    return Counter(counts)


def deploy_config(args: dict[str, Any], max_batch_size: int, batch_wait_timeout_s: float) -> None:
    """Deploy like ``serve deploy`` does; a change of batching alone is applied live.

    Batching is the model deployment's ``user_config``: running replicas are reconfigured,
    not restarted. Waits until the model replica reports the new settings and the ingress
    has read them.
    """
    batching = {"max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s}
    schema = ServeDeploySchema.model_validate(
        {
            "applications": [
                {
                    "name": APP_NAME,
                    "route_prefix": "/",
                    "import_path": "serve_app.app:build_app",
                    "args": args,
                    "deployments": [{"name": MODEL_DEPLOYMENT, "user_config": batching}],
                }
            ]
        }
    )
    client = serve.context._get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running")
    client.deploy_apps(schema)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP_NAME)
        if status is not None and status.status.value == "RUNNING":
            handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, APP_NAME)
            live = handle.describe.remote().result().batching.model_dump()
            if all(live[key] == value for key, value in batching.items()):
                time.sleep(MODEL_REFRESH_S + 1)  # the ingress re-reads the batch size (groups)
                return
        time.sleep(0.25)
    raise RuntimeError(f"the application did not run with batching {batching} in time")


def serve_pids() -> dict[str, list[int]]:
    """Process ids of this Ray's proxy, ingress replicas and model replicas."""
    return {
        "proxy": procs.descendants("ray::ProxyActor"),
        "ingress": procs.descendants(f"ray::ServeReplica:{APP_NAME}:{INGRESS_DEPLOYMENT}"),
        "model": procs.descendants(f"ray::ServeReplica:{APP_NAME}:{MODEL_DEPLOYMENT}"),
    }
