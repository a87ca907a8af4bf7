"""The OpenAPI document describes exactly the API routes the app registers."""

from __future__ import annotations

import json

from drill.host import registered_functions
from functions.openapi import openapi_document

# Routes that are not part of the engineers' and auditors' API: the webhooks of other systems.
NOT_API = {"ingest_alert", "notify_changes", "notify_lifecycle"}


def http_routes() -> dict[str, tuple[str, set[str]]]:
    routes = {}
    for name, fn in registered_functions().items():
        binding = json.loads(fn.get_function_json())["bindings"][0]
        if binding["type"] == "httpTrigger" and name not in NOT_API:
            routes[name] = ("/" + binding["route"], {m.lower() for m in binding["methods"]})
    return routes


def test_every_api_route_is_described_with_its_operation_id() -> None:
    paths = openapi_document()["paths"]
    described = {
        operation["operationId"]: (path, method)
        for path, methods in paths.items()
        for method, operation in methods.items()
    }
    routes = http_routes()
    assert set(described) == set(routes)
    for name, (route, methods) in routes.items():
        path, method = described[name]
        assert path == route and methods == {method}, name


def test_protected_operations_declare_the_bearer_scheme() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    for path, methods in document["paths"].items():
        for operation in methods.values():
            anonymous = path in ("/health", "/openapi.json", "/audit/ui")
            assert (operation["security"] == []) is anonymous, path
            if not anonymous:
                assert {"401", "403"} <= set(operation["responses"]), path


def test_the_request_body_schema_is_the_validated_model() -> None:
    schema = openapi_document()["components"]["schemas"]["ActionRequest"]
    assert set(schema["required"]) == {"kind", "target", "reason"}
    assert schema["additionalProperties"] is False
