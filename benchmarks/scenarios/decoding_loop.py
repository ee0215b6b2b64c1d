"""The decoding loop on the CPU, measured at the client through HTTP (one run of each case).

The tiny random model (``ForcedLengthEngine``: every row runs exactly its ``max_new_tokens``):
- short answers (2 tokens) from 16 clients alone, and 12 of them beside 4 clients asking for
  128 tokens: the short ones' p50 against alone;
- 16 clients sampling with one shared setting, then with 16 distinct temperatures and top_p:
  throughput of distinct against shared;
- time to the first streamed token alone, and while 15 clients generate 128 tokens, against
  the replica's median step time;
- five questions about one image, one after another: images the vision encoder ran (the
  replica's counter) and the later answers' latency against the first.
The demo model (``builtin:shapes-blip2``) answering VQA at 1 and 16 clients is
:func:`demo_vqa`, which runs on the code before the decoding loop as well (it uses only what
that code had): its figures from there, saved as ``decoding-loop-before.json``, are compared
when present.
"""

from __future__ import annotations

import base64
import json
import statistics
import threading
import time
from typing import Any

import httpx

from benchmarks import plots
from benchmarks.loadgen import Call, LoadResult, run_load
from benchmarks.local_serve import APP_NAME, app_args, deploy, local_serve
from benchmarks.payloads import image_bytes, vqa_calls
from benchmarks.report import Contention, machine, write_result
from benchmarks.settings import Settings

SHORT, LONG = 2, 128
ROWS = 32
FIRST_TOKEN_SAMPLES = 20


def vqa_call(index: int, max_new_tokens: int, **sampling: Any) -> Call:
    """A ``/v1/vqa`` body about image ``index`` with ``max_new_tokens`` (sampled with
    ``sampling``'s temperature and top_p, if any)."""
    params = {"do_sample": True, **sampling} if sampling else {}
    body = {
        "image": {"data": base64.b64encode(image_bytes(index, "small")).decode()},
        "question": f"What is in picture {index}?",
        "params": {"max_new_tokens": max_new_tokens, **params},
    }
    return Call("/v1/vqa", json.dumps(body).encode())


def run_side_by_side(
    url: str, runs: list[tuple[str, list[Call], int]], settings: Settings
) -> dict[str, LoadResult]:
    """Closed loops of ``(name, calls, clients)`` at the same time, each in its own thread."""
    results: dict[str, LoadResult] = {}

    def one(name: str, calls: list[Call], clients: int) -> None:
        load = settings.load(concurrency=clients, requests=10_000, seconds=20, warmup=clients)
        results[name] = run_load(url, calls, load, name)

    threads = [threading.Thread(target=one, args=run) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def first_token_s(client: httpx.Client, model: str, index: int) -> float:
    """Seconds from sending a streamed chat request to ``model`` to its first text."""
    data = base64.b64encode(image_bytes(index, "small")).decode()
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 16,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}},
                    {"type": "text", "text": "Describe the picture."},
                ],
            }
        ],
    }
    started = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line.removeprefix("data: ")).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                return time.perf_counter() - started
    raise RuntimeError("the stream ended without text")


def model_handle() -> Any:
    from ray import serve

    from serve_app.config import MODEL_DEPLOYMENT

    return serve.get_deployment_handle(MODEL_DEPLOYMENT, APP_NAME)


def first_tokens(url: str, model: str, samples: int) -> list[float]:
    """Times to first text of ``samples`` streamed chats, one after another."""
    with httpx.Client(base_url=url, timeout=120) as client:
        first_token_s(client, model, 0)  # warm
        return [first_token_s(client, model, i) for i in range(samples)]


