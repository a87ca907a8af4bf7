"""The responder's working state in Table Storage: the poller's watermark, the alert versions
already handled, the action ledger, and the IP block registry. Unlike the audit trail this
table is mutable; it also holds pending approvals, the disable budget and the emergency access
activation. Least privilege: Storage Table Data Contributor on this table only.

An alert version's handled mark is a row of the `handled` partition; a batch of versions is
checked by inserting their rows first as pending marks (`Pending` true, not handled), which its
commit turns into handled marks. Code from before pending marks existed reads any such row as
handled: rolling back past them needs the `Pending eq true` rows deleted first
(docs/runbook.md).

A claim's sent mark is a row of its own in the `handled` partition (`sent~<action id>`), not a
property of the claim: the intake writes it together with its alerts' handled marks (one
transaction), and the claim's ETag stays the one the executor was sent, so the executor's
first write to the claim can be conditional on it instead of reading the row first. A claim
the executor has written to carries `Sent` itself; rows written before sent marks had rows
of their own carry it too."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from shared.adapters.table_batch import (
    INSERT,
    UPSERT,
    Operation,
    insert_entities,
    merge_entity,
    replace_if_unchanged,
    write_entities,
)
from shared.adapters.table_query import MAX_PAGE, first_page, get_json, query_json
from shared.adapters.table_service import as_int, int64
from shared.concurrency import gather_bounded
from shared.errors import TransientError
from shared.models import ActionRequest, OutcomeStatus
from shared.ports import (
    ACTIVE_BLOCK_STATES,
    LEDGER_QUEUED,
    Activation,
    Approval,
    ApprovalState,
    BlockEntry,
    BlockState,
    ClaimChanged,
    Intent,
    LedgerEntry,
)

# Table Storage takes at most 100 operations on one partition in a transaction.
MAX_TRANSACTION = 100
WATERMARKS = "watermark"
HANDLED = "handled"
ACTIONS = "action"
# The row keys of sent marks in the `handled` partition: "sent~<action id>" (handled marks'
# keys are hex digests, so the two never meet).
SENT = "sent~"
# A handled partition row with `Pending` true is the mark of a batch still under way
# (`handled_among`), not of a handled alert version.
PENDING = "Pending"


async def _read_time(table: TableClient, partition: str, row: str) -> datetime | None:
    """The time a one-value row holds (`Value`), None when the row is missing."""
    try:
        entity = await table.get_entity(partition, row)
    except ResourceNotFoundError:
        return None
    value = entity["Value"]
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


async def _write_time(table: TableClient, partition: str, row: str, value: datetime) -> None:
    await table.upsert_entity(
        {"PartitionKey": partition, "RowKey": row, "Value": value}, mode=UpdateMode.REPLACE
    )


def _raced(exc: TableTransactionError) -> bool:
    """Whether a transaction failed on a row that changed since it was read: created meanwhile
    (409 `EntityAlreadyExists`), replaced meanwhile (412, the ETag no longer matches), or
    deleted meanwhile (404). Then it landed nothing, and its rows are written one by one."""
    code = getattr(exc, "error_code", None)
    return exc.status_code in (404, 409, 412) or code in (
        "EntityAlreadyExists",
        "UpdateConditionNotSatisfied",
        "ResourceNotFound",
    )


def _key(text: str) -> str:
    # Alert ids and versions may hold characters Table keys forbid (/ \ # ?).
    return hashlib.sha256(text.encode()).hexdigest()


class StateTable:
    """`AlertCheckpoint` and `ActionLedger` on one Table Storage table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def watermark(self, feed: str) -> datetime | None:
        return await _read_time(self._table, WATERMARKS, feed)

    async def advance_watermark(self, feed: str, value: datetime) -> None:
        await _write_time(self._table, WATERMARKS, feed, value)

    async def is_handled(self, alert_key: str, version: str) -> bool:
        # Read as plain JSON, only what tells a handled mark from a pending one.
        found = await get_json(
            self._table, HANDLED, _key(f"{alert_key}|{version}"), select=("RowKey", PENDING)
        )
        return found is not None and not found[0].get(PENDING)

    async def handled_among(self, versions: Sequence[tuple[str, str]]) -> list[bool]:
        """`is_handled` for a batch of alert versions. Two or more are checked by inserting
        their rows as pending marks, up to 100 in one transaction: when none existed (a
        storm's batch of new alerts), no version was handled, in one round trip instead of
        one read each. When one existed, the transaction lands nothing and each is read on
        its own. A pending mark counts as not handled, so a batch that fails before its
        commit is handled again; the commit turns the marks into handled ones."""
        keys = [_key(f"{key}|{version}") for key, version in versions]
        # One row per row key (a change set may not name a row twice).
        unique = list(dict(zip(keys, versions, strict=True)).items())
        answers: dict[str, bool] = {}
        for start in range(0, len(unique), MAX_TRANSACTION):
            chunk = unique[start : start + MAX_TRANSACTION]
            if len(unique) > 1:
                try:
                    await insert_entities(self._table, [_pending_row(*v) for _, v in chunk])
                    answers.update((row, False) for row, _ in chunk)
                    continue
                except TableTransactionError as exc:
                    if not _raced(exc):
                        raise
            found = await gather_bounded(self.is_handled(*version) for _, version in chunk)
            answers.update((row, done) for (row, _), done in zip(chunk, found, strict=True))
        return [answers[row] for row in keys]

    async def claim(
        self, action: ActionRequest, at: datetime, claim_seq: int, lease_until: datetime
    ) -> str | None:
        try:
            created = await self._table.create_entity(
                _claim_row(action, at, claim_seq, lease_until)
            )
        except ResourceExistsError:
            return None
        return str(created.get("etag") or "")

    async def claim_all(
        self, actions: list[ActionRequest], at: datetime, claim_seq: int, lease_until: datetime
    ) -> dict[str, str]:
        """The rows share a partition: up to 100 claims are inserted in one transaction (an
        alert's actions, the new blocks of a storm's batch: one round trip). If one was
        claimed before, the transaction fails whole, and each is claimed on its own."""
        unique = list({action.id: action for action in actions}.values())
        claimed: dict[str, str] = {}
        for start in range(0, len(unique), MAX_TRANSACTION):
            chunk = unique[start : start + MAX_TRANSACTION]
            if len(chunk) > 1:
                rows = [_claim_row(a, at, claim_seq, lease_until) for a in chunk]
                try:
                    etags = await insert_entities(self._table, rows)
                    claimed.update((a.id, etag or "") for a, etag in zip(chunk, etags, strict=True))
                    continue
                except TableTransactionError as exc:
                    if not _raced(exc):
                        raise
            for action in chunk:
                etag = await self.claim(action, at, claim_seq, lease_until)
                if etag is not None:
                    claimed[action.id] = etag
        return claimed

    async def mark_sent(self, *action_ids: str, handled: Sequence[tuple[str, str]] = ()) -> None:
        """Sent marks and handled marks share the `handled` partition: up to 100 of them are
        upserted in one transaction (a submission's claims and its alerts: one round trip).
        The claims are not touched, so a claim cleaned up meanwhile is no obstacle."""
        await self._upsert_rows(
            [
                *(_sent_row(action_id) for action_id in action_ids),
                *(_handled_row(key, version) for key, version in handled),
            ]
        )

    async def _upsert_rows(self, rows: list[dict[str, Any]]) -> None:
        """Insert-or-merge rows of one partition, up to 100 in one transaction; a row named
        twice is written as it was named last."""
        unique = list({row["RowKey"]: row for row in rows}.values())
        if not unique:
            return
        if len(unique) == 1:
            await merge_entity(self._table, unique[0])
            return
        for start in range(0, len(unique), MAX_TRANSACTION):
            await write_entities(self._table, unique[start : start + MAX_TRANSACTION], UPSERT)

    async def get(self, action_id: str, sent_mark: bool = True) -> LedgerEntry | None:
        try:
            entity = await self._table.get_entity(ACTIONS, action_id)
        except ResourceNotFoundError:
            return None
        entry = _ledger_entry(entity)
        return await self._with_sent_mark(entry) if sent_mark else entry

    async def _with_sent_mark(self, entry: LedgerEntry) -> LedgerEntry:
        """`entry`, sent if its sent mark's row says so (an open claim not flagged itself)."""
        if not entry.open or entry.sent:
            return entry
        mark = await get_json(self._table, HANDLED, SENT + entry.action_id, select=("RowKey",))
        return dataclasses.replace(entry, sent=True) if mark is not None else entry

    async def intend(
        self,
        action: ActionRequest,
        call: str,
        before: dict[str, Any],
        at: datetime,
        record_from: int | None = None,
        claim_etag: str | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "IntentCall": call,
            "IntentBefore": json.dumps(before, default=str),
            "IntentAt": at,
        }
        if record_from is not None:
            values["RecordFrom"] = int64(record_from)
        await self._executor_write(action, values, claim_etag)

    async def recording(
        self, action: ActionRequest, from_seq: int, claim_etag: str | None = None
    ) -> None:
        await self._executor_write(action, {"RecordFrom": int64(from_seq)}, claim_etag)

    async def _executor_write(
        self, action: ActionRequest, values: dict[str, Any], claim_etag: str | None
    ) -> None:
        """A write of the executor's: the claim reached it, so it is flagged sent as well.
        With `claim_etag`, a merge into the claim only as it was then."""
        values = {**values, "Sent": True}
        if claim_etag is None:
            await self._upsert(action, values)
            return
        try:
            await merge_entity(self._table, _ledger_row(action, values), if_match=claim_etag)
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise ClaimChanged(f"the claim of {action.id} changed since it was sent") from exc

    async def recording_all(self, actions: Sequence[ActionRequest], from_seq: int) -> None:
        """`recording` without a claim's ETag for each of `actions`: their rows share a
        partition, so up to 100 are merged in one transaction (an IP block pass's outcomes)."""
        values = {"RecordFrom": int64(from_seq), "Sent": True}
        await self._upsert_rows([_ledger_row(action, values) for action in actions])

    async def finish(self, action: ActionRequest, status: OutcomeStatus, audit_seq: int) -> None:
        await self.finish_all([(action, status, audit_seq)])

    async def finish_all(
        self, finished: Sequence[tuple[ActionRequest, OutcomeStatus, int]]
    ) -> None:
        # Scheduled reverts reach the executor without a claim, so this may create the rows.
        await self._upsert_rows(
            [
                _ledger_row(action, {"State": str(status), "AuditSeq": int64(seq), "RecordFrom": 0})
                for action, status, seq in finished
            ]
        )

    async def unsent(self, claimed_before: datetime) -> list[LedgerEntry]:
        query = (
            f"PartitionKey eq '{ACTIONS}' and State eq '{LEDGER_QUEUED}' and Sent eq false "
            "and ClaimedAt lt @before"
        )
        return [entry for entry in await self._query(query, claimed_before) if not entry.sent]

    async def stuck(self, claimed_before: datetime) -> list[LedgerEntry]:
        query = (
            f"PartitionKey eq '{ACTIONS}' and State eq '{LEDGER_QUEUED}' "
            "and ClaimedAt lt @before and Alerted eq false"
        )
        return await self._query(query, claimed_before)

    async def mark_alerted(self, action_id: str) -> None:
        await self._merge(action_id, {"Alerted": True})

    async def _query(self, query: str, before: datetime) -> list[LedgerEntry]:
        """The rows `query` finds, each with its sent mark looked up (a point read for each
        open claim not flagged sent itself: one not yet run)."""
        entities = self._table.query_entities(query, parameters={"before": before})
        entries = [_ledger_entry(entity) async for entity in entities]
        return await gather_bounded(self._with_sent_mark(entry) for entry in entries)

    async def _merge(self, action_id: str, values: dict[str, Any]) -> None:
        try:
            await self._table.update_entity(
                {"PartitionKey": ACTIONS, "RowKey": action_id, **values}, mode=UpdateMode.MERGE
            )
        except ResourceNotFoundError:
            return

    async def _upsert(self, action: ActionRequest, values: dict[str, Any]) -> None:
        await merge_entity(self._table, _ledger_row(action, values))


