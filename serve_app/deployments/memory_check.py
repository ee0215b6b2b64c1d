"""A model replica's check that its model and batch fit the GPU memory it was given.

The replica plans its model (:mod:`serve_app.model.memory`) before loading any weights: one
whose weights cannot fit does not start, and rows (``model.max_rows``; retrieval: a
``max_batch_size``) whose worst case cannot fit are refused, each with the plan in the
message. The memory is ``gpu_memory_gib`` where set, else on CUDA the card's memory times the
share of a GPU Ray assigned the replica; on a CPU without ``gpu_memory_gib`` nothing is
checked.
"""

from __future__ import annotations

from serve_app.config import CheckpointConfig
from serve_app.model.memory import GIB, MemoryPlan, plan_for, share_of_gpu


def replica_memory_bytes(settings: CheckpointConfig, gpu_share: float | None) -> int | None:
    """GPU memory a replica with ``gpu_share`` of a GPU may use (None: on a CPU, unchecked)."""
    if settings.gpu_memory_gib is not None:
        return int(settings.gpu_memory_gib * GIB)
    import torch

    from serve_app.model.devices import resolve_device

    if resolve_device(settings.device).type != "cuda":
        return None
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return share_of_gpu(total, gpu_share)


def assigned_gpus() -> float | None:
    """The GPUs Ray assigned this replica (None outside a Ray worker)."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    try:
        resources: dict[str, float] = context.get_assigned_resources()  # type: ignore[no-untyped-call]
    except AssertionError:  # a driver, not a replica
        return None
    return resources.get("GPU")


class MemoryCheck:
    """The plan of one replica's model against the memory the replica has."""

    def __init__(self, settings: CheckpointConfig, gpu_share: float | None) -> None:
        """Plan ``settings``' model, before it loads, for a replica with ``gpu_share``.

        Raises:
            ValueError: Its weights (and one request) cannot fit; the message holds the plan.
        """
        self._name = settings.name
        self._memory = replica_memory_bytes(settings, gpu_share)
        self._plan: MemoryPlan | None = None
        if self._memory is None:
            return
        self._plan = plan_for(settings)
        if self._plan.largest_batch(self._memory, num_beams=1) == 0:
            raise ValueError(self._problem("does not fit"))

    def check_batch(self, size: int) -> None:
        """Refuse a batch of ``size`` worst-case requests (the decoding loop's rows, or
        retrieval's ``max_batch_size``) that cannot fit.

        Raises:
            ValueError: It cannot fit; the message holds the plan.
        """
        if self._plan is None or self._memory is None:
            return
        if size > self._plan.largest_batch(self._memory):
            setting = self._plan.batch_setting
            raise ValueError(self._problem(f"with {setting} {size} does not fit"))

    def _problem(self, what: str) -> str:
        assert self._plan is not None and self._memory is not None
        gpu = {"this replica": self._memory}
        return (
            f"{self._name} {what} in {self._memory / GIB:.1f} GiB of GPU memory: lower "
            f"{self._plan.batch_setting} or max_num_beams, quantize, or give the replica a "
            "larger GPU (python -m serve_app.memory_plan plans a config).\n"
            f"{self._plan.report(gpu)}"
        )