def tiny_model_cases(url: str, settings: Settings) -> dict[str, Any]:
    """Every case on the forced-length tiny model; figures by case."""
    from benchmarks import forced_length
    from benchmarks.local_serve import ship_by_value
    from serve_app.config import BatchingConfig

    ship_by_value(forced_length)
    args = app_args(settings.model_id, max_batch_size=16)
    args["model"].update(max_new_tokens_limit=LONG, max_rows=ROWS)
    args["model_deployment"]["max_ongoing_requests"] = 4 * ROWS
    deploy(args, BatchingConfig(max_batch_size=16), forced_length.ForcedLengthEngine.load)
    short = [vqa_call(i, SHORT) for i in range(8)]
    long = [vqa_call(i, LONG) for i in range(8)]
    figures: dict[str, Any] = {}
    alone = run_side_by_side(url, [("16 short", short, 16)], settings)["16 short"]
    mixed = run_side_by_side(url, [("12 short", short, 12), ("4 long", long, 4)], settings)
    figures["mix"] = {
        "short_alone": alone.summary(),
        "short_beside_long": mixed["12 short"].summary(),
        "long_beside_short": mixed["4 long"].summary(),
        "short_p50_ratio": round(mixed["12 short"].percentile_ms(50) / alone.percentile_ms(50), 2),
    }
    shared = [vqa_call(i, 16, temperature=0.8, top_p=0.9) for i in range(16)]
    distinct = [
        vqa_call(i, 16, temperature=round(0.5 + 0.1 * i, 2), top_p=round(0.55 + 0.03 * i, 2))
        for i in range(16)
    ]
    one = run_side_by_side(url, [("one setting", shared, 16)], settings)["one setting"]
    many = run_side_by_side(url, [("16 settings", distinct, 16)], settings)["16 settings"]
    figures["settings"] = {
        "one_setting": one.summary(),
        "distinct_settings": many.summary(),
        "throughput_ratio": round(many.throughput / one.throughput, 2),
    }
    samples = 4 if settings.quick else FIRST_TOKEN_SAMPLES
    ttft_alone = first_tokens(url, settings.model_id, samples)
    busy: dict[str, LoadResult] = {}
    background = threading.Thread(
        target=lambda: busy.update(run_side_by_side(url, [("15 long", long, 15)], settings))
    )
    background.start()
    time.sleep(3)
    ttft_busy = first_tokens(url, settings.model_id, samples)
    step_s = model_handle().median_step_seconds.remote().result() or 0.0
    background.join()
    figures["first_token"] = {
        "alone_p50_ms": round(statistics.median(ttft_alone) * 1000, 1),
        "beside_15_long_p50_ms": round(statistics.median(ttft_busy) * 1000, 1),
        "median_step_ms_under_load": round(step_s * 1000, 2),
        "extra_in_steps": round(
            (statistics.median(ttft_busy) - statistics.median(ttft_alone)) / step_s, 1
        )
        if step_s
        else None,
        "background": busy["15 long"].summary(),
    }
    figures["same_image"] = same_image(url)
    figures["two_replicas"] = image_affinity(url, settings)
    return figures


def same_image(url: str) -> dict[str, Any]:
    """Five questions about one image, one after another: encoder runs and latencies."""
    _, before = model_handle().engine_stats.remote().result()
    data = base64.b64encode(image_bytes(99, "small")).decode()
    latencies = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for question in ("What?", "Where?", "How many?", "Which colour?", "Why?"):
            body = {"image": {"data": data}, "question": question, "params": {"max_new_tokens": 8}}
            started = time.perf_counter()
            client.post("/v1/vqa", json=body).raise_for_status()
            latencies.append(time.perf_counter() - started)
    _, after = model_handle().engine_stats.remote().result()
    return {
        "images_encoded": after.images_encoded - before.images_encoded,
        "feature_cache_hits": after.feature_cache_hits - before.feature_cache_hits,
        "latencies_ms": [round(s * 1000, 1) for s in latencies],
        "later_vs_first": round(statistics.median(latencies[1:]) / latencies[0], 2),
    }


def replicas_stats(replicas: int) -> dict[str, Any]:
    """Each model replica's engine counters, by replica id (asked until all have answered)."""
    found: dict[str, Any] = {}
    for _ in range(200):
        replica, stats = model_handle().engine_stats.remote().result()
        found[replica] = stats
        if len(found) == replicas:
            return found
    raise RuntimeError(f"heard from {len(found)} of {replicas} model replicas")


def ask_about_images(url: str, first_image: int, images: int) -> None:
    """Five questions about each of ``images`` images, one after another."""
    with httpx.Client(base_url=url, timeout=120) as client:
        for index in range(first_image, first_image + images):
            data = base64.b64encode(image_bytes(index, "small")).decode()
            for question in ("What?", "Where?", "How many?", "Which colour?", "Why?"):
                body = {
                    "image": {"data": data},
                    "question": question,
                    "params": {"max_new_tokens": 8},
                }
                client.post("/v1/vqa", json=body).raise_for_status()