def _ledger_row(action: ActionRequest, values: dict[str, Any]) -> dict[str, Any]:
    return {
        "PartitionKey": ACTIONS,
        "RowKey": action.id,
        "Kind": str(action.kind),
        "Target": action.target,
        **values,
    }


def _handled_row(alert_key: str, version: str) -> dict[str, Any]:
    # Written over a pending mark by a merge, so `Pending` is set, not left out.
    return {
        "PartitionKey": HANDLED,
        "RowKey": _key(f"{alert_key}|{version}"),
        "AlertKey": alert_key,
        "Version": version,
        PENDING: False,
    }


def _pending_row(alert_key: str, version: str) -> dict[str, Any]:
    return {**_handled_row(alert_key, version), PENDING: True}


def _sent_row(action_id: str) -> dict[str, Any]:
    return {"PartitionKey": HANDLED, "RowKey": SENT + action_id, "ActionId": action_id}


def _claim_row(
    action: ActionRequest, at: datetime, claim_seq: int, lease_until: datetime
) -> dict[str, Any]:
    return {
        "PartitionKey": ACTIONS,
        "RowKey": action.id,
        "State": LEDGER_QUEUED,
        "Kind": str(action.kind),
        "Target": action.target,
        "Request": action.model_dump_json(),
        "ClaimedAt": at,
        "Sent": False,
        "ClaimSeq": int64(claim_seq),
        "Alerted": False,
        "LeaseUntil": lease_until,
    }


