"""``python -m serve_app.memory_plan``: what a model needs on a GPU, and the batch that fits.

Plans every model a Serve config file serves (``--config``), or one model named on the command
line, without weights or a GPU: the architecture is built on the meta device (see
:mod:`serve_app.model.memory`). Prints, per model, the weights, the memory of one request at
the configured limits and the largest batch (rows of the decoding loop; retrieval:
``max_batch_size``) on common cards (or on
``--gpu-memory-gib``). Exits with 1 when a configured batch does not fit the given memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from serve_app.config import (
    MODEL_DEPLOYMENT,
    RETRIEVAL_DEPLOYMENT,
    AppConfig,
    BatchingConfig,
    CheckpointConfig,
    ModelConfig,
    ModelDeploymentConfig,
)
from serve_app.model.memory import GIB, GPUS, plan_for, share_of_gpu


def configured_models(
    path: Path, app: str | None
) -> list[tuple[CheckpointConfig, ModelDeploymentConfig, int]]:
    """Each model ``app`` (the first application if unset) serves, its deployment and batch
    (the generation model's rows, the retrieval model's ``max_batch_size``)."""
    import yaml

    document: dict[str, Any] = yaml.safe_load(path.read_text())
    applications = document.get("applications", [])
    chosen = [a for a in applications if app is None or a.get("name") == app]
    if not chosen:
        raise SystemExit(f"{path}: no application {app!r}" if app else f"{path}: no applications")
    application = chosen[0]
    config = AppConfig.model_validate(application.get("args", {}))
    batches = {
        deployment["name"]: BatchingConfig.model_validate(deployment.get("user_config", {}))
        for deployment in application.get("deployments", [])
    }
    served = (
        (config.model, config.model_deployment, MODEL_DEPLOYMENT),
        (config.retrieval, config.retrieval_deployment, RETRIEVAL_DEPLOYMENT),
    )
    models: list[tuple[CheckpointConfig, ModelDeploymentConfig, int]] = []
    for settings, deployment, name in served:
        if isinstance(settings, ModelConfig):
            models.append((settings, deployment, settings.max_rows))
        elif settings is not None:
            batch = batches.get(name, BatchingConfig()).max_batch_size
            models.append((settings, deployment, batch))
    return models


def main(argv: list[str] | None = None) -> int:
    """Print the plans; 1 if a configured batch does not fit ``--gpu-memory-gib``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="a Serve config file (serve_config.yaml)")
    source.add_argument("--model-id", help="a model id (Salesforce/blip2-flan-t5-xl, ...)")
    parser.add_argument("--app", help="the application in --config (default: the first)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "nf4"])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--batch", type=int, help="rows (model.max_rows) to check")
    parser.add_argument(
        "--gpu-memory-gib", type=float, help="the GPU's memory (default: a table of common cards)"
    )
    args = parser.parse_args(argv)
    if args.config is not None:
        models = configured_models(args.config, args.app)
    else:
        model = ModelConfig(
            model_id=args.model_id,
            dtype=args.dtype,
            quantization=args.quantization,
            default_max_new_tokens=min(30, args.max_new_tokens),
            max_new_tokens_limit=args.max_new_tokens,
            max_num_beams=args.num_beams,
        )
        models = [(model, ModelDeploymentConfig(), args.batch or model.max_rows)]
    fits = True
    for settings, deployment, batch in models:
        plan = plan_for(settings)
        if args.gpu_memory_gib is None:
            gpus = GPUS
        else:
            memory = share_of_gpu(int(args.gpu_memory_gib * GIB), deployment.num_gpus)
            gpus = {"one replica": memory}
        print(plan.report(gpus, batch), end="\n\n")
        if args.gpu_memory_gib is not None and batch > plan.largest_batch(
            next(iter(gpus.values()))
        ):
            setting = plan.batch_setting
            print(f"WARNING: {settings.name}: {setting} {batch} does not fit", file=sys.stderr)
            fits = False
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
