"""The browser playground: ``GET /`` serves a page that calls this same API from the browser.

Plain HTML, CSS and JavaScript shipped in the package (``playground.html`` and ``static/``):
no build step, no CDN, so it works offline. The page carries which models are served, never a
token: with authentication on it asks for one and keeps it for the browser tab only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).parent
STATIC = HERE / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob: http: https:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install_playground(app: FastAPI, generation: bool, retrieval: bool) -> None:
    """``GET /`` (the page) and ``/playground/*`` (its script, style and example images)."""
    features = [name for name, on in (("generation", generation), ("retrieval", retrieval)) if on]
    page = (HERE / "playground.html").read_text().replace("__FEATURES__", " ".join(features))

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers=SECURITY_HEADERS)

    app.mount("/playground", StaticFiles(directory=STATIC), name="playground")
