"""The service fuzzed from its own OpenAPI schema (schemathesis), and hand-picked hostile requests."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from helpers import TOKEN
from hypothesis import HealthCheck, given, settings

from serve.app import create_app
from serve.settings import Settings


@pytest.fixture()
def served_app(root):
    app = create_app(Settings(artifacts=root / "v1", admin_token=TOKEN, events_token=TOKEN))
    with TestClient(app):  # runs the lifespan: the artifact stays loaded while fuzzing
        yield app


def fuzz(app, method: str, examples: int, check, paths=None) -> int:
    """Run ``check`` on cases generated from the app's own OpenAPI schema for every operation of a method (of
    ``paths`` only, when given)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    n = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.method.upper() != method or (paths is not None and op.path not in paths):
            continue

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            check(case)

        run()
        n += 1
    return n


def test_no_500_and_responses_match_the_schema(served_app):
    assert fuzz(served_app, "GET", 60, lambda case: case.call_and_validate()) >= 4


def test_token_endpoints_refuse_without_token_and_never_500(served_app):
    def check(case):
        r = case.call()
        assert r.status_code == 401, r.text  # the token is checked before the body is looked at

    assert fuzz(served_app, "POST", 20, check, {"/admin/swap", "/admin/items", "/events"}) == 3


def test_token_endpoints_with_their_token_never_500(served_app):
    def check(case):
        r = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code in (200, 409, 422), r.text

    assert fuzz(served_app, "POST", 30, check, {"/admin/items", "/events"}) == 2


def test_live_candidates_never_500_and_match_the_schema(served_app):
    assert fuzz(served_app, "POST", 80, lambda case: case.call_and_validate(), {"/candidates"}) == 1


@pytest.mark.parametrize("query", [
    "user=%FF%FE", "user=%00", "user=" + "9" * 200, "user=1&k=" + "9" * 40, "user=1&k=-1", "user=1&k=1e3",
    "user=1&k=%20", "user=%F0%9F%98%80&k=3", "user=1&exclude_purchased=1&k=1000",
])
def test_hostile_queries_never_500(client, query):
    r = client.get(f"/candidates?{query}")
    assert r.status_code in (200, 422), (query, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")


def test_binds_to_loopback_by_default(root):
    assert Settings(artifacts=root / "v1").host == "127.0.0.1"
