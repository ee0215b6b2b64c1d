"""One PNG per scenario, drawn from its result (matplotlib, ``Agg``: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

Point = dict[str, Any]


def _save(figure: Any, path: Path, title: str) -> None:
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _label(value: float, axes: Axes, x: float, fmt: str = "{:.0f}") -> None:
    axes.annotate(fmt.format(value), (x, value), ha="center", va="bottom", fontsize=8)


def _log2_axes(panels: Sequence[tuple[Axes, str]], ticks: Sequence[int], xlabel: str) -> None:
    """Base-2 log x axes with ``ticks``, each panel with its y label, a grid and a legend."""
    for axes, ylabel in panels:
        axes.set_xscale("log", base=2)
        axes.set_xticks(ticks, [str(tick) for tick in ticks])
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)


def batching(result: dict[str, Any], path: Path) -> None:
    """Throughput, latency and achieved batch size against ``max_batch_size``, per wait."""
    figure, (rate, latency, size) = plt.subplots(1, 3, figsize=(13, 4))
    waits = sorted({p["batch_wait_timeout_s"] for p in result["points"]})
    for wait in waits:
        points = [p for p in result["points"] if p["batch_wait_timeout_s"] == wait]
        sizes = [p["max_batch_size"] for p in points]
        rate.plot(sizes, [p["throughput_rps"] for p in points], "o-", label=f"wait {wait:g} s")
        latency.plot(sizes, [p["p50_ms"] for p in points], "o-", label=f"p50, wait {wait:g} s")
        latency.plot(sizes, [p["p99_ms"] for p in points], "x--", label=f"p99, wait {wait:g} s")
        size.plot(sizes, [p["mean_batch_size"] for p in points], "o-", label=f"wait {wait:g} s")
    size.plot([1, 16], [1, 16], ":", color="grey", label="full batches")
    all_sizes = sorted({p["max_batch_size"] for p in result["points"]})
    panels = ((rate, "requests/s"), (latency, "latency (ms)"), (size, "mean batch"))
    _log2_axes(panels, all_sizes, "max_batch_size")
    rate.set_title("throughput")
    latency.set_title("latency")
    size.set_title("achieved batch size")
    _save(figure, path, f"Batching at concurrency {result['concurrency']} ({result['model']})")


def grouped_bars(
    axes: Axes, labels: Sequence[str], series: Mapping[str, Sequence[float]], fmt: str = "{:.0f}"
) -> None:
    """Bars per label, one colour per series, each bar labelled with its value."""
    width = 0.8 / max(1, len(series))
    for offset, (name, values) in enumerate(series.items()):
        xs = [i + (offset - (len(series) - 1) / 2) * width for i in range(len(labels))]
        axes.bar(xs, values, width, label=name)
        for x, value in zip(xs, values, strict=True):
            _label(value, axes, x, fmt)
    axes.set_xticks(range(len(labels)), labels, fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=7)


def overhead(result: dict[str, Any], path: Path) -> None:
    """In process against the service: throughput and median latency per case."""
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(12, 4))
    points = result["points"]
    labels = [f"c{p['concurrency']}, wait {p['batch_wait_timeout_s']:g} s" for p in points]
    for axes, key, ylabel in ((rate, "throughput_rps", "requests/s"), (latency, "p50_ms", "ms")):
        series = {
            "in process": [p["in_process"][key] for p in points],
            "service over HTTP": [p["service"][key] for p in points],
        }
        grouped_bars(axes, labels, series)
        axes.set_ylabel(ylabel)
    rate.set_title("throughput")
    latency.set_title("median latency")
    _save(figure, path, f"Same model and batch policy: in process vs service ({result['model']})")


def accelerator(result: dict[str, Any], path: Path) -> None:
    """Achieved throughput against the limit per variant and replica count; Poisson latency."""
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(13, 4.5))
    saturation = result["saturation"]
    variants = list(dict.fromkeys(p["variant"] for p in saturation))
    cases = [p for p in saturation if p["variant"] == variants[0]]
    labels = [f"{p['replicas']} replica(s)" for p in cases]
    series = {
        variant: [p["achieved_vs_limit"] * 100 for p in saturation if p["variant"] == variant]
        for variant in variants
    }
    grouped_bars(rate, labels, series)
    rate.axhline(90, color="grey", linestyle=":", label="90% goal")
    rate.set_ylim(0, 115)
    rate.set_ylabel("achieved throughput, % of the replicas' limit")
    rate.set_title("saturated (3 full batches of clients per replica)")
    rate.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    open_loop = result["open_loop_one_replica"]
    offered = [p["offered_vs_limit"] * 100 for p in open_loop["points"]]
    for key, style in (("p50_ms", "o-"), ("p90_ms", "s-"), ("p99_ms", "x--")):
        values = [p[key] for p in open_loop["points"]]
        latency.plot(offered, values, style, label=key.removesuffix("_ms"))
    latency.set_xlabel("offered load (% of one replica's limit, Poisson arrivals)")
    latency.set_ylabel("latency (ms)")
    latency.set_title(f"one replica, open loop, {open_loop['variant']}")
    latency.grid(alpha=0.3)
    latency.legend(fontsize=7)
    _save(figure, path, f"Emulated accelerator: a batch of n takes {result['batch_cost_ms']} ms")


def baseline(result: dict[str, Any], path: Path) -> None:
    """Per model: throughput at 16 clients, latency, and CPU per request by process."""
    points = result["points"]
    models = list(dict.fromkeys(p["model"] for p in points if p["model"] != "no model"))
    floor = [p for p in points if p["model"] == "no model"]
    figure, rows = plt.subplots(len(models), 3, figsize=(16, 4.2 * len(models)), squeeze=False)
    for (rate, latency, cpu), model in zip(rows, models, strict=True):
        mine = [p for p in points if p["model"] == model] + floor
        servers = list(dict.fromkeys(p["server"] for p in mine))
        at = {(p["server"], p["concurrency"]): p for p in mine}
        labels = [name.replace(" (", "\n(").replace(", ", ",\n") for name in servers]
        grouped_bars(
            rate,
            labels,
            {f"{c} client(s)": [at[(s, c)]["throughput_rps"] for s in servers] for c in (1, 16)},
        )
        rate.set_ylabel("requests/s")
        rate.set_title(f"{model}: throughput")
        grouped_bars(
            latency,
            labels,
            {
                "p50, 1 client": [at[(s, 1)]["p50_ms"] for s in servers],
                "p99, 16 clients": [at[(s, 16)]["p99_ms"] for s in servers],
            },
        )
        latency.set_ylabel("latency (ms)")
        latency.set_title(f"{model}: latency")
        rows_cpu = [
            {
                part: value
                for part, value in at[(s, 16)]["cpu_ms_per_request"].items()
                if part != "model replica outside generate"
            }
            for s in servers
        ]
        names = list(dict.fromkeys(part for row in rows_cpu for part in row))
        palette = plt.get_cmap("tab10")
        _stacked(cpu, labels, rows_cpu, {name: palette(i) for i, name in enumerate(names)})
        cpu.set_xlabel("CPU ms per request, 16 clients")
        cpu.set_title(f"{model}: where the CPU goes")
    _save(figure, path, "Service vs a single-process server vs Serve's floor (64x64 PNG VQA)")


def cold_start(result: dict[str, Any], path: Path) -> None:
    """One stacked horizontal bar per trial: the phases from ``serve run`` to the first 200."""
    trials = result["trials"]
    figure, axes = plt.subplots(figsize=(12, 2.4 + 0.6 * len(trials)))
    names = list(trials[0]["phases_s"])
    colours = [matplotlib.colormaps["tab10"](index) for index in range(10)]
    for row, trial in enumerate(trials):
        left = 0.0
        for index, name in enumerate(names):
            seconds = max(0.0, trial["phases_s"][name])
            axes.barh(
                row, seconds, left=left, color=colours[index], label=name if row == 0 else None
            )
            if seconds >= 0.6:
                axes.text(
                    left + seconds / 2, row, f"{seconds:.1f}", ha="center", va="center", fontsize=8
                )
            left += seconds
        axes.text(left + 0.2, row, f"{trial['total_s']:.1f} s", va="center", fontsize=9)
    axes.set_yticks(range(len(trials)), [t["trial"] for t in trials])
    axes.set_xlabel("seconds from `serve run` to the first 200")
    axes.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.45))
    axes.grid(axis="x", alpha=0.3)
    _save(figure, path, f"Cold start of {result['config']} ({result['model']})")


def _stacked(
    axes: Axes, labels: Sequence[str], parts: Sequence[dict[str, float]], colours: dict[str, Any]
) -> None:
    """One horizontal stacked bar per label; each part's colour is fixed by its name."""
    for row, segments in enumerate(parts):
        left = 0.0
        for name, value in segments.items():
            axes.barh(row, value, left=left, color=colours[name], label=name)
            left += value
        axes.text(left, row, f" {left:.1f}", va="center", fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.invert_yaxis()
    handles, names = axes.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    axes.legend(
        unique.values(),
        unique.keys(),
        fontsize=7,
        ncol=2,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
    )
    axes.grid(axis="x", alpha=0.3)


def profile(result: dict[str, Any], path: Path) -> None:
    """CPU per request by process and by kind of work, and throughput, per variant."""
    variants = result["variants"]
    figure, (processes, work, rate) = plt.subplots(
        1, 3, figsize=(17, 6.5), gridspec_kw={"width_ratios": [1.1, 1.5, 0.8]}
    )
    palette = (matplotlib.colormaps["tab20"](index) for index in range(20))
    roles = list(variants[0]["cpu_ms_per_request"])
    kinds = sorted(
        {k for v in variants for split in v["split_ms_per_request"].values() for k in split}
    )
    colours = {name: next(palette) for name in [*roles, *kinds]}
    _stacked(
        processes,
        [v["variant"] for v in variants],
        [v["cpu_ms_per_request"] for v in variants],
        colours,
    )
    processes.set_xlabel("CPU ms per request")
    processes.set_title("by process")
    labels, parts = [], []
    for variant in variants:
        for role, split in variant["split_ms_per_request"].items():
            if role != "Serve proxy":
                labels.append(f"{variant['variant']}: {role}")
                parts.append(split)
    _stacked(work, labels, parts, colours)
    work.set_xlabel("CPU ms per request (py-spy shares x process CPU)")
    work.set_title("ingress and model replica, by kind of work")
    names = [v["variant"].replace(", ", "\n") for v in variants]
    grouped_bars(rate, names, {"requests/s": [v["load"]["throughput_rps"] for v in variants]})
    rate.set_title(f"throughput at concurrency {result['concurrency']}")
    _save(figure, path, f"Where the time goes ({result['model']})")


def gpu(result: dict[str, Any], path: Path) -> None:
    """Images/s and latency against batch size (bare) and concurrency (service)."""
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    bare, service = result["bare"], result["service"]
    sizes = [p["batch_size"] for p in bare]
    levels = [p["concurrency"] for p in service]
    rate.plot(sizes, [p["images_per_s"] for p in bare], "o-", label="bare model, batch of n")
    rate.plot(levels, [p["throughput_rps"] for p in service], "s-", label="service, n clients")
    for point in service:
        rate.annotate(
            f"batch {point['mean_batch_size']:g}",
            (point["concurrency"], point["throughput_rps"]),
            textcoords="offset points",
            xytext=(0, -12),
            fontsize=7,
        )
    latency.plot(sizes, [p["latency_ms"] for p in bare], "o-", label="bare model, one batch")
    latency.plot(levels, [p["p50_ms"] for p in service], "s-", label="service p50")
    latency.plot(levels, [p["p99_ms"] for p in service], "x--", label="service p99")
    _log2_axes(
        ((rate, "images/s"), (latency, "latency (ms)")),
        sorted({*sizes, *levels}),
        "n: batch size (bare) or concurrent clients (service)",
    )
    rate.set_title("throughput")
    latency.set_title("latency")
    gpu_name = result["machine"]["gpu"]
    tokens = result["max_new_tokens"]
    _save(
        figure, path, f"BLIP-2, {result['model']}, {result['dtype']}, {tokens} tokens, {gpu_name}"
    )


def gpu_variants(result: dict[str, Any], path: Path) -> None:
    """Per model: images/s against batch size per setting, and peak memory measured vs planned."""
    models = list(dict.fromkeys(row["model"] for row in result["results"]))
    figure, axes = plt.subplots(2, max(1, len(models)), figsize=(6.5 * max(1, len(models)), 9))
    grid = axes.reshape(2, -1)
    for column, model in enumerate(models):
        rate, memory = grid[0, column], grid[1, column]
        rows = [row for row in result["results"] if row["model"] == model]
        for row in rows:
            sizes = [b["batch_size"] for b in row["batches"]]
            rate.plot(
                sizes, [b["images_per_s"] for b in row["batches"]], "o-", label=row["variant"]
            )
        _log2_axes(((rate, "images/s"),), [1, 8, 32], "batch size")
        rate.set_title(model.split("/")[-1])
        labels, measured, planned = [], [], []
        for row in rows:
            largest = row["batches"][-1]
            variant = row["variant"].replace(", ", "\n")
            labels.append(f"{variant}\nbatch {largest['batch_size']}")
            measured.append(largest.get("peak_gib", 0.0))
            planned.append(largest["planned_peak_gib"])
        grouped_bars(memory, labels, {"measured peak": measured, "planned": planned}, "{:.1f}")
        memory.set_ylabel("GiB")
        memory.set_title("memory at the largest batch")
    gpu_name = result["machine"].get("gpu", "no GPU")
    tokens = result["max_new_tokens"]
    _save(figure, path, f"BLIP-2 sizes, random weights, {tokens} tokens each, {gpu_name}")


def overload(result: dict[str, Any], path: Path) -> None:
    """Throughput per case, and latency of the 200s and of the 503s (log scale)."""
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(14, 5))
    points = result["points"]
    labels = [point["case"].replace(", ", "\n") for point in points]
    grouped_bars(rate, labels, {"200s per second": [p["throughput_rps"] for p in points]})
    rate.set_ylabel("requests/s")
    rate.set_title("throughput")
    series = {
        "p50 of 200s": [p["p50_ms"] for p in points],
        "p99 of 200s": [p["p99_ms"] for p in points],
        "p99 of 503s": [p.get("p99_503_ms", 0.0) for p in points],
    }
    grouped_bars(latency, labels, series)
    latency.axhline(
        result["max_queue_wait_s"] * 1000, color="grey", linestyle=":", label="wait budget"
    )
    latency.set_yscale("log")
    latency.set_ylabel("ms")
    latency.set_title("latency")
    latency.legend(fontsize=7)
    _save(figure, path, f"Overload on one CPU model replica ({result['model']})")