def image_affinity(url: str, settings: Settings) -> dict[str, Any]:
    """Two model replicas, 8 clients each asking 5 questions about an image of its own, then
    another: the share of questions whose image features were at hand, with requests routed
    by image and without."""
    from benchmarks import forced_length
    from serve_app.config import BatchingConfig

    figures = {}
    rounds = 2 if settings.quick else 6
    for routed in (True, False):
        args = app_args(settings.model_id, max_batch_size=16, replicas=2)
        args["model_deployment"]["image_affinity"] = routed
        deploy(args, BatchingConfig(max_batch_size=16), forced_length.ForcedLengthEngine.load)
        before = replicas_stats(2)

        first = 1000 * routed
        threads = [
            threading.Thread(target=ask_about_images, args=(url, first + 100 * i, rounds))
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = replicas_stats(2)
        encoded = sum(after[r].images_encoded - before[r].images_encoded for r in after)
        hits = sum(after[r].feature_cache_hits - before[r].feature_cache_hits for r in after)
        figures["routed_by_image" if routed else "power_of_two"] = {
            "questions": hits + encoded,
            "images": 8 * rounds,
            "images_encoded": encoded,
            "hit_ratio": round(hits / (hits + encoded), 3),
            "best_hit_ratio": 0.8,
        }
    return figures


def demo_vqa(url: str, settings: Settings) -> dict[str, Any]:
    """The demo model's VQA at 1 and 16 clients, with the CPU config's batching."""
    from benchmarks.local_serve import cpu_batching

    deploy(app_args("builtin:shapes-blip2", max_batch_size=16), cpu_batching())
    calls = vqa_calls("small")
    figures = {}
    for clients in (1, 16):
        load = settings.load(concurrency=clients, requests=2000, seconds=20, warmup=2 * clients)
        figures[f"c{clients}"] = run_load(
            url, calls, load, f"demo VQA, {clients} clients"
        ).summary()
    return figures


def run(settings: Settings) -> dict[str, Any]:
    """Measure every case; write ``decoding-loop.json`` and ``.png``."""
    with Contention() as contention, local_serve() as url:
        figures = tiny_model_cases(url, settings)
        figures["demo"] = demo_vqa(url, settings)
    before_path = settings.results_dir / "decoding-loop-before.json"
    if before_path.exists():
        before = json.loads(before_path.read_text())
        figures["demo_vs_before"] = {
            "throughput_c1": round(
                figures["demo"]["c1"]["throughput_rps"] / before["c1"]["throughput_rps"], 3
            ),
            "throughput_c16": round(
                figures["demo"]["c16"]["throughput_rps"] / before["c16"]["throughput_rps"], 3
            ),
            "p50_c1_extra_ms": round(figures["demo"]["c1"]["p50_ms"] - before["c1"]["p50_ms"], 1),
        }
    headline = {
        "short p50 beside long / alone (goal <= 1.3)": figures["mix"]["short_p50_ratio"],
        "16 settings / 1 setting throughput (goal >= 0.8)": figures["settings"]["throughput_ratio"],
        "first token beside 15 long, extra steps (goal <= 3)": figures["first_token"][
            "extra_in_steps"
        ],
        "vision encoder runs for 5 questions on 1 image": figures["same_image"]["images_encoded"],
        "feature cache hit ratio, 2 replicas, routed by image (best 0.8)": figures["two_replicas"][
            "routed_by_image"
        ]["hit_ratio"],
        "feature cache hit ratio, 2 replicas, power of two": figures["two_replicas"][
            "power_of_two"
        ]["hit_ratio"],
        **({"demo vs before": figures["demo_vs_before"]} if "demo_vs_before" in figures else {}),
    }
    result = {
        "headline": headline,
        **figures,
        "contention": contention.summary,
        "machine": machine(),
    }
    write_result(settings.results_dir, "decoding-loop", result)
    plots.decoding_loop(result, settings.results_dir / "decoding-loop.png")
    return result
