"""Actions engineers request by hand (over HTTP): validated, put through the same guards as
automatic actions, then claimed, audited and queued by the intake service."""

from __future__ import annotations

import re
import uuid
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.errors import InvalidInput
from shared.intake import AlertIntake, Submitted
from shared.models import (
    ActionKind,
    ActionRequest,
    Actor,
    validate_target,
    validate_user_target,
)
from shared.policy import Guards
from shared.ports import ActionLedger, LedgerEntry

REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class ManualActionBody(BaseModel):
    """The body of `POST /api/actions`. The actor comes from the caller's token, never from
    here."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    kind: ActionKind
    target: str = Field(min_length=1, max_length=256)
    reason: str = Field(min_length=3, max_length=1000)
    ttl_minutes: int | None = Field(None, ge=5, le=30 * 24 * 60)
    incident_id: str | None = Field(None, max_length=128, pattern=r"^[\w.:/-]+$")
    dry_run: bool = False
    request_id: str | None = Field(
        None, description="Idempotency key: the same key returns the same action."
    )

    @model_validator(mode="after")
    def _ttl_for_blocks_only(self) -> ManualActionBody:
        timed = (ActionKind.BLOCK_IP, ActionKind.ACTIVATE_BREAKGLASS)
        if self.ttl_minutes is not None and self.kind not in timed:
            raise ValueError("ttl_minutes applies to block_ip and activate_breakglass only")
        return self

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, value: str | None) -> str | None:
        if value is not None and not REQUEST_ID.match(value):
            raise ValueError("must be 8-64 letters, digits, '-' or '_'")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if isinstance(kind, ActionKind):
            return validate_target(kind, value)
        return validate_user_target(value)


def parse_body(payload: object) -> ManualActionBody:
    try:
        return ManualActionBody.model_validate(payload)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidInput("; ".join(problems[:5])) from None


class ManualActions:
    def __init__(self, intake: AlertIntake, guards: Guards, ledger: ActionLedger) -> None:
        self._intake = intake
        self._guards = guards
        self._ledger = ledger

    async def request(self, body: ManualActionBody, actor: Actor) -> Submitted:
        """Decide (guards, dry-run) and submit one engineer's request."""
        origin = f"engineer:{actor.name}:{body.request_id or uuid.uuid4().hex}"
        params: dict[str, Any] = {}
        if body.ttl_minutes is not None:
            params["ttl_minutes"] = body.ttl_minutes
        action = ActionRequest(
            id=ActionRequest.derive_id(body.kind, body.target, origin),
            kind=body.kind,
            target=body.target,
            params=params,
            reason=body.reason,
            incident_id=body.incident_id,
            requested_by=actor,
            dry_run=body.dry_run,
        )
        return await self._intake.submit([self._guards.decide(action)])

    async def state(self, action_id: str) -> LedgerEntry | None:
        if not action_id.startswith("act-") or len(action_id) != 36:
            return None
        return await self._ledger.get(action_id)