def _ledger_entry(entity: Any) -> LedgerEntry:
    request = entity.get("Request")
    call = entity.get("IntentCall")
    claimed_at = entity.get("ClaimedAt")
    lease_until = entity.get("LeaseUntil")
    return LedgerEntry(
        action_id=entity["RowKey"],
        # A row only the executor wrote (a scheduled revert in progress) is open.
        state=entity.get("State") or LEDGER_QUEUED,
        kind=entity["Kind"],
        target=entity["Target"],
        audit_seq=as_int(entity["AuditSeq"]) if "AuditSeq" in entity else None,
        request=ActionRequest.model_validate_json(request) if request else None,
        claimed_at=claimed_at if isinstance(claimed_at, datetime) else None,
        sent=entity.get("Sent") is not False,
        claim_seq=as_int(entity.get("ClaimSeq")),
        record_from=as_int(entity.get("RecordFrom")),
        intent=(
            Intent(
                call=call,
                before=json.loads(entity.get("IntentBefore") or "{}"),
                at=entity["IntentAt"],
            )
            if call
            else None
        ),
        alerted=bool(entity.get("Alerted")),
        lease_until=lease_until if isinstance(lease_until, datetime) else None,
        etag=entity.metadata.get("etag"),
    )


BLOCKS = "ipblock"
MAX_RACE_ATTEMPTS = 20
# From this many networks on, `get_many` reads the registry's partition (one page) instead of
# each network's row by its keys: a page of a few hundred rows costs this process less than
# eight point reads (docs/performance.md).
MANY_NETWORKS = 8
# How long a worker reads by keys only after the partition outgrew a page.
REGISTRY_PAGED_FOR_S = 600.0


