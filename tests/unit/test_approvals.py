"""Four-eyes approvals against in-memory stores: who may decide, what an approval queues, what
a rejection or an expiry ends, and what the audit trail says about each."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.approvals import ApprovalError, Approvals
from shared.audit import AuditChain
from shared.models import (
    ActionKind,
    ActionRequest,
    Actor,
    AuditEvent,
    Decision,
    OutcomeStatus,
)
from shared.ports import Approval, ApprovalState, LedgerEntry
from tests.fakes import MemoryAuditStore

NOW = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
ADA = Actor(kind="engineer", name="ada@contoso.com")
GRACE = Actor(kind="engineer", name="grace@contoso.com")


@dataclass
class MemoryApprovals:
    rows: dict[str, Approval] = field(default_factory=dict)
    settle_loses: bool = False

    async def hold(self, action: ActionRequest, expires_at: datetime) -> None:
        self.rows[action.id] = Approval(action, ApprovalState.PENDING, expires_at, etag="1")

    async def get(self, action_id: str) -> Approval | None:
        return self.rows.get(action_id)

    async def pending(self) -> list[Approval]:
        return [a for a in self.rows.values() if a.state is ApprovalState.PENDING]

    async def settle(self, approval: Approval, state: ApprovalState, decided_by: str) -> bool:
        current = self.rows.get(approval.action.id)
        if self.settle_loses or current is None or current.etag != approval.etag:
            return False
        self.rows[approval.action.id] = replace(
            current, state=state, decided_by=decided_by, etag=current.etag + "'"
        )
        return True


@dataclass
class MemoryLedger:
    finished: list[tuple[str, OutcomeStatus, int]] = field(default_factory=list)

    async def claim(self, action: ActionRequest) -> bool:
        return True

    async def release(self, action_id: str) -> None:
        return None

    async def get(self, action_id: str) -> LedgerEntry | None:
        return None

    async def finish(self, action: ActionRequest, status: OutcomeStatus, audit_seq: int) -> None:
        self.finished.append((action.id, status, audit_seq))


@dataclass
class MemoryQueue:
    sent: list[ActionRequest] = field(default_factory=list)
    broken: bool = False

    async def send(
        self, actions: list[ActionRequest], claims: Mapping[str, str] | None = None
    ) -> None:
        if self.broken:
            raise ConnectionError("queue unavailable")
        self.sent += actions

    async def schedule(self, actions: list[ActionRequest], at: datetime) -> None:
        raise AssertionError("approvals never schedule")


class Desk:
    def __init__(self) -> None:
        self.store = MemoryApprovals()
        self.audit = MemoryAuditStore()
        self.ledger = MemoryLedger()
        self.queue = MemoryQueue()
        self.now = NOW
        self.approvals = Approvals(
            self.store, AuditChain(self.audit), self.ledger, self.queue, lambda: self.now
        )

    async def held(
        self, n: int = 1, requester: Actor = ADA, expires_in: timedelta = timedelta(hours=1)
    ) -> ActionRequest:
        action = ActionRequest(
            id=f"act-{n}",
            kind=ActionKind.DISABLE_ACCOUNT,
            target="5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01",
            params={"allow_privileged": True},
            decision=Decision.NEEDS_APPROVAL,
            reason="holds Security Administrator",
            requested_by=requester,
        )
        await self.store.hold(action, NOW + expires_in)
        return action

    def entries(self) -> list[tuple[AuditEvent, Actor, str, dict[str, object]]]:
        return [
            (r.entry.event, r.entry.actor, r.entry.reason, r.entry.result)
            for _, r in sorted(self.audit.records.items())
        ]


async def test_an_approval_queues_the_action_with_its_approver_and_audits_it() -> None:
    desk = Desk()
    held = await desk.held()
    approved = await desk.approvals.approve("act-1", GRACE, "confirmed with the user")
    assert approved.decision is Decision.EXECUTE
    assert approved.params == {"allow_privileged": True, "approved_by": "grace@contoso.com"}
    assert (approved.id, approved.target, approved.requested_by) == (
        held.id,
        held.target,
        ADA,
    )
    assert desk.queue.sent == [approved]
    row = desk.store.rows["act-1"]
    assert (row.state, row.decided_by) == (ApprovalState.APPROVED, "grace@contoso.com")
    assert desk.entries() == [
        (
            AuditEvent.ACTION_APPROVED,
            GRACE,
            "confirmed with the user",
            {"approved_by": "grace@contoso.com"},
        )
    ]
    assert desk.audit.records[1].entry.action_id == "act-1"
    assert desk.ledger.finished == []


async def test_a_rejection_ends_the_action_without_queueing_it() -> None:
    desk = Desk()
    held = await desk.held()
    rejected = await desk.approvals.reject("act-1", GRACE, "false positive")
    assert rejected == held
    assert desk.queue.sent == []
    row = desk.store.rows["act-1"]
    assert (row.state, row.decided_by) == (ApprovalState.REJECTED, "grace@contoso.com")
    assert desk.entries() == [
        (AuditEvent.ACTION_REJECTED, GRACE, "false positive", {"rejected_by": "grace@contoso.com"})
    ]
    assert desk.ledger.finished == [("act-1", OutcomeStatus.REJECTED, 1)]


@pytest.mark.parametrize("decide", ["approve", "reject"])
async def test_the_requester_can_never_decide_their_own_request(decide: str) -> None:
    desk = Desk()
    await desk.held(requester=ADA)
    shouting = Actor(kind="engineer", name="ADA@contoso.com")
    with pytest.raises(ApprovalError) as refused:
        await getattr(desk.approvals, decide)("act-1", shouting, "")
    assert (refused.value.status, refused.value.detail) == (
        403,
        "the requester cannot approve or reject their own request",
    )
    assert desk.store.rows["act-1"].state is ApprovalState.PENDING
    assert desk.queue.sent == [] and desk.audit.records == {}


@pytest.mark.parametrize("decide", ["approve", "reject"])
async def test_only_an_engineer_decides(decide: str) -> None:
    desk = Desk()
    await desk.held()
    with pytest.raises(ApprovalError) as refused:
        await getattr(desk.approvals, decide)("act-1", Actor(), "")
    assert (refused.value.status, refused.value.detail) == (
        403,
        "only an engineer can approve or reject",
    )
    assert desk.store.rows["act-1"].state is ApprovalState.PENDING


async def test_an_unknown_action_is_a_404() -> None:
    with pytest.raises(ApprovalError) as refused:
        await Desk().approvals.approve("act-404", GRACE, "")
    assert (refused.value.status, refused.value.detail) == (
        404,
        "no action waits for approval under this id",
    )


async def test_a_decided_action_cannot_be_decided_again() -> None:
    desk = Desk()
    await desk.held()
    await desk.approvals.reject("act-1", GRACE, "")
    with pytest.raises(ApprovalError) as refused:
        await desk.approvals.approve("act-1", GRACE, "")
    assert (refused.value.status, refused.value.detail) == (409, "the action was already rejected")
    assert desk.queue.sent == []


@pytest.mark.parametrize("decide", ["approve", "reject"])
async def test_losing_the_race_to_another_decision_changes_nothing_more(decide: str) -> None:
    desk = Desk()
    await desk.held()
    desk.store.settle_loses = True
    with pytest.raises(ApprovalError) as refused:
        await getattr(desk.approvals, decide)("act-1", GRACE, "")
    assert (refused.value.status, refused.value.detail) == (
        409,
        "the action was decided by someone else meanwhile",
    )
    assert desk.audit.records == {} and desk.ledger.finished == []


async def test_an_approval_whose_message_cannot_be_sent_stays_pending() -> None:
    desk = Desk()
    await desk.held()
    desk.queue.broken = True
    with pytest.raises(ConnectionError):
        await desk.approvals.approve("act-1", GRACE, "")
    assert desk.store.rows["act-1"].state is ApprovalState.PENDING
    assert desk.audit.records == {}


@pytest.mark.parametrize("late", [timedelta(0), timedelta(seconds=1)])
async def test_a_decision_at_or_after_the_expiry_expires_the_action(late: timedelta) -> None:
    desk = Desk()
    await desk.held(expires_in=timedelta(minutes=10))
    desk.now = NOW + timedelta(minutes=10) + late
    with pytest.raises(ApprovalError) as refused:
        await desk.approvals.approve("act-1", GRACE, "")
    assert (refused.value.status, refused.value.detail) == (
        410,
        "the approval window has passed; the action expired",
    )
    assert str(refused.value) == refused.value.detail
    assert desk.queue.sent == []
    row = desk.store.rows["act-1"]
    assert (row.state, row.decided_by) == (ApprovalState.EXPIRED, "expiry")
    assert desk.entries() == [
        (
            AuditEvent.ACTION_EXPIRED,
            Actor(),
            "holds Security Administrator",
            {"expired_at": str(NOW + timedelta(minutes=10))},
        )
    ]
    assert desk.ledger.finished == [("act-1", OutcomeStatus.EXPIRED, 1)]


async def test_a_decision_just_before_the_expiry_counts() -> None:
    desk = Desk()
    await desk.held(expires_in=timedelta(minutes=10))
    desk.now = NOW + timedelta(minutes=10) - timedelta(microseconds=1)
    await desk.approvals.approve("act-1", GRACE, "")
    assert desk.store.rows["act-1"].state is ApprovalState.APPROVED


async def test_expire_due_expires_exactly_the_approvals_past_their_window() -> None:
    desk = Desk()
    await desk.held(1, expires_in=timedelta(minutes=5))
    await desk.held(2, expires_in=timedelta(minutes=10))
    await desk.held(3, expires_in=timedelta(minutes=30))
    desk.now = NOW + timedelta(minutes=10)
    assert await desk.approvals.expire_due() == 2
    states = {k: r.state for k, r in desk.store.rows.items()}
    assert states == {
        "act-1": ApprovalState.EXPIRED,
        "act-2": ApprovalState.EXPIRED,
        "act-3": ApprovalState.PENDING,
    }
    assert [f[:2] for f in desk.ledger.finished] == [
        ("act-1", OutcomeStatus.EXPIRED),
        ("act-2", OutcomeStatus.EXPIRED),
    ]
    assert [seq for *_, seq in desk.ledger.finished] == [1, 2]
    assert await desk.approvals.expire_due() == 0


async def test_an_expiry_someone_else_settled_first_is_not_counted_or_audited() -> None:
    desk = Desk()
    await desk.held(expires_in=timedelta(minutes=5))
    desk.now = NOW + timedelta(hours=1)
    desk.store.settle_loses = True
    assert await desk.approvals.expire_due() == 0
    assert desk.audit.records == {} and desk.ledger.finished == []


async def test_pending_lists_the_soonest_expiry_first() -> None:
    desk = Desk()
    await desk.held(1, expires_in=timedelta(minutes=30))
    await desk.held(2, expires_in=timedelta(minutes=5))
    await desk.held(3, expires_in=timedelta(minutes=10))
    await desk.approvals.reject("act-3", GRACE, "")
    assert [a.action.id for a in await desk.approvals.pending()] == ["act-2", "act-1"]


ADA_OID = "4d1e2f3a-5b6c-4d7e-8f90-a1b2c3d4e5f6"
TENANT = "00000000-0000-0000-0000-0000000000aa"


@pytest.mark.parametrize("decide", ["approve", "reject"])
@pytest.mark.parametrize(
    "alias",
    ["ada.lovelace@contoso.com", "ada@fabrikam.onmicrosoft.com", "+49 30 1234567"],
    ids=["renamed-upn", "preferred-username-alias", "phone-number-name"],
)
async def test_the_requester_under_another_name_is_still_the_requester(
    decide: str, alias: str
) -> None:
    desk = Desk()
    await desk.held(requester=ADA.model_copy(update={"object_id": ADA_OID, "tenant_id": TENANT}))
    renamed = Actor(kind="engineer", name=alias, object_id=ADA_OID.upper(), tenant_id=TENANT)
    with pytest.raises(ApprovalError) as refused:
        await getattr(desk.approvals, decide)("act-1", renamed, "")
    assert refused.value.status == 403 and "own request" in refused.value.detail
    assert desk.store.rows["act-1"].state is ApprovalState.PENDING
    assert desk.queue.sent == [] and desk.audit.records == {}


async def test_another_person_is_told_apart_by_object_id_and_recorded_with_it() -> None:
    desk = Desk()
    await desk.held(requester=ADA.model_copy(update={"object_id": ADA_OID, "tenant_id": TENANT}))
    grace = GRACE.model_copy(
        update={"object_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "tenant_id": TENANT}
    )
    await desk.approvals.approve("act-1", grace, "ok")
    [(event, actor, _, _)] = desk.entries()
    assert event is AuditEvent.ACTION_APPROVED and actor == grace
    [record] = desk.audit.records.values()
    assert json.loads(record.body)["actor"] == {
        "kind": "engineer",
        "name": "grace@contoso.com",
        "object_id": grace.object_id,
        "tenant_id": TENANT,
    }


async def test_the_same_object_id_in_another_tenant_is_compared_by_name() -> None:
    desk = Desk()
    await desk.held(requester=ADA.model_copy(update={"object_id": ADA_OID, "tenant_id": TENANT}))
    guest = Actor(
        kind="engineer",
        name="grace@fabrikam.com",
        object_id=ADA_OID,
        tenant_id="11111111-1111-1111-1111-111111111111",
    )
    await desk.approvals.approve("act-1", guest, "")
    assert desk.store.rows["act-1"].state is ApprovalState.APPROVED
