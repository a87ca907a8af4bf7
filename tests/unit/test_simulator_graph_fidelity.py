"""The simulated Graph is as strict as the real one where the docs say so: each test here pins
a row of docs/fidelity.md (the Graph sections)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.actions.ip_blocks import LOCATION_PLACEHOLDER
from shared.adapters.graph import GraphDirectory
from shared.simulator import SimulatedTenant, SimUser
from tests.conftest import sdk_client
from tests.unit.test_simulator import ALICE, assert_graph_error, call


@pytest.fixture
def sim() -> Iterator[SimulatedTenant]:
    with SimulatedTenant(named_location_writes_per_second=None) as tenant:
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


LOCATIONS = "/identity/conditionalAccess/namedLocations"


def ip_location(*cidrs: str) -> bytes:
    return json.dumps(
        {
            "@odata.type": "#microsoft.graph.ipNamedLocation",
            "displayName": "M365 Responder sign-in block 01",
            "isTrusted": False,
            "ipRanges": [
                {
                    "@odata.type": "#microsoft.graph.iPv6CidrRange"
                    if ":" in cidr
                    else "#microsoft.graph.iPv4CidrRange",
                    "cidrAddress": cidr,
                }
                for cidr in cidrs
            ],
        }
    ).encode()


@pytest.mark.parametrize(
    "cidr",
    [
        "255.255.255.255/32",  # limited broadcast: the product's former placeholder
        "10.20.0.0/16",
        "172.16.5.0/24",
        "192.168.1.1/32",
        "127.0.0.1/32",
        "169.254.10.0/24",
        "100.64.0.0/10",
        "192.0.2.0/24",  # TEST-NET-1
        "198.51.100.3/32",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "198.18.0.0/15",
        "224.0.0.1/32",
        "240.1.0.0/16",
        "172.0.0.0/9",  # public at both ends, private 172.16.0.0/12 inside
        "2001:db8::/48",
        "fe80::/64",
        "fd00::/16",
        "::1/128",
        "4000::/16",  # outside global unicast 2000::/3
    ],
)
def test_named_locations_take_public_ranges_only(sim: SimulatedTenant, cidr: str) -> None:
    # concept-assignment-network: "One or more public IP ranges".
    status, _, body = call(sim, "POST", LOCATIONS, ip_location(cidr))
    assert status == 400
    assert_graph_error(body, "BadRequest")
    assert "not a public IP range" in body["error"]["message"]
    assert sim.named_locations == []


@pytest.mark.parametrize("cidr", ["52.96.10.0/24", "2a01:111::/48", "40.0.0.0/9"])
def test_public_ranges_are_taken(sim: SimulatedTenant, cidr: str) -> None:
    status, _, _ = call(sim, "POST", LOCATIONS, ip_location(cidr))
    assert status == 201


async def test_the_empty_location_placeholder_is_a_range_entra_takes(
    sim: SimulatedTenant,
) -> None:
    client, http_client = sdk_client(sim)
    async with http_client:
        directory = GraphDirectory(client)
        location_id = await directory.create_ip_location("sign-in block", [LOCATION_PLACEHOLDER])
        await directory.set_ip_location_ranges(location_id, ["52.96.10.0/24"])
        await directory.set_ip_location_ranges(location_id, [LOCATION_PLACEHOLDER])
    [stored] = sim.named_locations
    assert [r["cidrAddress"] for r in stored["ipRanges"]] == [LOCATION_PLACEHOLDER]
