"""``build_app``: turns validated args into the Serve application (ingress -> model)."""

import math

from ray import serve
from ray.serve import Application

from serve_app.config import AppConfig
from serve_app.ingress import Blip2Ingress
from serve_app.server import Blip2Server, ModelFactory

MODEL_DEPLOYMENT = "Blip2Server"
INGRESS_DEPLOYMENT = "Blip2Ingress"


def build_app(args: AppConfig) -> Application:
    """The application builder named in ``serve_config.yaml`` (``serve_app.app:build_app``).

    Serve validates the config's ``args`` into ``AppConfig`` before calling this, so bad
    configuration fails ``serve run`` / ``serve deploy`` with pydantic's message.
    """
    return build_application(args)


def build_application(config: AppConfig, model_factory: ModelFactory | None = None) -> Application:
    """Bind the deployment graph; ``model_factory`` swaps in another model (tests, benchmarks)."""
    server_options = config.model_deployment
    ongoing = server_options.effective_max_ongoing_requests
    model = serve.deployment(
        name=MODEL_DEPLOYMENT,
        ray_actor_options={
            "num_gpus": server_options.num_gpus,
            "num_cpus": server_options.num_cpus,
            "resources": server_options.resources,
        },
        max_ongoing_requests=ongoing,
        max_queued_requests=server_options.max_queued_requests,
        autoscaling_config=server_options.autoscaling_config,
        user_config=server_options.batching.model_dump(),
        health_check_period_s=server_options.health_check_period_s,
        health_check_timeout_s=server_options.health_check_timeout_s,
    )(Blip2Server)
    ingress_options = config.ingress_deployment
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        ray_actor_options={"num_cpus": ingress_options.num_cpus},
        max_ongoing_requests=ingress_options.max_ongoing_requests,
        max_queued_requests=ingress_options.max_queued_requests,
        autoscaling_config=ingress_options.autoscaling_config,
    )(Blip2Ingress)
    model_config = config.model
    if model_config.cpu_threads is None:
        threads = max(1, math.ceil(server_options.num_cpus))
        model_config = model_config.model_copy(update={"cpu_threads": threads})
    return ingress.bind(
        model.bind(model_config, ongoing, model_factory), model_config, config.limits, config.auth
    )
