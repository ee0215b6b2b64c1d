"""``build_app``: turns validated args into the Serve application (ingress -> models)."""

import math
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.deployment import Deployment

from serve_app.config import (
    INGRESS_DEPLOYMENT,
    MODEL_DEPLOYMENT,
    RETRIEVAL_DEPLOYMENT,
    AppConfig,
    BatchingConfig,
    CheckpointConfig,
    ModelDeploymentConfig,
)
from serve_app.deployments.ingress import Blip2Ingress
from serve_app.deployments.retrieval_server import Blip2RetrievalServer, RetrievalModelFactory
from serve_app.deployments.server import Blip2Server, ModelFactory

PROXY_RETRY_AFTER_S = 1
"""``Retry-After`` of the 503 Serve's proxy answers when the ingress's queue is full."""


def build_app(args: AppConfig) -> Application:
    """The application builder named in ``serve_config.yaml`` (``serve_app.app:build_app``).

    Serve validates the config's ``args`` into ``AppConfig`` before calling this, so bad
    configuration fails ``serve run`` / ``serve deploy`` with pydantic's message. Batching is
    each model deployment's ``user_config`` (``deployments[].user_config`` in the file).
    """
    return build_application(args)


def build_application(
    config: AppConfig,
    model_factory: ModelFactory | None = None,
    batching: BatchingConfig | None = None,
    retrieval_factory: RetrievalModelFactory | None = None,
) -> Application:
    """Bind the deployment graph: the ingress and the generation and/or retrieval model.

    Args:
        config: The application's settings.
        model_factory: Another generation model than BLIP-2 as configured (tests, benchmarks).
        batching: The model deployments' initial ``user_config`` (defaults otherwise).
        retrieval_factory: Another retrieval model than configured (tests).
    """
    model_options, retrieval_options = config.model, config.retrieval
    server = retrieval = None
    if model_options is not None:
        server = _bind_model(
            MODEL_DEPLOYMENT,
            Blip2Server,
            model_options,
            config.model_deployment,
            batching,
            model_factory,
        )
    if retrieval_options is not None:
        retrieval = _bind_model(
            RETRIEVAL_DEPLOYMENT,
            Blip2RetrievalServer,
            retrieval_options,
            config.retrieval_deployment,
            batching,
            retrieval_factory,
        )
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
    return ingress.bind(
        server,
        model_options,
        config.limits,
        config.auth,
        ingress_options.model_calls_per_replica,
        retrieval,
        retrieval_options,
        config.playground,
    )


def _bind_model(
    name: str,
    cls: type[Any],
    settings: CheckpointConfig,
    options: ModelDeploymentConfig,
    batching: BatchingConfig | None,
    factory: Any,
) -> Application:
    """A model deployment bound to its settings; torch gets the replica's CPUs (at least one)
    unless ``cpu_threads`` says otherwise."""
    if settings.cpu_threads is None:
        threads = max(1, math.ceil(options.num_cpus))
        settings = settings.model_copy(update={"cpu_threads": threads})
    return _model_deployment(name, cls, options, batching).bind(
        settings, options.max_ongoing_requests, options.batch_timeout_s, factory
    )


def _model_deployment(
    name: str, cls: type[Any], options: ModelDeploymentConfig, batching: BatchingConfig | None
) -> Deployment:
    """A GPU-pinned model deployment of ``cls`` as ``options`` size it."""
    return serve.deployment(
        name=name,
        ray_actor_options={
            "num_gpus": options.num_gpus,
            "num_cpus": options.num_cpus,
            "resources": options.resources,
        },
        max_ongoing_requests=options.max_ongoing_requests,
        max_queued_requests=options.max_queued_requests,
        autoscaling_config=options.autoscaling_config,
        user_config=(batching or BatchingConfig()).model_dump(exclude_none=True),
        health_check_period_s=options.health_check_period_s,
        health_check_timeout_s=options.health_check_timeout_s,
        graceful_shutdown_timeout_s=options.graceful_shutdown_timeout_s,
        # One access-log line per call costs the replica's thread more than a batch's worth
        # of requests; the replica logs one line per batch, with its requests' ids.
        logging_config={"enable_access_log": False},
        **_router(name, options),
    )(cls)


def _router(name: str, options: ModelDeploymentConfig) -> dict[str, Any]:
    """The generation deployment's request router: by image, unless turned off."""
    if name != MODEL_DEPLOYMENT or not options.image_affinity:
        return {}
    router = "serve_app.deployments.image_affinity.ImageAffinityRouter"
    return {"request_router_config": {"request_router_class": router}}
