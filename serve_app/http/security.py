"""The bearer token a route reads: FastAPI's ``HTTPBearer``, so the OpenAPI document shows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

Authorization = Annotated[
    HTTPAuthorizationCredentials | None,
    Security(HTTPBearer(auto_error=False, description="An API key, when the server sets any.")),
]
"""The caller's bearer token, if it sent one (routes decide; health routes take none)."""

Authorize = Callable[[HTTPAuthorizationCredentials | None], None]
"""Checks a route's token; raises ``AuthenticationError`` when it is refused."""