def _network_key(network: str) -> str:
    # "/" is not allowed in a RowKey; ":" and "." are.
    return network.replace("/", "_")


def _block_entity(
    entry_network: str,
    generation: int,
    state: str,
    block: ActionRequest,
    unblock: ActionRequest | None,
    expires_at: datetime | None,
    changed_at: datetime,
) -> dict[str, Any]:
    return {
        "PartitionKey": BLOCKS,
        "RowKey": _network_key(entry_network),
        "Network": entry_network,
        "Generation": generation,
        "State": str(state),
        "Block": block.model_dump_json(),
        "Unblock": unblock.model_dump_json() if unblock else "",
        "ExpiresAt": expires_at.isoformat() if expires_at else "",
        "ChangedAt": changed_at,
    }


def _registry_query(states: Sequence[str]) -> str:
    query = f"PartitionKey eq '{BLOCKS}'"
    if states:
        wanted = " or ".join(f"State eq '{state}'" for state in states)
        query += f" and ({wanted})"
    return query


def _block_entry(entity: Any, etag: str, written: datetime | str | None) -> BlockEntry:
    """A registry row, typed by the SDK or as plain JSON (times as ISO 8601 strings);
    `written`, the service's timestamp, stands in for rows older than `ChangedAt`."""
    changed = entity.get("ChangedAt") or written
    return BlockEntry(
        network=entity["Network"],
        generation=int(entity["Generation"]),
        state=entity["State"],
        block=ActionRequest.model_validate_json(entity["Block"]),
        unblock=(
            ActionRequest.model_validate_json(entity["Unblock"]) if entity["Unblock"] else None
        ),
        expires_at=datetime.fromisoformat(entity["ExpiresAt"]) if entity["ExpiresAt"] else None,
        etag=etag,
        changed_at=datetime.fromisoformat(changed) if isinstance(changed, str) else changed,
    )


