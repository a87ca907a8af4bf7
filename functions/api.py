"""The engineers' and auditors' HTTP API: request an action, look one up, verify the audit
trail, and an anonymous health check. Every other route needs an Entra token with an app role."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.http import HttpProblem, authenticate, json_response, read_json
from shared import container
from shared.errors import InvalidInput
from shared.identity import ROLE_ACT, ROLE_AUDIT_READ
from shared.manual import parse_body
from shared.models import Actor

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.route(route="actions", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def request_action(req: func.HttpRequest) -> func.HttpResponse:
    services = await container.current()
    try:
        principal = await authenticate(req, services.validator, ROLE_ACT)
        body = parse_body(read_json(req, services.settings.max_body_bytes))
        actor = Actor(kind=principal.kind, name=principal.name)
        submitted = await services.manual.request(body, actor)
    except HttpProblem as problem:
        return problem.response()
    except InvalidInput as exc:
        return HttpProblem(400, "Invalid request", str(exc)).response()
    [action] = submitted.actions
    return json_response(
        {
            "id": action.id,
            "kind": str(action.kind),
            "target": action.target,
            "decision": str(action.decision),
            "reason": action.reason,
            "queued": action.id in submitted.queued,
            "coalesced": action.id in submitted.coalesced,
        },
        status=202,
    )


@bp.route(route="actions/{action_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_action(req: func.HttpRequest) -> func.HttpResponse:
    services = await container.current()
    try:
        await authenticate(req, services.validator, ROLE_ACT, ROLE_AUDIT_READ)
    except HttpProblem as problem:
        return problem.response()
    entry = await services.manual.state(req.route_params.get("action_id", ""))
    if entry is None:
        return HttpProblem(404, "Not Found", "no such action").response()
    return json_response(
        {
            "id": entry.action_id,
            "kind": entry.kind,
            "target": entry.target,
            "state": entry.state,
            "audit_seq": entry.audit_seq,
        }
    )


@bp.route(route="audit/verify", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def verify_audit(req: func.HttpRequest) -> func.HttpResponse:
    services = await container.current()
    try:
        await authenticate(req, services.validator, ROLE_AUDIT_READ)
    except HttpProblem as problem:
        return problem.response()
    return json_response((await services.chain.verify()).as_dict())


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"status": "ok"})
