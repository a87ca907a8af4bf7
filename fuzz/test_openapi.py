"""Schemathesis against the app's own OpenAPI document, the functions served over loopback and
authenticated with tokens the simulated tenant issues: no 5xx, and every refusal a
problem+json 4xx. `make fuzz` runs it (FUZZ_EXAMPLES per operation, default 300)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from drill.azurite import Azurite
from functions.openapi import openapi_document
from tests.served import Served, problems_of, served

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def app(azurite: Azurite) -> Iterator[Served]:
    with served(azurite) as running:
        yield running


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_answers_every_request_without_a_server_error(
    case: schemathesis.Case, app: Served
) -> None:
    response = case.call(base_url=f"{app.base_url}/api", headers=app.engineer, timeout=60)
    if case.method.upper() != case.operation.method.upper():
        # A method the route does not declare never reaches a function: the host refuses it.
        assert response.status_code in (404, 405), (case.method, case.formatted_path)
        return
    assert not problems_of(response), (case.method, case.formatted_path, problems_of(response))
