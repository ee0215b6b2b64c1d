"""The one base model of every request, response and configuration section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown fields are refused; field names may start with ``model_``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
