"""Tests of the alert normalizers against recorded-style payloads, odd shapes and junk."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import InvalidInput
from shared.ingest import (
    normalize,
    normalize_generic,
    normalize_graph_alert,
    normalize_graph_alert_list,
    normalize_sentinel,
)
from shared.models import Alert, AlertSource, Entity, EntityKind, Severity

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "alerts"
FORMATS_DOC = ROOT / "docs" / "alert-formats.md"
FIXTURE_NAMES = sorted(path.stem for path in FIXTURES.glob("*.json"))

ADELE_ID = "87d349ed-44d7-43e1-9a83-5f2406dee5bd"
ADELE_UPN = "adele.vance@contoso.onmicrosoft.com"
ADELE_MAILBOX = "adele.vance@contoso.com"


def load(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def only(payload: object) -> Alert:
    alerts = normalize(payload)
    assert len(alerts) == 1
    return alerts[0]


def test_graph_alert_for_a_compromised_user() -> None:
    alert = only(load("graph_alert_compromised_user"))

    assert alert.source is AlertSource.GRAPH_ALERTS_V2
    assert alert.key == "graph_alerts_v2:da637551227677560813_-961444813"
    assert alert.version == "2024-05-01T10:05:12.5566778Z"
    assert alert.updated_at == datetime(2024, 5, 1, 10, 5, 12, 556677, tzinfo=UTC)
    assert alert.created_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert alert.severity is Severity.HIGH
    assert (alert.title, alert.category, alert.status) == (
        "Suspicious inbox forwarding rule",
        "Exfiltration",
        "new",
    )
    assert alert.provider == "microsoftDefenderForCloudApps"
    assert alert.incident_id == "28282"
    assert alert.entities == [
        Entity(
            kind=EntityKind.USER,
            user_id=ADELE_ID,
            upn=ADELE_UPN,
            display_name="Adele Vance",
            roles=("compromised",),
            verdict="malicious",
        ),
        Entity(
            kind=EntityKind.IP, address="203.0.113.45", roles=("attacker",), verdict="suspicious"
        ),
        Entity(
            kind=EntityKind.MAILBOX,
            mailbox=ADELE_MAILBOX,
            user_id=ADELE_ID,
            upn=ADELE_UPN,
            display_name="Adele Vance",
            verdict="suspicious",
        ),
        Entity(
            kind=EntityKind.OTHER,
            raw_type="#microsoft.graph.security.processEvidence",
            verdict="nothreatsfound",
        ),
    ]


def test_graph_alert_keeps_unmapped_fields_in_extra() -> None:
    alert = only(load("graph_alert_compromised_user"))

    assert alert.extra["mitreTechniques"] == ["T1114.003"]
    assert alert.extra["detectionSource"] == "microsoftDefenderForCloudApps"
    assert alert.classification == ""  # null in the payload
    assert "evidence" not in alert.extra
    assert "title" not in alert.extra


def test_graph_list_response_yields_every_alert() -> None:
    alerts = normalize(load("graph_alert_list"))

    assert [alert.alert_id for alert in alerts] == [
        "fa8d3b7e21-9c4a-4f0e-8d1b-2a6c5e9f7b30",
        "caa3f19b5d-0e42-4c7a-b1f8-6d2e9a3c7f15",
    ]
    assert [alert.severity for alert in alerts] == [Severity.MEDIUM, Severity.LOW]
    assert alerts[0].entities[0].upn == "megan.bowen@contoso.onmicrosoft.com"
    assert alerts[1].entities[0].kind is EntityKind.MAILBOX
    assert alerts[1].entities[1].raw_type == "#microsoft.graph.security.urlEvidence"
    assert normalize_graph_alert_list(load("graph_alert_list")) == alerts


def test_graph_empty_list_page_yields_no_alerts() -> None:
    assert (
        normalize({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata", "value": []})
        == []
    )


def test_graph_sparse_and_odd_values_do_not_fail() -> None:
    alert = only(load("graph_alert_sparse"))
    sid_only, link_local, pod, bare = alert.entities

    assert alert.severity is Severity.UNKNOWN  # "Critical" is no Graph severity
    assert alert.status == "New"
    assert alert.incident_id == "28300"
    assert alert.created_at == datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert alert.updated_at == datetime(2024, 5, 1, 10, 15, 30, 999999, tzinfo=UTC)
    assert alert.title.endswith("\ufffd")
    assert alert.extra["customerImpact"] == {"scope": "unknown"}
    assert sid_only == Entity(kind=EntityKind.USER, roles=("compromised",), verdict="malicious")
    assert link_local.address == "fe80::1c3b:7aff:fe21:9d04"
    assert pod.kind is EntityKind.OTHER
    assert pod.raw_type == "#microsoft.graph.security.kubernetesPodEvidence"
    assert pod.roles == ("contextual",)
    assert bare == Entity(kind=EntityKind.USER)


def test_graph_alert_is_detected_without_odata_type() -> None:
    payload = load("graph_alert_compromised_user")
    del payload["@odata.type"]
    declared = normalize_graph_alert(load("graph_alert_compromised_user"))
    detected = only(payload)
    assert detected.source is AlertSource.GRAPH_ALERTS_V2
    assert detected.entities == declared.entities

    minimal = {"id": "da638500000000000000_1", "detectionSource": "antivirus"}
    assert only(minimal).provider == "antivirus"


def test_sentinel_incident_from_automation_rule() -> None:
    alert = only(load("sentinel_incident"))

    assert alert.source is AlertSource.SENTINEL
    assert alert.alert_id.endswith("/Incidents/3f6c1a2b-9d8e-4f7a-b6c5-d4e3f2a1b0c9")
    assert alert.incident_id == "4711"
    assert alert.severity is Severity.HIGH
    assert alert.status == "New"
    assert alert.title == "Sign-in from anonymous IP followed by mailbox forwarding rule"
    assert alert.version == "2024-05-01T10:06:14.0861192Z"
    assert alert.updated_at == datetime(2024, 5, 1, 10, 6, 14, 86119, tzinfo=UTC)
    assert alert.provider == "Azure Sentinel"
    assert alert.entities == [
        Entity(kind=EntityKind.USER, user_id=ADELE_ID, upn=ADELE_UPN, display_name="Adele Vance"),
        Entity(kind=EntityKind.IP, address="185.220.101.47"),
        Entity(
            kind=EntityKind.MAILBOX,
            mailbox=ADELE_MAILBOX,
            upn=ADELE_UPN,
            user_id=ADELE_ID,
            display_name="Adele Vance",
        ),
        Entity(kind=EntityKind.OTHER, raw_type="CloudApplication"),
    ]
    assert alert.extra["objectEventType"] == "Create"
    assert alert.extra["additionalData"]["alertsCount"] == 1
    assert alert.extra["name"] == "3f6c1a2b-9d8e-4f7a-b6c5-d4e3f2a1b0c9"


def test_sentinel_incident_version_and_id_fallbacks() -> None:
    payload = load("sentinel_incident")
    incident = payload["object"]
    del incident["properties"]["lastModifiedTimeUtc"]
    incident["id"] = "/subscriptions/" + "x" * 300  # long resource group and workspace names

    alert = only(payload)
    assert alert.alert_id == "3f6c1a2b-9d8e-4f7a-b6c5-d4e3f2a1b0c9"
    assert alert.version == '"1a00b2c3-0000-0d00-0000-6632112a0000"'
    assert alert.extra["id"] == incident["id"]

    del incident["etag"], incident["id"]
    assert only(payload).version == ""


def test_sentinel_account_upn_variants() -> None:
    payload = load("sentinel_incident")
    entities = payload["object"]["properties"]["relatedEntities"]
    entities[0]["properties"] = {"accountName": ADELE_UPN, "upnSuffix": "contoso.onmicrosoft.com"}
    entities[1] = {"kind": "Account", "properties": {"userPrincipalName": ADELE_UPN}}
    entities[2] = {
        "kind": "Account",
        "properties": {"accountName": "adele.vance", "ntDomain": "CONTOSO"},
    }

    account_upns = [entity.upn for entity in only(payload).entities[:3]]
    assert account_upns == [ADELE_UPN, ADELE_UPN, None]


def test_sentinel_alert_with_entities_string_and_references() -> None:
    alert = only(load("sentinel_alert"))

    assert alert.source is AlertSource.SENTINEL
    assert alert.alert_id == "5e1f0a9b-8c7d-4e6f-a5b4-3c2d1e0f9a8b"
    assert alert.title == "Mailbox forwarding rule created after anonymous sign-in"
    assert alert.severity is Severity.HIGH
    assert alert.provider == "ASI Scheduled Alerts"
    assert alert.version == "2024-05-01T10:06:13.9921456Z"
    assert alert.entities == [
        Entity(kind=EntityKind.IP, address="185.220.101.47"),
        Entity(kind=EntityKind.USER, user_id=ADELE_ID, upn=ADELE_UPN, display_name="Adele Vance"),
        Entity(kind=EntityKind.OTHER, raw_type="cloud-application"),
        Entity(kind=EntityKind.OTHER, raw_type="cloud-logon-session"),
        # Defined inside the logon session, listed at the top level only as a $ref.
        Entity(kind=EntityKind.IP, address="198.51.100.23"),
        Entity(kind=EntityKind.MAILBOX, mailbox=ADELE_MAILBOX, upn=ADELE_UPN, user_id=ADELE_ID),
        # The trailing {"$ref": "4"} repeats the account and is not counted twice.
    ]
    assert alert.extra["Tactics"] == "InitialAccess,Collection"


def test_sentinel_alert_with_entities_list_from_logic_app() -> None:
    payload = load("sentinel_alert")
    payload["Entities"] = json.loads(payload["Entities"])

    assert normalize_sentinel(payload) == only(load("sentinel_alert"))


@pytest.mark.parametrize("entities", [None, "", "null", "[]", []])
def test_sentinel_alert_without_entities(entities: object) -> None:
    payload = load("sentinel_alert")
    payload["Entities"] = entities

    assert only(payload).entities == []


def test_generic_alert() -> None:
    alert = only(load("generic_alert"))

    assert alert.source is AlertSource.GENERIC
    assert alert.key == "generic:splunk-notable-7f3c2a91"
    assert alert.severity is Severity.HIGH
    assert alert.incident_id == "SOC-2024-0511"
    assert alert.version == "2024-05-01T10:07:00Z"
    assert alert.updated_at == datetime(2024, 5, 1, 10, 7, tzinfo=UTC)
    assert alert.entities == [
        Entity(
            kind=EntityKind.USER,
            user_id=ADELE_ID,
            upn=ADELE_UPN,
            display_name="Adele Vance",
            roles=("compromised",),
            verdict="malicious",
        ),
        Entity(
            kind=EntityKind.IP, address="185.220.101.47", roles=("attacker",), verdict="suspicious"
        ),
        Entity(kind=EntityKind.MAILBOX, mailbox=ADELE_MAILBOX, upn=ADELE_UPN),
        Entity(kind=EntityKind.OTHER, display_name="LAPTOP-ADELE-01", raw_type="device"),
    ]
    assert alert.extra == {
        "urgency": "critical",
        "search_name": "Identity - Impossible Travel - Rule",
    }
    assert normalize_generic(load("generic_alert")) == alert


def test_generic_alert_minimal() -> None:
    alert = only({"id": "drill-0001", "entities": [{"kind": "USER", "upn": ADELE_UPN}]})

    assert alert.severity is Severity.UNKNOWN
    assert alert.entities == [Entity(kind=EntityKind.USER, upn=ADELE_UPN)]


def test_documented_examples_normalize() -> None:
    doc = FORMATS_DOC.read_text(encoding="utf-8")
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", doc, re.DOTALL)]

    sources = [alert.source for example in examples for alert in normalize(example)]
    assert sources == [
        AlertSource.GRAPH_ALERTS_V2,
        AlertSource.GRAPH_ALERTS_V2,  # the incident's alert
        AlertSource.SENTINEL,
        AlertSource.SENTINEL,
        AlertSource.SENTINEL,  # the SecurityAlert row
        AlertSource.GENERIC,
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T10:00:00.1234567Z", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00.5Z", datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        (
            "2024-05-01T12:00:00.1234567+02:00",
            datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
    ],
)
def test_timestamps(text: str, expected: datetime) -> None:
    payload = {"id": "da638500000000000000_1", "serviceSource": "x", "createdDateTime": text}
    assert only(payload).created_at == expected


def _without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in payload.items() if name != key}


BAD_INPUTS: list[tuple[str, object, str]] = [
    ("not an object", "alert", "alert payload must be a JSON object, got string"),
    ("list", [{"id": "a", "entities": []}], "alert payload must be a JSON object, got array"),
    ("null", None, "alert payload must be a JSON object, got null"),
    (
        "graph list of non-objects",
        {"value": ["da637551227677560813_-961444813", 7]},
        "list page: value[0] must be a JSON object, got string",
    ),
    (
        "graph alert missing id",
        _without(load("graph_alert_compromised_user"), "id"),
        "graph alert: id is missing",
    ),
    (
        "graph evidence not a list",
        {**load("graph_alert_compromised_user"), "evidence": {"roles": []}},
        "graph alert 'da637551227677560813_-961444813': evidence must be an array, got object",
    ),
    (
        "graph evidence item not an object",
        {"id": "a1", "evidence": [{}, "userEvidence"]},
        "graph alert 'a1': evidence[1] must be a JSON object, got string",
    ),
    (
        "graph userAccount not an object",
        {
            "id": "a1",
            "evidence": [
                {
                    "@odata.type": "#microsoft.graph.security.userEvidence",
                    "userAccount": [ADELE_UPN],
                }
            ],
        },
        "graph alert 'a1': evidence[0]: userAccount must be a JSON object, got array",
    ),
    (
        "graph upn not a string",
        {
            "id": "a1",
            "evidence": [
                {
                    "@odata.type": "#microsoft.graph.security.userEvidence",
                    "userAccount": {"userPrincipalName": {"value": ADELE_UPN}},
                }
            ],
        },
        "evidence[0]: userAccount.userPrincipalName must be a string, got object",
    ),
    (
        "graph role not a string",
        {"id": "a1", "evidence": [{"roles": ["compromised", None]}]},
        "graph alert 'a1': evidence[0]: roles[1] must be a string, got null",
    ),
    (
        "graph bad timestamp",
        {"id": "a1", "evidence": [], "lastUpdateDateTime": "yesterday"},
        "graph alert 'a1': lastUpdateDateTime is not an ISO 8601 date-time: 'yesterday'",
    ),
    (
        "graph id too long",
        {"id": "a" * 300, "evidence": []},
        "alert_id: String should have at most 256 characters",
    ),
    (
        "generic missing id",
        _without(load("generic_alert"), "id"),
        "generic alert: id: Field required",
    ),
    (
        "generic entities not a list",
        {"id": "splunk-1", "entities": {"kind": "user"}},
        "generic alert: entities: Input should be a valid list",
    ),
    (
        "generic entity without kind",
        {"id": "splunk-1", "entities": [{"kind": "ip", "address": "1.2.3.4"}, {"upn": ADELE_UPN}]},
        "generic alert: entities[1].kind: Field required",
    ),
    (
        "generic wrong source",
        {"source": "sentinel", "id": "splunk-1", "entities": []},
        "generic alert: source: Input should be 'generic'",
    ),
    (
        "generic bad timestamp",
        {"id": "splunk-1", "entities": [], "created_at": "01/05/2024"},
        "generic alert: created_at: Value error",
    ),
    (
        "sentinel alert missing id",
        {**load("sentinel_alert"), "SystemAlertId": None},
        "sentinel alert: SystemAlertId is missing",
    ),
    (
        "sentinel Entities broken JSON",
        {**load("sentinel_alert"), "Entities": '[{"$id":"3","Address":"185.220.101.47",'},
        "sentinel alert '5e1f0a9b-8c7d-4e6f-a5b4-3c2d1e0f9a8b': Entities is not valid JSON",
    ),
    (
        "sentinel Entities JSON not a list",
        {**load("sentinel_alert"), "Entities": '{"Type": "account"}'},
        "Entities must be an array, got object",
    ),
    (
        "sentinel Entities nested too deeply",
        {**load("sentinel_alert"), "Entities": "[" * 100_000},
        "Entities is nested too deeply",
    ),
    (
        "sentinel dangling reference",
        {**load("sentinel_alert"), "Entities": [{"$id": "1", "Type": "ip"}, {"$ref": "9"}]},
        "Entities[1]: $ref '9' names no entity",
    ),
    (
        "sentinel reference cycle",
        {
            **load("sentinel_alert"),
            "Entities": [{"$id": "1", "$ref": "2"}, {"$id": "2", "$ref": "1"}],
        },
        "Entities[0]: $ref '2' names no entity",
    ),
    (
        "sentinel entity not an object",
        {
            "objectSchemaType": "Incident",
            "object": {"name": "3f6c1a2b", "properties": {"relatedEntities": [{}, 42]}},
        },
        "sentinel incident '3f6c1a2b': relatedEntities[1] must be a JSON object, got number",
    ),
    (
        "sentinel incident without properties",
        {"objectSchemaType": "Incident", "object": {"name": "3f6c1a2b"}},
        "sentinel incident: object.properties must be a JSON object, got null",
    ),
    (
        "sentinel incident without id",
        {"object": {"properties": {"incidentNumber": 4711}}},
        "sentinel incident: object.id and object.name are both missing",
    ),
    (
        "unknown shape",
        {"alertId": "x", "user": ADELE_UPN},
        "unrecognized alert payload",
    ),
    ("empty object", {}, "got keys: none"),
]


@pytest.mark.parametrize(
    ("payload", "message"),
    [pytest.param(payload, message, id=name) for name, payload, message in BAD_INPUTS],
)
def test_bad_input_is_invalid_input_with_a_useful_message(payload: object, message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        normalize(payload)

    assert message in str(raised.value)


def test_unknown_shape_message_names_the_keys() -> None:
    with pytest.raises(InvalidInput, match=r"got keys: 'alertId', 'user'\); accepted: a Graph"):
        normalize({"user": ADELE_UPN, "alertId": "x"})


# Linear work on 10,000 entities takes well under a second; quadratic work takes minutes.
SIZE = 10_000


def _graph_with_many_evidence() -> dict[str, Any]:
    evidence = [
        {
            "@odata.type": "#microsoft.graph.security.ipEvidence",
            "roles": ["attacker"],
            "ipAddress": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
        }
        for i in range(SIZE)
    ]
    return {"id": "da638500000000000000_1", "evidence": evidence}


def _sentinel_with_many_references() -> dict[str, Any]:
    sessions = [
        {"$id": str(i), "Account": {"$id": f"a{i}", "Name": f"user{i}", "Type": "account"}}
        for i in range(SIZE)
    ]
    references = [{"$ref": f"a{i}"} for i in range(SIZE)]
    return {"SystemAlertId": "5e1f0a9b", "Entities": json.dumps(sessions + references)}


def _generic_with_many_entities() -> dict[str, Any]:
    entities = [{"kind": "user", "upn": f"user{i}@contoso.com"} for i in range(SIZE)]
    return {"id": "bulk-1", "entities": entities}


@pytest.mark.parametrize(
    ("payload", "count"),
    [
        (_graph_with_many_evidence(), SIZE),
        (_sentinel_with_many_references(), 2 * SIZE),
        (_generic_with_many_entities(), SIZE),
        ({"value": [{"id": f"da6385_{i}", "evidence": [{}]} for i in range(SIZE)]}, SIZE),
    ],
    ids=["graph", "sentinel", "generic", "graph-list"],
)
def test_ten_thousand_entities_are_fine(payload: dict[str, Any], count: int) -> None:
    alerts = normalize(payload)

    assert sum(len(alert.entities) for alert in alerts) == count


def test_long_reference_chains_are_refused_in_linear_time() -> None:
    chain = [{"$id": str(i), "$ref": str(i + 1)} for i in range(SIZE)]
    with pytest.raises(InvalidInput, match=r"Entities\[0\]: \$ref '1' names no entity"):
        normalize({"SystemAlertId": "5e1f0a9b", "Entities": chain})


def test_cyclic_python_structures_do_not_hang() -> None:
    session: dict[str, Any] = {"$id": "1", "Type": "cloud-logon-session"}
    session["Self"] = session
    alert = only({"SystemAlertId": "5e1f0a9b", "Entities": [session, {"$ref": "1"}]})

    assert alert.entities == [Entity(kind=EntityKind.OTHER, raw_type="cloud-logon-session")]


# Property tests: whatever the payload, the result is alerts or InvalidInput, never a crash.

SHAPE_KEYS = [
    "@odata.type",
    "id",
    "evidence",
    "value",
    "serviceSource",
    "detectionSource",
    "userAccount",
    "roles",
    "verdict",
    "object",
    "properties",
    "relatedEntities",
    "kind",
    "SystemAlertId",
    "Entities",
    "$id",
    "$ref",
    "Type",
    "entities",
    "source",
]
SHAPE_TEXTS = [
    "#microsoft.graph.security.alert",
    "#microsoft.graph.security.userEvidence",
    "#microsoft.graph.security.ipEvidence",
    "#microsoft.graph.security.mailboxEvidence",
    "generic",
    "Account",
    "account",
    "Ip",
    "mailbox",
    "user",
    "2024-05-01T10:00:00.1234567Z",
    "1",
    ADELE_UPN,
    ADELE_ID,
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(SHAPE_TEXTS)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(SHAPE_KEYS) | st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=25,
)
json_objects = st.dictionaries(st.sampled_from(SHAPE_KEYS) | st.text(max_size=10), json_values)


def _assert_alerts_or_invalid_input(payload: object) -> None:
    try:
        alerts = normalize(payload)
    except InvalidInput:
        return
    assert isinstance(alerts, list)
    assert all(isinstance(alert, Alert) for alert in alerts)


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    children: list[tuple[Any, Any]]
    if isinstance(document, dict):
        children = list(document.items())
    elif isinstance(document, list):
        children = list(enumerate(document))
    else:
        return paths
    for key, child in children:
        paths.extend(_paths(child, (*prefix, key)))
    return paths


def _fixture_variants() -> list[Any]:
    variants = [load(name) for name in FIXTURE_NAMES]
    decoded = load("sentinel_alert")
    decoded["Entities"] = json.loads(decoded["Entities"])
    return [*variants, decoded]


VARIANTS = _fixture_variants()


@st.composite
def mutated_shapes(draw: st.DrawFn) -> object:
    """A real payload with a few values replaced by junk or keys removed."""
    document = copy.deepcopy(draw(st.sampled_from(VARIANTS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        # The root is left out: replacing it is what the arbitrary-JSON test already does.
        paths = _paths(document)[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    entities = document.get("Entities") if isinstance(document, dict) else None
    if isinstance(entities, list) and draw(st.booleans()):
        document["Entities"] = json.dumps(entities)
    return document


@settings(max_examples=300, deadline=None, database=None)
@given(json_values | json_objects)
def test_arbitrary_json_yields_alerts_or_invalid_input(payload: object) -> None:
    _assert_alerts_or_invalid_input(payload)


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_shapes())
def test_mutated_real_payloads_yield_alerts_or_invalid_input(payload: object) -> None:
    _assert_alerts_or_invalid_input(payload)
