"""``/docs`` without the internet: Swagger UI 5 served from the ``fastapi-offline`` package's files.

FastAPI's default ``/docs`` page loads Swagger UI and its favicon from public CDNs, so it stays blank
on an offline host. Here the app is created with ``docs_url=None`` and this module mounts the bundled
``swagger-ui-bundle.js`` / ``swagger-ui.css`` / ``favicon.png`` under :data:`STATIC_PREFIX` and
serves a ``/docs`` page that points only at them. The online spec validator badge is switched off
(``validatorUrl: null``): it would send the spec to validator.swagger.io.

The page starts Swagger UI with one inline script; its Content-Security-Policy is the gateway's
(``'self'`` only) plus that script's SHA-256, so nothing else inline can run there either.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from workers.gateway.middleware import content_security_policy

__all__ = ["DOCS_URL", "STATIC_PREFIX", "mount_docs", "swagger_assets"]

DOCS_URL: Final = "/docs"
STATIC_PREFIX: Final = "/static/docs"
_ASSETS: Final = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
_INLINE_SCRIPT: Final = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def page_policy(html: bytes) -> str:
    """The gateway's Content-Security-Policy, allowing exactly the inline scripts of ``html`` (by hash)."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    ]
    return content_security_policy(*hashes)


def swagger_assets() -> Path:
    """Directory of the bundled Swagger UI files; fails loudly if the package is incomplete."""
    directory = Path(str(resources.files("fastapi_offline") / "static"))
    missing = [name for name in _ASSETS if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline is missing Swagger UI assets {missing} under {directory}")
    return directory


def mount_docs(app: FastAPI, title: str) -> None:
    """Serve the assets and the ``/docs`` page on ``app`` (created with ``docs_url=None``)."""
    app.mount(STATIC_PREFIX, StaticFiles(directory=swagger_assets()), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", ""))
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_PREFIX}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = page_policy(bytes(page.body))
        return page
