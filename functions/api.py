"""The engineers' and auditors' HTTP API: request an action, look one up, query, export and
verify the audit trail; plus an anonymous health check and the OpenAPI document. Every other
route needs an Entra token with an app role."""

from __future__ import annotations

import logging
from urllib.parse import urlencode, urlsplit

import azure.functions as func

from functions.http import HttpProblem, authenticate, json_response, read_json
from shared import worker
from shared.errors import InvalidInput

logger = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.route(route="actions", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def request_action(req: func.HttpRequest) -> func.HttpResponse:
    from shared.identity import ROLE_ACT
    from shared.manual import parse_body

    services = await worker.services()
    try:
        principal = await authenticate(req, services.validator, ROLE_ACT)
        body = parse_body(read_json(req, services.settings.max_body_bytes))
        actor = principal.actor()
        submitted = await services.manual.request(body, actor)
    except HttpProblem as problem:
        return problem.response()
    except InvalidInput as exc:
        return HttpProblem(400, "Invalid request", str(exc)).response()
    [action] = submitted.actions
    if action.id in submitted.coalesced:
        # A repeated request id: answer with what became of the first request, not with
        # this body's decision.
        entry = await services.manual.state(action.id)
        return json_response(
            {
                "id": action.id,
                "kind": str(action.kind),
                "target": action.target,
                "state": entry.state if entry else "coalesced",
                "coalesced": True,
            }
        )
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
    from shared.identity import ROLE_ACT, ROLE_AUDIT_READ

    services = await worker.services()
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
    from shared.identity import ROLE_AUDIT_READ

    services = await worker.services()
    try:
        await authenticate(req, services.validator, ROLE_AUDIT_READ)
    except HttpProblem as problem:
        return problem.response()
    return json_response((await services.chain.verify()).as_dict())


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"status": "ok"})


@bp.route(route="audit", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def query_audit(req: func.HttpRequest) -> func.HttpResponse:
    from shared.audit_query import AuditFilter, page_row
    from shared.identity import ROLE_AUDIT_READ

    services = await worker.services()
    params = dict(req.params)
    try:
        await authenticate(req, services.validator, ROLE_AUDIT_READ)
        limit = _limit(params.pop("limit", None))
        continuation = params.pop("continuation", None)
        page = await services.audit_query.page(AuditFilter.from_params(params), limit, continuation)
    except HttpProblem as problem:
        return problem.response()
    except InvalidInput as exc:
        return HttpProblem(400, "Invalid query", str(exc)).response()
    return json_response(
        {
            "records": [page_row(record) for record in page.records],
            "continuation": page.continuation,
        }
    )


@bp.route(route="audit/export", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def export_audit(req: func.HttpRequest) -> func.HttpResponse:
    """One page of an export (at most `limit` lines, default and most 5,000); a `Link` header
    with rel="next" names the next page while there is one."""
    from shared.audit_export import FORMATS
    from shared.audit_query import AuditFilter
    from shared.identity import ROLE_AUDIT_READ

    services = await worker.services()
    params = dict(req.params)
    export_format = params.pop("format", "csv")
    continuation = params.pop("continuation", None)
    try:
        await authenticate(req, services.validator, ROLE_AUDIT_READ)
        limit = _export_limit(params.pop("limit", None))
        flt = AuditFilter.from_params(params)
        page = await services.audit_export.page(flt, export_format, limit, continuation)
    except HttpProblem as problem:
        return problem.response()
    except InvalidInput as exc:
        return HttpProblem(400, "Invalid query", str(exc)).response()
    headers = {
        "Content-Disposition": f'attachment; filename="audit.{export_format}"',
        "X-Audit-Records": str(page.records),
    }
    if page.continuation is not None:
        following = urlencode({**dict(req.params), "continuation": page.continuation})
        headers["Link"] = f'<{urlsplit(req.url).path}?{following}>; rel="next"'
    return func.HttpResponse("".join(page.lines), mimetype=FORMATS[export_format], headers=headers)


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    from functions.openapi import openapi_document

    return json_response(openapi_document())


def _export_limit(value: str | None) -> int:
    from shared.audit_export import EXPORT_PAGE

    if value is None:
        return EXPORT_PAGE
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= EXPORT_PAGE:
        raise InvalidInput(f"limit must be a whole number from 1 to {EXPORT_PAGE}")
    return int(value)


def _limit(value: str | None) -> int:
    if value is None:
        return 50
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 200:
        raise InvalidInput("limit must be a whole number from 1 to 200")
    return int(value)


@bp.route(
    route="actions/{action_id}/approve", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS
)
async def approve_action(req: func.HttpRequest) -> func.HttpResponse:
    return await _decide(req, approve=True)


@bp.route(route="actions/{action_id}/reject", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def reject_action(req: func.HttpRequest) -> func.HttpResponse:
    return await _decide(req, approve=False)


async def _decide(req: func.HttpRequest, approve: bool) -> func.HttpResponse:
    from shared.approvals import ApprovalError
    from shared.identity import ROLE_APPROVE

    services = await worker.services()
    action_id = req.route_params.get("action_id", "")
    try:
        principal = await authenticate(req, services.validator, ROLE_APPROVE)
        note = _note(read_json(req, 16_384) if req.get_body() else {})
        approver = principal.actor()
        decide = services.approvals.approve if approve else services.approvals.reject
        action = await decide(action_id, approver, note)
    except HttpProblem as problem:
        return problem.response()
    except InvalidInput as exc:
        return HttpProblem(400, "Invalid request", str(exc)).response()
    except ApprovalError as exc:
        return HttpProblem(exc.status, _DECISION_TITLES[exc.status], exc.detail).response()
    decision = "approved" if approve else "rejected"
    return json_response({"id": action.id, "decision": decision, "queued": approve})


_DECISION_TITLES = {403: "Forbidden", 404: "Not Found", 409: "Conflict", 410: "Gone"}


@bp.route(route="approvals", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def list_approvals(req: func.HttpRequest) -> func.HttpResponse:
    """The actions waiting for an engineer's approval, the soonest to expire first."""
    from shared.identity import ROLE_APPROVE

    services = await worker.services()
    try:
        await authenticate(req, services.validator, ROLE_APPROVE)
    except HttpProblem as problem:
        return problem.response()
    return json_response({"approvals": await services.waiting.listing()})


def _note(body: object) -> str:
    if not isinstance(body, dict) or set(body) - {"note"}:
        raise InvalidInput('the body may only hold {"note": "..."}')
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 1000:
        raise InvalidInput("note must be text of at most 1000 characters")
    return note
