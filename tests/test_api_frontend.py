"""The API as a browser frontend meets it (issue 16): the OpenAPI document validates with a
standard validator and every 4xx names a defined Problem schema; a TypeScript client generated
from it with openapi-typescript, plus the small fetch client and an example, compile with tsc;
SSE payloads match their schema; CORS is configurable; /docs needs no CDN; request bodies
have a size limit."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from api.app import create_app
from api.db import make_engine, make_sessions
from api.frontend import StatusChangeEvent
from api.seed import seed

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "node_modules" / ".bin"


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Iterator:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('api') / 'index.db'}")
    s = make_sessions(engine)
    seed(s, jobs=12)
    yield s
    engine.dispose()


@pytest.fixture(scope="module")
def client(sessions) -> Iterator[TestClient]:
    with TestClient(create_app(sessions, sse_poll_s=0.01)) as c:
        yield c


def test_openapi_document_validates(client) -> None:
    doc = client.get("/openapi.json").json()
    validate(doc)  # openapi-spec-validator: raises on any violation, unresolvable $refs included
    schemas = doc["components"]["schemas"]
    assert {"Problem", "StatusChangeEvent"} <= set(schemas)
    refs = [
        media["schema"]["$ref"]
        for path in doc["paths"].values()
        for op in path.values()
        for code, resp in op["responses"].items()
        if code.startswith("4")
        for media in resp.get("content", {}).values()
    ]
    assert refs and set(refs) == {"#/components/schemas/Problem"}
    sse = doc["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert sse["x-sse-data"] == {"$ref": "#/components/schemas/StatusChangeEvent"}


def test_sse_payloads_match_their_schema(client) -> None:
    with client.stream("GET", "/v1/events", params={"after": 0, "limit": 40}) as resp:
        body = "".join(resp.iter_text())
    events = [block for block in body.split("\n\n") if block.startswith("id:")]
    assert len(events) == 40
    kinds = set()
    for block in events:
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        payload = StatusChangeEvent.model_validate_json(fields["data"])  # extra fields refused
        assert payload.kind == fields["event"]
        kinds.add(payload.kind)
    assert {"job", "game"} <= kinds


def test_typescript_client_generates_and_type_checks(client, tmp_path) -> None:
    if not (BIN / "openapi-typescript").exists() or not (BIN / "tsc").exists():
        pytest.fail("node_modules lacks openapi-typescript/tsc: run `make setup` (npm install)")
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(client.get("/openapi.json").json()))
    work = tmp_path / "client"
    shutil.copytree(REPO / "api" / "client", work)
    gen = subprocess.run([str(BIN / "openapi-typescript"), str(spec), "-o",
                          str(work / "schema.d.ts")], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    assert "StatusChangeEvent" in (work / "schema.d.ts").read_text()
    tsc = subprocess.run([str(BIN / "tsc"), "-p", str(work / "tsconfig.json")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr
    # and the check can fail: a field the API does not have is a compile error
    example = work / "example.ts"
    wrong = example.read_text().replace("as_challenger.profit", "as_challenger.no_such_field")
    example.write_text(wrong)
    tsc = subprocess.run([str(BIN / "tsc"), "-p", str(work / "tsconfig.json")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert tsc.returncode != 0 and "no_such_field" in tsc.stdout


def test_cors_is_configurable(sessions) -> None:
    origin = "https://market.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "GET"}
    with TestClient(create_app(sessions, cors_origins=[origin])) as c:
        r = c.options("/v1/jobs", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        r = c.get("/v1/jobs/1/status", headers={"Origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
        assert "etag" in r.headers["access-control-expose-headers"].lower()
        other = c.get("/v1/jobs/1/status", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    with TestClient(create_app(sessions)) as c:  # default: same-origin only
        r = c.get("/v1/jobs/1/status", headers={"Origin": origin})
        assert "access-control-allow-origin" not in r.headers


def test_docs_work_offline(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text.split("<body>")[0]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs/static/{asset}" in page.text
        r = client.get(f"/docs/static/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000


def test_request_bodies_have_a_size_limit(sessions) -> None:
    with TestClient(create_app(sessions, max_body_bytes=4096)) as c:
        big = b'{"job_id": 1, "pad": "' + b"x" * 5_000_000 + b'"}'
        r = c.post("/v1/attestations", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["title"] == "Request body too large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"job_id": 1, "pad": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}'

        r = c.post("/v1/attestations", content=chunks(),
                   headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 413
        small = c.post("/v1/attestations", json={"job_id": 1})
        assert small.status_code == 422  # read and validated as usual
