"""Which alert versions of a batch were handled, on Azurite (`StateTable.handled_among`): new
versions are checked by inserting their pending marks in one transaction per 100; a batch with
one handled version lands nothing and reads each; a pending mark is not a handled one, so a
batch that failed before its commit is handled again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from drill.azurite import Azurite
from shared.container import Container
from shared.ingest import normalize
from shared.simulator import SimulatedTenant
from tests.conftest import installed, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def counted(
    sim: SimulatedTenant, azurite: Azurite
) -> AsyncIterator[tuple[Container, list[str]]]:
    requests: list[str] = []

    def count(response: Any) -> None:
        request = response.http_request
        requests.append(f"{request.method} {request.url.split('?')[0].rsplit('/', 1)[-1]}")

    services = Container(settings_for(sim, azurite), storage_hook=count)
    await services.prepare()
    try:
        yield services, requests
    finally:
        await services.close()


async def test_new_versions_are_checked_in_one_transaction_per_hundred(
    counted: tuple[Container, list[str]],
) -> None:
    services, requests = counted
    versions = [(f"alert-{n}", "v1") for n in range(150)]
    requests.clear()
    handled = await services.state.handled_among([*versions, versions[0]])
    assert handled == [False] * 151
    assert requests == ["POST $batch"] * 2
    # Pending marks are not handled marks: every version is still to be handled.
    assert not any([await services.state.is_handled(*v) for v in versions[:3]])
    await services.state.mark_sent(handled=versions)
    assert await services.state.handled_among(versions) == [True] * 150
    assert all([await services.state.is_handled(*v) for v in versions[:3]])


async def test_a_batch_holding_a_handled_version_is_read_version_by_version(
    counted: tuple[Container, list[str]],
) -> None:
    services, requests = counted
    await services.state.mark_sent(handled=[("alert-2", "v1")])
    requests.clear()
    versions = [("alert-1", "v1"), ("alert-2", "v1"), ("alert-2", "v2")]
    assert await services.state.handled_among(versions) == [False, True, False]
    # The transaction landed nothing, then each was read.
    assert requests[0] == "POST $batch" and len(requests) == 4
    assert all(r.startswith("GET ") for r in requests[1:])
    # No pending mark was left: a batch of alert-1 and a new version meets no row.
    requests.clear()
    assert await services.state.handled_among([("alert-1", "v1"), ("alert-3", "v1")]) == [
        False,
        False,
    ]
    assert requests == ["POST $batch"]


async def test_a_single_version_is_read_without_a_write(
    counted: tuple[Container, list[str]],
) -> None:
    services, requests = counted
    requests.clear()
    assert await services.state.handled_among([("alert-1", "v1")] * 2) == [False, False]
    assert len(requests) == 1 and requests[0].startswith("GET ")


def storm_page(*alert_ids: str) -> dict[str, Any]:
    return {
        "value": [
            {
                "@odata.type": "#microsoft.graph.security.alert",
                "id": alert_id,
                "title": "Unusual volume of inbound mail from a single source",
                "severity": "medium",
                "category": "Impact",
                "serviceSource": "microsoftDefenderForOffice365",
                "lastUpdateDateTime": "2026-12-01T00:10:00.000Z",
                "createdDateTime": "2026-12-01T00:10:00.000Z",
                "evidence": [
                    {
                        "@odata.type": "#microsoft.graph.security.ipEvidence",
                        "ipAddress": f"185.220.101.{n + 1}",
                        "roles": ["attacker"],
                        "verdict": "malicious",
                    }
                ],
            }
            for n, alert_id in enumerate(alert_ids)
        ]
    }


async def test_a_batch_that_failed_before_its_commit_is_handled_again(
    sim: SimulatedTenant, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with installed(settings_for(sim, azurite)) as services:
        alerts = normalize(storm_page("da-1", "da-2", "da-3"))
        assert len(alerts) == 3
        commit = services.outbox.commit

        async def crash(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("the worker died before the commit")

        monkeypatch.setattr(services.outbox, "commit", crash)
        with pytest.raises(ConnectionError):
            await services.intake.handle_many(alerts)
        monkeypatch.setattr(services.outbox, "commit", commit)
        again = await services.intake.handle_many(alerts)
        assert [r.duplicate_alert for r in again] == [False] * 3
        # Handled again: its claims, made by the failed attempt and still leased, coalesce
        # (the reconciler sends them once the lease ends).
        assert all(r.queued or r.coalesced for r in again), [r.as_dict() for r in again]
        replayed = await services.intake.handle_many(alerts)
        assert [r.duplicate_alert for r in replayed] == [True] * 3
