"""``build_app``: turns validated args into the Serve application (ingress -> model)."""

import math

from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from serve_app.config import AppConfig, BatchingConfig
from serve_app.deployments.ingress import Blip2Ingress
from serve_app.deployments.server import Blip2Server, ModelFactory

MODEL_DEPLOYMENT = "Blip2Server"
INGRESS_DEPLOYMENT = "Blip2Ingress"
PROXY_RETRY_AFTER_S = 1
"""``Retry-After`` of the 503 Serve's proxy answers when the ingress's queue is full."""


def build_app(args: AppConfig) -> Application:
    """The application builder named in ``serve_config.yaml`` (``serve_app.app:build_app``).

    Serve validates the config's ``args`` into ``AppConfig`` before calling this, so bad
    configuration fails ``serve run`` / ``serve deploy`` with pydantic's message. Batching is
    the model deployment's ``user_config`` (``deployments[].user_config`` in the file).
    """
    return build_application(args)


def build_application(
    config: AppConfig,
    model_factory: ModelFactory | None = None,
    batching: BatchingConfig | None = None,
) -> Application:
    """Bind the deployment graph.

    Args:
        config: The application's settings.
        model_factory: Another model than BLIP-2 as configured (tests, benchmarks).
        batching: The model deployment's initial ``user_config`` (defaults otherwise).
    """
    server_options = config.model_deployment
    model = serve.deployment(
        name=MODEL_DEPLOYMENT,
        ray_actor_options={
            "num_gpus": server_options.num_gpus,
            "num_cpus": server_options.num_cpus,
            "resources": server_options.resources,
        },
        max_ongoing_requests=server_options.max_ongoing_requests,
        max_queued_requests=server_options.max_queued_requests,
        autoscaling_config=server_options.autoscaling_config,
        user_config=(batching or BatchingConfig()).model_dump(),
        health_check_period_s=server_options.health_check_period_s,
        health_check_timeout_s=server_options.health_check_timeout_s,
        graceful_shutdown_timeout_s=server_options.graceful_shutdown_timeout_s,
        # One access-log line per call costs the replica's thread more than a batch's worth
        # of requests; the replica logs one line per batch, with its requests' ids.
        logging_config={"enable_access_log": False},
    )(Blip2Server)
    ingress_options = config.ingress_deployment
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        ray_actor_options={"num_cpus": ingress_options.num_cpus},
        max_ongoing_requests=ingress_options.max_ongoing_requests,
        max_queued_requests=ingress_options.max_queued_requests,
        backpressure_config=BackpressureConfig(retry_after_s=PROXY_RETRY_AFTER_S),
        autoscaling_config=ingress_options.autoscaling_config,
        graceful_shutdown_timeout_s=ingress_options.graceful_shutdown_timeout_s,
    )(Blip2Ingress)
    model_options = config.model
    if model_options.cpu_threads is None:
        threads = max(1, math.ceil(server_options.num_cpus))
        model_options = model_options.model_copy(update={"cpu_threads": threads})
    server = model.bind(
        model_options,
        server_options.max_ongoing_requests,
        server_options.batch_timeout_s,
        model_factory,
    )
    return ingress.bind(
        server,
        model_options,
        config.limits,
        config.auth,
        ingress_options.model_calls_per_replica,
    )
