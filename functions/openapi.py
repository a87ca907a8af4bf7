"""The OpenAPI 3.1 description of the HTTP API, served at /api/openapi.json. Request bodies
come from the same pydantic models the routes validate with, so the two cannot drift."""

from __future__ import annotations

from functools import cache
from typing import Any

from shared.manual import ManualActionBody

FILTERS = ("since", "until", "actor", "kind", "target", "incident", "alert", "outcome")
PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problems(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Invalid request",
        401: "Missing or invalid token",
        403: "Missing app role",
        404: "Not found",
        409: "Already decided",
        410: "The approval window has passed",
        503: "Sign-in not configured or signing keys unavailable",
    }
    return {
        str(status): {
            "description": reasons[status],
            "content": {"application/problem+json": {"schema": PROBLEM}},
        }
        for status in statuses
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _filters() -> list[dict[str, Any]]:
    described = {
        "since": "records at or after this time (ISO 8601)",
        "until": "records before this time (ISO 8601)",
        "actor": "UPN or app id that caused the record",
        "kind": "action kind, e.g. disable_account",
        "target": "user id/UPN or network",
        "incident": "incident id",
        "alert": "alert key, e.g. graph_alerts_v2:da63...",
        "outcome": "event, e.g. action.executed",
    }
    return [_query(name, described[name]) for name in FILTERS]


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _decision(operation_id: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation_id,
            "summary": f"{summary} (role Responder.Approve; never the requester's own)",
            "security": [{"entra": []}],
            "parameters": [
                {"name": "action_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"note": {"type": "string", "maxLength": 1000}},
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "200": _json("Decided and audited", {"type": "object"}),
                **_problems(400, 401, 403, 404, 409, 410, 503),
            },
        }
    }


@cache
def openapi_document() -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"entra": []}]
    action_state = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string"},
            "target": {"type": "string"},
            "state": {"type": "string"},
            "audit_seq": {"type": ["integer", "null"]},
        },
    }
    accepted = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string"},
            "target": {"type": "string"},
            "decision": {"type": "string", "enum": ["execute", "dry_run", "refused"]},
            "reason": {"type": "string"},
            "queued": {"type": "boolean"},
            "coalesced": {"type": "boolean"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "M365 Responder API",
            "version": "1",
            "description": "Request containment actions and read the audit trail.",
        },
        "servers": [{"url": "/api"}],
        "components": {
            "securitySchemes": {
                "entra": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Microsoft Entra access token with app roles "
                    "Responder.Act, Responder.Approve or Audit.Read.",
                }
            },
            "schemas": {
                "ActionRequest": ManualActionBody.model_json_schema(),
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                    },
                },
            },
        },
        "paths": {
            "/actions": {
                "post": {
                    "operationId": "request_action",
                    "summary": "Request a containment action (role Responder.Act)",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ActionRequest"}
                            }
                        },
                    },
                    "responses": {
                        "202": _json("Decided, audited and queued (unless refused)", accepted),
                        "200": _json(
                            "A repeated request_id: what became of the first request",
                            action_state,
                        ),
                        **_problems(400, 401, 403, 503),
                    },
                }
            },
            "/actions/{action_id}": {
                "get": {
                    "operationId": "get_action",
                    "summary": "State of an action (role Responder.Act or Audit.Read)",
                    "security": secured,
                    "parameters": [
                        {
                            "name": "action_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^act-[0-9a-f]{32}$"},
                        }
                    ],
                    "responses": {
                        "200": _json("The action", action_state),
                        **_problems(401, 403, 404, 503),
                    },
                }
            },
            "/approvals": {
                "get": {
                    "operationId": "list_approvals",
                    "summary": "Actions waiting for approval, soonest expiry first "
                    "(role Responder.Approve)",
                    "security": secured,
                    "responses": {
                        "200": _json(
                            "The waiting actions with alert, target, reason, guards and expiry",
                            {
                                "type": "object",
                                "properties": {
                                    "approvals": {"type": "array", "items": {"type": "object"}}
                                },
                            },
                        ),
                        **_problems(401, 403, 503),
                    },
                }
            },
            "/actions/{action_id}/approve": _decision("approve_action", "Approve a held action"),
            "/actions/{action_id}/reject": _decision("reject_action", "Reject a held action"),
            "/audit": {
                "get": {
                    "operationId": "query_audit",
                    "summary": "Audit records, newest first (role Audit.Read)",
                    "security": secured,
                    "parameters": [
                        *_filters(),
                        _query(
                            "limit",
                            "page size",
                            {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                        ),
                        _query("continuation", "opaque token from the previous page"),
                    ],
                    "responses": {
                        "200": _json(
                            "One page",
                            {
                                "type": "object",
                                "properties": {
                                    "records": {"type": "array", "items": {"type": "object"}},
                                    "continuation": {"type": ["string", "null"]},
                                },
                            },
                        ),
                        **_problems(400, 401, 403, 503),
                    },
                }
            },
            "/audit/export": {
                "get": {
                    "operationId": "export_audit",
                    "summary": "Matching records as CSV or JSON lines, page by page; the "
                    "Link header (rel=next) names the next page (role Audit.Read)",
                    "security": secured,
                    "parameters": [
                        *_filters(),
                        _query(
                            "format", "csv or jsonl", {"enum": ["csv", "jsonl"], "default": "csv"}
                        ),
                        _query(
                            "limit",
                            "lines per page",
                            {"type": "integer", "minimum": 1, "maximum": 5000, "default": 5000},
                        ),
                        _query(
                            "continuation",
                            "signed token from the previous page's Link header; expires after "
                            "an hour",
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "One page of the export",
                            "headers": {
                                "Link": {
                                    "description": 'the next page, `<...>; rel="next"`; absent '
                                    "on the last page",
                                    "schema": {"type": "string"},
                                },
                                "X-Audit-Records": {
                                    "description": "records on this page",
                                    "schema": {"type": "integer"},
                                },
                            },
                            "content": {
                                "text/csv": {"schema": {"type": "string"}},
                                "application/x-ndjson": {"schema": {"type": "string"}},
                            },
                        },
                        **_problems(400, 401, 403, 503),
                    },
                }
            },
            "/audit/verify": {
                "get": {
                    "operationId": "verify_audit",
                    "summary": "Verify the hash chain (role Audit.Read)",
                    "security": secured,
                    "responses": {
                        "200": _json("Verification result", {"type": "object"}),
                        **_problems(401, 403, 503),
                    },
                }
            },
            "/audit/ui": {
                "get": {
                    "operationId": "audit_ui",
                    "summary": "The audit page (HTML); anonymous, it holds no data and reads "
                    "the API with the reader's token",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/readiness": {
                "get": {
                    "operationId": "readiness",
                    "summary": "The readiness checklist against the live tenant, read with the "
                    "app's own identity; writes nothing to the tenant (role Responder.Act)",
                    "security": secured,
                    "responses": {
                        "200": _json(
                            "The checklist; `ok` is false when any check fails",
                            {
                                "type": "object",
                                "required": ["ok", "checks"],
                                "properties": {
                                    "ok": {"type": "boolean"},
                                    "checks": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["name", "passed", "detail", "fix"],
                                            "properties": {
                                                "name": {"type": "string"},
                                                "passed": {"type": "boolean"},
                                                "detail": {"type": "string"},
                                                "fix": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        ),
                        **_problems(401, 403, 503),
                    },
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness; anonymous, reveals no configuration",
                    "security": [],
                    "responses": {"200": _json("Alive", {"type": "object"})},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
                }
            },
        },
    }