def grpc_vs_http(result: dict[str, Any], path: Path) -> None:
    """Per protocol: throughput, latency, and CPU per request by process at 16 clients."""
    points = result["points"]
    protocols = list(dict.fromkeys(p["protocol"] for p in points))
    at = {(p["protocol"], p["concurrency"]): p for p in points}
    labels = [name.replace(", ", ",\n") for name in protocols]
    figure, (rate, latency, cpu) = plt.subplots(1, 3, figsize=(16, 4.5))
    grouped_bars(
        rate,
        labels,
        {f"{c} client(s)": [at[(p, c)]["throughput_rps"] for p in protocols] for c in (1, 16)},
    )
    rate.set_ylabel("requests/s")
    rate.set_title("throughput")
    grouped_bars(
        latency,
        labels,
        {
            "p50, 1 client": [at[(p, 1)]["p50_ms"] for p in protocols],
            "p99, 16 clients": [at[(p, 16)]["p99_ms"] for p in protocols],
        },
    )
    latency.set_ylabel("latency (ms)")
    latency.set_title("latency")
    rows = [at[(p, 16)]["cpu_ms_per_request"] for p in protocols]
    names = list(dict.fromkeys(part for row in rows for part in row))
    palette = plt.get_cmap("tab10")
    _stacked(cpu, labels, rows, {name: palette(i) for i, name in enumerate(names)})
    cpu.set_xlabel("CPU ms per request, 16 clients")
    cpu.set_title("where the CPU goes")
    _save(figure, path, f"gRPC vs HTTP, the same questions ({result['model']}, 64x64 PNG)")


