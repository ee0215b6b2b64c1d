"""A Salesforce BLIP-2 checkpoint's sizes (random float16 weights) on a GPU: bare model vs
the service. The checkpoint is ``--model`` if it is one of
:mod:`serve_app.model.architectures`, else the production one, Flan-T5-XL.

*Bare*: ``Blip2Model.generate`` called in this process on batches of 1 to 32 requests (images
already at 224x224, as the ingress sends them): the latency of one batch and images/s.
*Service*: the same model in the model replica, with HTTP clients in a closed loop at the same
concurrency levels sending 1024x768 JPEGs (``max_batch_size`` 32, ingress replicas decoding and
resizing), and at twice the largest level to saturate it. Every request generates exactly
``MAX_NEW_TOKENS`` tokens. Needs CUDA; ``--quick`` runs tiny sizes on the CPU to check the code.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks import gpu_model, plots
from benchmarks.loadgen import run_load
from benchmarks.local_serve import app_args, batch_size_counts, deploy, local_serve, ship_by_value
from benchmarks.payloads import vqa_calls
from benchmarks.report import Contention, batch_figures, machine, write_result
from benchmarks.settings import Settings
from serve_app.config import BatchingConfig, ModelConfig
from serve_app.model.architectures import FLAN_T5_XL, KNOWN

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
MAX_NEW_TOKENS = 20
BATCH_WAIT_S = 0.02
INGRESS_REPLICAS = 4
REPEATS = 5


def run(settings: Settings) -> dict[str, Any]:
    """Measure the bare model, then the service; write ``gpu.json`` and ``.png``."""
    smoke = settings.quick
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("the gpu scenario needs CUDA (--quick checks the code on a CPU)")
    sizes = BATCH_SIZES[:2] if smoke else BATCH_SIZES
    model_id = settings.model_id if settings.model_id in KNOWN else FLAN_T5_XL
    args = service_args(model_id, smoke)
    config = ModelConfig.model_validate(args["model"])
    model = gpu_model.random_model(config, model_id, smoke)
    bare = [gpu_model.measure_bare(model, size, 1 if smoke else REPEATS) for size in sizes]
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    ship_by_value(gpu_model)
    calls = vqa_calls("large")
    service = []
    with Contention() as contention, local_serve(num_gpus=1) as url:
        batching = BatchingConfig(max_batch_size=max(sizes), batch_wait_timeout_s=BATCH_WAIT_S)
        deploy(args, batching, gpu_model.factory(model_id, smoke))
        for concurrency in [*sizes, 2 * max(sizes)]:
            before = batch_size_counts()
            load = settings.load(
                concurrency=concurrency, requests=40 * concurrency, seconds=25, warmup=concurrency
            )
            result = run_load(url, calls, load, f"service c{concurrency}")
            service.append({**result.summary(), **batch_figures(batch_size_counts() - before)})
    largest = bare[-1]
    saturated = service[-1]
    name = "gpu-quick" if smoke else "gpu"
    summary = {
        "scenario": "gpu",
        "headline": {
            f"bare images/s at batch {largest['batch_size']}": largest["images_per_s"],
            "service images/s saturated": saturated["throughput_rps"],
            "service vs bare at the largest batch": round(
                saturated["throughput_rps"] / largest["images_per_s"], 3
            ),
        },
        "model": gpu_model.source(model_id),
        "dtype": str(config.dtype),
        "max_new_tokens": MAX_NEW_TOKENS,
        "images": "bare: 224x224 arrays; service: 1024x768 JPEG, base64 in JSON",
        "batching": {"max_batch_size": max(sizes), "batch_wait_timeout_s": BATCH_WAIT_S},
        "bare": bare,
        "service": service,
        "machine": machine(),
        "contention": contention.summary,
    }
    write_result(settings.results_dir, name, summary)
    plots.gpu(summary, settings.results_dir / f"{name}.png")
    return summary


def service_args(model_id: str, smoke: bool) -> dict[str, Any]:
    """The service's args: ``model_id`` on CUDA in float16 (CPU float32 for ``smoke``)."""
    args = app_args(max_batch_size=max(BATCH_SIZES))
    args["model"].update(
        model_id=model_id,
        device="cpu" if smoke else "cuda",
        dtype="float32" if smoke else "float16",
        default_max_new_tokens=MAX_NEW_TOKENS,
        max_new_tokens_limit=MAX_NEW_TOKENS,
    )
    fixed = {"min_replicas": INGRESS_REPLICAS, "max_replicas": INGRESS_REPLICAS}
    args["ingress_deployment"].update(autoscaling_config=fixed)
    return args
