"""The simulated Graph is as strict as the real one where the docs say so: each test here pins
a row of docs/fidelity.md (the Graph sections)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.simulator import SimulatedTenant, SimUser
from tests.unit.test_simulator import ALICE, assert_graph_error, call


@pytest.fixture
def sim() -> Iterator[SimulatedTenant]:
    with SimulatedTenant() as tenant:
        tenant.add_user(SimUser(**vars(ALICE)))
        yield tenant


def subscription(resource: str, change_type: str) -> bytes:
    expires = datetime.now(UTC) + timedelta(days=1)
    return json.dumps(
        {
            "changeType": change_type,
            "notificationUrl": "https://webhook.contoso.example/api/notifications",
            "resource": resource,
            "expirationDateTime": expires.isoformat(),
            "clientState": "secret",
        }
    ).encode()


@pytest.mark.parametrize("resource", ["users", "/users", f"users/{ALICE.id}", "groups", "Groups"])
@pytest.mark.parametrize("change_type", ["created", "created,updated", "updated,created,deleted"])
def test_users_and_groups_subscriptions_refuse_created(
    sim: SimulatedTenant, resource: str, change_type: str
) -> None:
    # subscription resource type: user and group notifications support updated and deleted;
    # live answer published in microsoftgraph/microsoft-graph-docs#4819.
    status, _, body = call(sim, "POST", "/subscriptions", subscription(resource, change_type))
    assert status == 400
    assert_graph_error(body, "InvalidRequest")
    assert body["error"]["message"] == "Invalid 'changeType' attribute: 'created'."
    assert sim.subscriptions == []


def test_a_new_user_is_delivered_as_updated_with_its_creation_time(sim: SimulatedTenant) -> None:
    newcomer = SimUser(
        id="3b9e7c1d-2f4a-4d6b-8e0c-5a7f9b1d3e2c", user_principal_name="n@x.y", display_name="N"
    )
    sim.create_user(newcomer)
    status, _, body = call(sim, "GET", f"/users/{newcomer.id}")
    assert status == 200 and body["createdDateTime"].endswith("Z")
    status, _, body = call(sim, "GET", f"/users/{ALICE.id}")
    assert body["createdDateTime"] is None  # accounts from before 2018 carry none
