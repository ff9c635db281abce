"""What a browser frontend needs from the API: CORS, a request body limit, an OpenAPI
document that validates (the problem details and the SSE payloads are schemas in it), and
``/docs`` served from local files (no CDN: it works offline)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schemas import BundleStatus, Level, Problem, VerificationStatus

#: Largest request body the API reads (an attestation is well under 1 KiB).
MAX_BODY_BYTES = 64 * 1024


class StatusChangeEvent(BaseModel):
    """The JSON in the ``data:`` line of one ``/v1/events`` message. The SSE ``event:`` field
    is ``kind`` and its ``id:`` the change id (send it back as ``Last-Event-ID``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["job", "game", "reorg"] = Field(
        description="SSE event type: a job's status changed, a game moved, or a reorg rolled "
        "the job back (its status is the one after the rollback)"
    )
    job_id: int | None = Field(description="the job concerned")
    game_id: int | None = Field(description="the game concerned (kind game)")
    block: int = Field(description="block of the change (for a reorg: the block rolled back to)")
    status: VerificationStatus | None = Field(
        None, description="kinds job and reorg: the job's verification status now"
    )
    phase: str | None = Field(None, description="kind game: the game's phase now")
    level: Level | None = Field(None, description="kind game: the dispute level now")
    seq: int | None = Field(None, description="kind game: the game's move counter")
    bundle: BundleStatus | None = Field(
        None, description="kind job, after a bundle check: the job's bundle status now"
    )


#: Schemas that responses refer to by name, added to ``components.schemas``.
COMPONENTS: tuple[type[BaseModel], ...] = (Problem, StatusChangeEvent)


class BodyLimit:
    """Refuses (413, problem+json) a request whose body is larger than ``limit`` bytes, by
    its Content-Length or, when chunked, as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(scope, send)
            return
        seen, refused = 0, False

        async def limited() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # answer now; the app sees the client gone
                    refused = True
                    await self._refuse(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = Problem(
            status=413,
            title="Request body too large",
            detail=f"request bodies are limited to {self.limit} bytes",
            instance=scope.get("path"),
        )
        response = JSONResponse(
            body.model_dump(exclude_none=True),
            status_code=413,
            media_type="application/problem+json",
        )
        await response(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}


def swagger_static() -> Path:
    """Swagger UI's files, from the ``swagger-ui-py`` package (Swagger UI 5: OpenAPI 3.1)."""
    import swagger_ui

    return Path(swagger_ui.__file__).resolve().parent / "static"


def install(
    app: FastAPI, cors_origins: Sequence[str] = (), max_body_bytes: int = MAX_BODY_BYTES
) -> None:
    """Add CORS (for ``cors_origins``; ``*`` allows any), the body limit, the complete
    OpenAPI document and the offline ``/docs`` to ``app`` (made with ``docs_url=None``)."""
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Content-Type", "If-None-Match", "Last-Event-ID"],
            expose_headers=["ETag"],
            max_age=600,
        )
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _, defs = models_json_schema(
                [(m, "serialization") for m in COMPONENTS],
                ref_template="#/components/schemas/{model}",
            )
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in defs.get("$defs", {}).items():
                schemas.setdefault(name, schema)
            _describe_events(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount("/docs/static", StaticFiles(directory=swagger_static()), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API docs",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )


def _describe_events(doc: dict[str, Any]) -> None:
    """Name the SSE payload schema in the ``/v1/events`` response."""
    op = doc.get("paths", {}).get("/v1/events", {}).get("get")
    if not op:
        return
    content = op["responses"]["200"].setdefault("content", {})
    content["text/event-stream"] = {
        "schema": {
            "type": "string",
            "description": "a stream of server-sent events; each `data:` line is a JSON "
            "StatusChangeEvent (#/components/schemas/StatusChangeEvent)",
        },
        "x-sse-data": {"$ref": "#/components/schemas/StatusChangeEvent"},
    }
    content.pop("application/json", None)