def decoding_loop(result: dict[str, Any], path: Path) -> None:
    """Four panels: short p50 alone and beside long, throughput with one or 16 sampling
    settings, time to first token alone and busy, latency of five questions on one image."""
    figure, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    mix, settings, first, same = (
        result["mix"],
        result["settings"],
        result["first_token"],
        result["same_image"],
    )
    panels = [
        (
            axes[0],
            "short answers, p50 ms",
            {
                "16 short": mix["short_alone"]["p50_ms"],
                "12 short + 4 long": mix["short_beside_long"]["p50_ms"],
            },
        ),
        (
            axes[1],
            "sampling, requests/s",
            {
                "1 setting": settings["one_setting"]["throughput_rps"],
                "16 settings": settings["distinct_settings"]["throughput_rps"],
            },
        ),
        (
            axes[2],
            "first token, p50 ms",
            {"alone": first["alone_p50_ms"], "beside 15 long": first["beside_15_long_p50_ms"]},
        ),
        (
            axes[3],
            "one image, 5 questions: ms",
            {f"q{i + 1}": ms for i, ms in enumerate(same["latencies_ms"])},
        ),
    ]
    for ax, ylabel, bars in panels:
        names = list(bars)
        ax.bar(names, [bars[name] for name in names], color="#4c72b0")
        for x, name in enumerate(names):
            _label(bars[name], ax, x, "{:.1f}")
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    _save(figure, path, "Decoding loop on the CPU (tiny model, forced lengths), through HTTP")
