"""Typed app configuration: defaults, the shipped config files, and clear failures."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.config import gRPCOptions

from serve_app.app import build_app
from serve_app.batching.batcher import RequestBatcher
from serve_app.batching.scheduler import BatchScheduler
from serve_app.config import AppConfig, BatchingConfig, ModelConfig
from serve_app.grpc import SERVICER_FUNCTION
from serve_app.grpc.generated.blip2_pb2_grpc import add_Blip2ServiceServicer_to_server
from tests.support.serving import load_config


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cpu.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    (app,) = load_config(name)["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    config = AppConfig.model_validate(app["args"])
    (server,) = [d for d in app["deployments"] if d["name"] == "Blip2Server"]
    max_batch_size = server["user_config"]["max_batch_size"]
    assert config.model_deployment.max_ongoing_requests >= max_batch_size


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cpu.yaml"])
def test_shipped_configs_serve_grpc_on_9000_with_reflection(name: str) -> None:
    options = gRPCOptions.model_validate(load_config(name)["grpc_options"])
    assert (options.port, options.enable_reflection) == (9000, True)
    assert options.grpc_servicer_functions == [SERVICER_FUNCTION]
    (add_servicer,) = options.grpc_servicer_func_callable
    assert add_servicer is add_Blip2ServiceServicer_to_server


def test_production_config_is_fp16_on_one_gpu_and_autoscaled() -> None:
    args = AppConfig.model_validate(load_config("serve_config.yaml")["applications"][0]["args"])
    assert (args.model.dtype, args.model.device, args.model_deployment.num_gpus) == (
        "float16",
        "cuda",
        1,
    )
    assert args.model.model_id.startswith("Salesforce/blip2-")
    for scaling in (
        args.model_deployment.autoscaling_config,
        args.ingress_deployment.autoscaling_config,
    ):
        assert scaling["max_replicas"] > scaling["min_replicas"]
    ingress_room = args.ingress_deployment.max_ongoing_requests
    assert ingress_room >= args.model_deployment.max_ongoing_requests


BAD_ARGS: list[tuple[dict[str, Any], str]] = [
    ({"model": {"dtype": "float8"}}, "model.dtype"),
    ({"model": {"device": "tpu"}}, "model.device"),
    ({"model": {"vqa_prompt_template": "no placeholder"}}, "vqa_prompt_template"),
    ({"model": {"default_max_new_tokens": 500}}, "default_max_new_tokens"),
    ({"modle": {}}, "modle"),
    ({"model_deployment": {"batching": {"max_batch_size": 32}}}, "batching"),
    (
        {"model_deployment": {"autoscaling_config": {"min_replicas": 3, "max_replicas": 1}}},
        "replicas",
    ),
    ({"limits": {"max_image_bytes": -1}}, "limits.max_image_bytes"),
    ({"limits": {"request_timeout_s": 300}}, "graceful_shutdown_timeout_s"),
]


@pytest.mark.parametrize(("args", "named"), BAD_ARGS)
def test_bad_args_fail_the_build_with_a_message_naming_the_field(
    args: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValidationError) as failure:
        call_user_app_builder_with_args_if_necessary(build_app, args)
    assert named in str(failure.value)


def test_builder_builds_the_two_deployment_graph() -> None:
    app = call_user_app_builder_with_args_if_necessary(build_app, {})
    ingress = app._bound_deployment
    assert ingress.name == "Blip2Ingress"
    server_app = ingress.init_args[0]
    server = server_app._bound_deployment
    assert server.name == "Blip2Server"
    assert server.ray_actor_options["num_gpus"] == 1
    assert server.user_config == {
        "max_batch_size": 8,
        "batch_wait_timeout_s": 0.01,
        "merge_waiting_batches": True,
    }
    assert server.max_ongoing_requests >= 8
    # A replica being stopped may finish every request it accepted (120 s at most).
    for deployment in (ingress, server):
        assert deployment._deployment_config.graceful_shutdown_timeout_s == 130
    assert ingress._deployment_config.backpressure_config.retry_after_s == 1


def test_model_replicas_use_as_many_torch_threads_as_their_cpus() -> None:
    def model_options(args: dict[str, Any]) -> ModelConfig:
        app = call_user_app_builder_with_args_if_necessary(build_app, args)
        config: ModelConfig = app._bound_deployment.init_args[0]._bound_deployment.init_args[0]
        return config

    assert model_options({"model_deployment": {"num_cpus": 2}}).cpu_threads == 2
    assert model_options({"model_deployment": {"num_cpus": 0}}).cpu_threads == 1
    assert model_options({"model_deployment": {"num_cpus": 1.5}}).cpu_threads == 2
    assert model_options({"model": {"cpu_threads": 4}}).cpu_threads == 4


def test_import_is_light() -> None:
    code = (
        "import serve_app, sys; print(sorted({'ray', 'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_batch_size_over_the_replica_room_is_refused_when_applied() -> None:
    batcher = RequestBatcher(BatchScheduler(lambda requests, observer: []), max_ongoing_requests=8)
    with pytest.raises(ValueError, match="max_ongoing_requests 8"):
        batcher.configure(BatchingConfig(max_batch_size=32))
    assert batcher.settings == BatchingConfig()
    batcher.configure(BatchingConfig(max_batch_size=8))
    assert batcher.settings.max_batch_size == 8


def test_the_production_config_ships_closed_and_the_cpu_config_local() -> None:
    (production,) = load_config("serve_config.yaml")["applications"]
    auth = AppConfig.model_validate(production["args"]).auth
    assert auth.api_keys_env and not auth.api_keys and not auth.allow_anonymous
    cpu = load_config("serve_config.cpu.yaml")
    assert cpu["http_options"]["host"] == "127.0.0.1"
    assert not AppConfig.model_validate(cpu["applications"][0]["args"]).auth.enabled
