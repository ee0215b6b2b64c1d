"""The image routing key and the replica it picks (no running Ray)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from serve_app.deployments.image_affinity import image_key, preferred_replica, request_image_key
from tests.support.results import image, request


def replicas(*ids: str) -> list[Any]:
    """Stand-ins for Serve's running replicas: only their ids matter here."""
    return [SimpleNamespace(replica_id=SimpleNamespace(unique_id=i)) for i in ids]


def test_the_key_tells_images_apart_and_ignores_the_question() -> None:
    assert image_key(image(1)) == image_key(image(1).copy())
    assert image_key(image(1)) != image_key(image(2))
    assert image_key(image(1, size=48)) != image_key(image(1, size=64))
    one, other = request("What?", 3), request("Why?", 3)
    assert request_image_key([one]) == request_image_key([other]) == image_key(image(3))
    assert request_image_key([[other, request("x", 4)]]) == image_key(image(3))  # a group
    assert request_image_key(["no request"]) is None


def test_each_image_has_one_replica_and_a_new_replica_moves_only_its_own() -> None:
    keys = [image_key(image(i)) for i in range(40)]
    two = replicas("a", "b")
    chosen = [preferred_replica(key, two).replica_id.unique_id for key in keys]
    assert chosen == [preferred_replica(key, two[::-1]).replica_id.unique_id for key in keys]
    assert set(chosen) == {"a", "b"}
    three = [*two, *replicas("c")]
    moved = [
        (before, preferred_replica(key, three).replica_id.unique_id)
        for key, before in zip(keys, chosen, strict=True)
    ]
    assert all(after in (before, "c") for before, after in moved)
    assert any(after == "c" for _, after in moved)