class TableBlockRegistry:
    """`BlockRegistry` on the state table: one row per network, updated with etags so that
    concurrent intakes and executors never overwrite each other's transitions. Each write
    stamps the row with `clock` (`ChangedAt`): how long a transition has been under way."""

    # Rows per page of the registry's partition read for many networks at once.
    REGISTRY_PAGE = MAX_PAGE

    def __init__(self, table: TableClient, clock: Callable[[], datetime]) -> None:
        self._table = table
        self._clock = clock
        # Until when `get_many` reads by keys only (the partition outgrew a page).
        self._paged_until = 0.0

    async def reserve(self, action: ActionRequest) -> ActionRequest | None:
        for _ in range(MAX_RACE_ATTEMPTS):
            current = await self.get(action.target)
            if current is not None and current.state in ACTIVE_BLOCK_STATES:
                return None
            generation = current.generation + 1 if current else self._first_generation()
            request = action.for_generation(generation)
            entity = _block_entity(
                action.target, generation, BlockState.PENDING, request, None, None, self._clock()
            )
            try:
                if current is None:
                    await self._table.create_entity(entity)
                else:
                    await self._table.update_entity(
                        entity,
                        mode=UpdateMode.REPLACE,
                        etag=current.etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
            except (ResourceExistsError, ResourceModifiedError):
                continue
            return request
        raise TransientError(f"block registry entry {action.target} kept changing")

    async def reserve_many(
        self, actions: Sequence[ActionRequest], current: Mapping[str, BlockEntry | None]
    ) -> dict[str, ActionRequest | None]:
        """`reserve` for blocks of distinct networks none of which is pending or blocked in
        `current` (their rows as read, by network): up to 100 rows written in one
        transaction, a network without a row inserted and one with a finished row replaced
        as it was read. When any of them changed since (another intake reserved it, the row
        was cleaned up), the transaction lands nothing and each is reserved on its own."""
        reserved: dict[str, ActionRequest | None] = {}
        firsts: dict[str, ActionRequest] = {}
        for action in actions:
            firsts.setdefault(action.target, action)
        pending = list(firsts.values())
        for start in range(0, len(pending), MAX_TRANSACTION):
            chunk = pending[start : start + MAX_TRANSACTION]
            try:
                reserved.update(await self._reserve_together(chunk, current))
                continue
            except TableTransactionError as exc:
                if not _raced(exc):
                    raise
            found = await gather_bounded(self.reserve(action) for action in chunk)
            reserved.update((a.target, r) for a, r in zip(chunk, found, strict=True))
        return reserved

    async def _reserve_together(
        self, actions: Sequence[ActionRequest], current: Mapping[str, BlockEntry | None]
    ) -> dict[str, ActionRequest]:
        now = self._clock()
        requests: dict[str, ActionRequest] = {}
        rows: list[dict[str, Any]] = []
        operations: list[Operation] = []
        for action in actions:
            earlier = current.get(action.target)  # a network not read: as if it had no row
            if earlier is not None and earlier.state in ACTIVE_BLOCK_STATES:
                raise ValueError(f"{action.target} is pending or blocked already")
            generation = earlier.generation + 1 if earlier else self._first_generation()
            request = action.for_generation(generation)
            rows.append(
                _block_entity(
                    action.target, generation, BlockState.PENDING, request, None, None, now
                )
            )
            operations.append(replace_if_unchanged(earlier.etag) if earlier else INSERT)
            requests[action.target] = request
        await write_entities(self._table, rows, operations)
        return requests

    def _first_generation(self) -> int:
        """The generation of a network's new row: the clock's Unix time in seconds. The state
        clean-up deletes a finished row only `STATE_TTL_DAYS` after its last change, so a row
        created later starts above every generation the deleted one reached (one per block,
        fewer than one a second), and no block reuses an earlier block's action id."""
        return int(self._clock().timestamp())

    async def get(self, network: str) -> BlockEntry | None:
        # A storm reads the row of every network its alerts name: read as plain JSON.
        found = await get_json(self._table, BLOCKS, _network_key(network))
        if found is None:
            return None
        entity, etag = found
        return _block_entry(entity, etag, entity.get("Timestamp"))

    async def get_many(self, networks: Collection[str]) -> dict[str, BlockEntry | None]:
        """The rows of `networks`. Many networks at once (a storm's batch) are read from the
        first page of the registry's partition, one query instead of a point read each; a
        network not on that page is read by its keys when the partition has more. Once the
        partition has outgrown a page, this worker reads by keys for a while."""
        asked = set(networks)
        found: dict[str, BlockEntry | None] = {}
        if len(asked) >= MANY_NETWORKS and time.monotonic() >= self._paged_until:
            rows, more = await first_page(
                self._table, f"PartitionKey eq '{BLOCKS}'", self.REGISTRY_PAGE
            )
            by_key = {row.get("RowKey"): row for row in rows}
            for network in asked:
                row = by_key.get(_network_key(network))
                if row is not None:
                    found[network] = _block_entry(row, row["odata.etag"], row.get("Timestamp"))
                elif not more:
                    found[network] = None
            if more:
                self._paged_until = time.monotonic() + REGISTRY_PAGED_FOR_S
        left = [n for n in asked if n not in found]
        rows_left = await gather_bounded(self.get(network) for network in left)
        found.update(zip(left, rows_left, strict=True))
        return found

    async def any_in(self, *states: str) -> bool:
        """Whether any network's row is in one of `states`: one row asked for, only its key.
        The service may answer a page with no row and a continuation (Query Timeout and
        Pagination): the query goes on until a row comes or the pages end."""
        rows = query_json(self._table, _registry_query(states), page_size=1, select=("RowKey",))
        async with aclosing(rows):
            async for _ in rows:
                return True
        return False

    async def entries(self, *states: str) -> list[BlockEntry]:
        query = _registry_query(states)
        # Read as plain JSON with each row's ETag, without the SDK's deserializer: a storm's
        # IP block passes list the registry again and again (docs/performance.md).
        return [
            _block_entry(e, e["odata.etag"], e.get("Timestamp"))
            async for e in query_json(self._table, query, etags=True)
        ]

    async def update(
        self,
        entry: BlockEntry,
        state: str,
        *,
        unblock: ActionRequest | None = None,
        expires_at: datetime | None = None,
    ) -> bool:
        entity = _block_entity(
            entry.network,
            entry.generation,
            state,
            entry.block,
            unblock or entry.unblock,
            expires_at or entry.expires_at,
            self._clock(),
        )
        try:
            await self._table.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=entry.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    async def update_all(
        self, moves: Sequence[tuple[BlockEntry, str, datetime | None]]
    ) -> list[bool]:
        """`update` for each (entry, state, expiry) of `moves`, of distinct networks: their
        rows share a partition, so up to 100 are replaced in one transaction, each only as it
        was read. When any changed since, the transaction lands nothing and each is updated
        on its own; whether each was moved, in order."""
        moved: list[bool] = []
        now = self._clock()
        for start in range(0, len(moves), MAX_TRANSACTION):
            chunk = moves[start : start + MAX_TRANSACTION]
            rows = [
                _block_entity(
                    e.network,
                    e.generation,
                    state,
                    e.block,
                    e.unblock,
                    expires or e.expires_at,
                    now,
                )
                for e, state, expires in chunk
            ]
            try:
                await write_entities(
                    self._table, rows, [replace_if_unchanged(e.etag) for e, _, _ in chunk]
                )
                moved += [True] * len(chunk)
                continue
            except TableTransactionError as exc:
                if not _raced(exc):
                    raise
            moved += await gather_bounded(
                self.update(e, state, expires_at=expires) for e, state, expires in chunk
            )
        return moved

    async def note_unanswered_write(self, at: datetime) -> None:
        await _write_time(self._table, RULE_WRITES, UNANSWERED, at)

    async def unanswered_write(self) -> datetime | None:
        return await _read_time(self._table, RULE_WRITES, UNANSWERED)


# One row: when the latest transport rule write that got no answer was made.
RULE_WRITES = "rulewrite"
UNANSWERED = "unanswered"
APPROVALS = "approval"
BUDGET = "budget"


class TableApprovals:
    """`ApprovalStore` and `DisableBudget` on the state table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def hold(self, action: ActionRequest, expires_at: datetime) -> None:
        await self._table.upsert_entity(
            {
                "PartitionKey": APPROVALS,
                "RowKey": action.id,
                "Action": action.model_dump_json(),
                "State": str(ApprovalState.PENDING),
                "ExpiresAt": expires_at.isoformat(),
                "DecidedBy": "",
            },
            mode=UpdateMode.REPLACE,
        )

    async def get(self, action_id: str) -> Approval | None:
        try:
            entity = await self._table.get_entity(APPROVALS, action_id)
        except ResourceNotFoundError:
            return None
        return _approval(entity)

    async def pending(self) -> list[Approval]:
        query = f"PartitionKey eq '{APPROVALS}' and State eq @state"
        parameters = {"state": str(ApprovalState.PENDING)}
        return [
            _approval(entity)
            async for entity in self._table.query_entities(query, parameters=parameters)
        ]

    async def settle(self, approval: Approval, state: ApprovalState, decided_by: str) -> bool:
        try:
            await self._table.update_entity(
                {
                    "PartitionKey": APPROVALS,
                    "RowKey": approval.action.id,
                    "State": str(state),
                    "DecidedBy": decided_by,
                },
                mode=UpdateMode.MERGE,
                etag=approval.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            return False
        return True

    async def spent(self, since: datetime, up_to: int) -> set[str]:
        if up_to <= 0:
            return set()
        stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        query = f"PartitionKey eq '{BUDGET}' and At ge datetime'{stamp}'"
        # Only the accounts, and no more pages than the check needs: it reads at most its
        # budget's worth of rows however many accounts the window holds. Read as plain JSON,
        # without the SDK's deserializer: with a large budget, every alert reads every row of
        # the window (docs/performance.md).
        entities = query_json(self._table, query, min(up_to, MAX_PAGE), select=("Target",))
        targets: set[str] = set()
        async with aclosing(entities):
            async for entity in entities:
                targets.add(entity["Target"])
                if len(targets) >= up_to:
                    break
        return targets

    async def spend(self, target: str, at: datetime) -> None:
        await merge_entity(
            self._table,
            {"PartitionKey": BUDGET, "RowKey": _key(target), "Target": target, "At": at},
        )


def _approval(entity: Any) -> Approval:
    return Approval(
        action=ActionRequest.model_validate_json(entity["Action"]),
        state=ApprovalState(entity["State"]),
        expires_at=datetime.fromisoformat(entity["ExpiresAt"]),
        decided_by=entity["DecidedBy"] or None,
        etag=entity.metadata["etag"] or "",
    )


BREAKGLASS = "breakglass"
ACTIVATION = "activation"


class TableActivations:
    """`ActivationStore` on the state table: one row, replaced under its etag."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def get(self) -> Activation | None:
        try:
            entity = await self._table.get_entity(BREAKGLASS, ACTIVATION)
        except ResourceNotFoundError:
            return None
        expires = entity.get("ExpiresAt") or ""
        exclusions = json.loads(entity.get("Exclusions") or "{}")
        return Activation(
            action_id=entity["ActionId"],
            active=bool(entity["Active"]),
            expires_at=datetime.fromisoformat(expires) if expires else None,
            enabled=tuple(json.loads(entity.get("Enabled") or "[]")),
            exclusions={policy: tuple(users) for policy, users in exclusions.items()},
            etag=entity.metadata["etag"] or "",
        )

    async def save(self, activation: Activation) -> str | None:
        entity = {
            "PartitionKey": BREAKGLASS,
            "RowKey": ACTIVATION,
            "ActionId": activation.action_id,
            "Active": activation.active,
            "ExpiresAt": activation.expires_at.isoformat() if activation.expires_at else "",
            "Enabled": json.dumps(list(activation.enabled)),
            "Exclusions": json.dumps({p: list(u) for p, u in activation.exclusions.items()}),
        }
        try:
            if not activation.etag:
                stored = await self._table.create_entity(entity)
            else:
                stored = await self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=activation.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError):
            return None
        return str(stored["etag"])


LEASES = "lease"


class TableLeases:
    """`Leases` on the state table: a row per lease, taken over by etag once expired."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def acquire(self, name: str, holder: str, ttl: timedelta) -> bool:
        now = datetime.now(UTC)
        entity = {
            "PartitionKey": LEASES,
            "RowKey": name,
            "Holder": holder,
            "ExpiresAt": (now + ttl).isoformat(),
        }
        try:
            await self._table.create_entity(entity)
            return True
        except ResourceExistsError:
            pass
        try:
            current = await self._table.get_entity(LEASES, name)
        except ResourceNotFoundError:
            return False  # released meanwhile: the caller retries
        if datetime.fromisoformat(current["ExpiresAt"]) > now and current["Holder"] != holder:
            return False
        try:
            await self._table.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    async def release(self, name: str, holder: str) -> None:
        try:
            current = await self._table.get_entity(LEASES, name)
        except ResourceNotFoundError:
            return
        if current["Holder"] != holder:
            return
        try:
            await self._table.delete_entity(
                LEASES,
                name,
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return
