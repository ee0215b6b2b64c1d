"""Suite-wide test configuration."""

from __future__ import annotations

import os

import pytest

from tests.support import type_check

# Every Ray cluster the tests start or join uses token authentication (Ray's default for local
# clusters, made explicit so drivers also authenticate to clusters started with `ray start`).
os.environ.setdefault("RAY_AUTH_MODE", "token")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` where no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the type check in the background when it is among the tests to run."""
    if any(item.nodeid.endswith("test_code_quality[mypy]") for item in session.items):
        type_check.start()
