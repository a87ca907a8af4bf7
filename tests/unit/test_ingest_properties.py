"""Properties of every normalizer and of the playbook loader: whatever JSON (or TOML) comes in,
the result is alerts (or a playbook) or InvalidInput (ConfigError), never another exception;
and every alert that comes out is bounded and free of lone surrogates, so it can be written to
the audit trail, the state table and the queue."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config import DEFAULT_PLAYBOOK
from shared.errors import ConfigError, InvalidInput
from shared.ingest import (
    normalize,
    normalize_generic,
    normalize_graph_alert,
    normalize_graph_alert_list,
    normalize_graph_incident,
    normalize_sentinel,
)
from shared.ingest.defender_stream import StreamBatch, normalize_stream_alert
from shared.models import MAX_ENTITY_ID, MAX_ID, MAX_TEXT, Alert
from shared.policy import Playbook

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts" / "alerts"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alerts"

SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
KEYS = [
    "@odata.type", "id", "value", "evidence", "alerts", "serviceSource", "providerAlertId",
    "userAccount", "azureAdUserId", "userPrincipalName", "roles", "verdict", "ipAddress",
    "object", "objectSchemaType", "properties", "relatedEntities", "kind", "incidentNumber",
    "SystemAlertId", "AlertName", "AlertSeverity", "DisplayName", "Entities", "Type", "$id",
    "$ref", "entities", "source", "incident_id", "version", "title", "status", "classification",
    "tables", "columns", "rows", "name", "records", "category", "AlertId", "Title", "Severity",
    "EntityType", "AccountObjectId", "RemoteIP",
]  # fmt: skip
TEXTS = [
    "#microsoft.graph.security.alert", "#microsoft.graph.security.incident",
    "#microsoft.graph.security.userEvidence", "#microsoft.graph.security.ipEvidence",
    "#microsoft.graph.security.mailboxEvidence", "Incident", "SecurityAlert", "generic",
    "Account", "account", "ip", "user", "High", "high", "resolved", "falsePositive",
    "2024-05-01T10:00:00.1234567Z", "87d349ed-44d7-43e1-9a83-5f2406dee5bd",
    "adele.vance@contoso.onmicrosoft.com", "203.0.113.45", "AdvancedHunting-AlertInfo",
]  # fmt: skip

hostile_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(TEXTS),
    st.builds(
        lambda head, surrogate, tail: head + surrogate + tail,
        st.text(max_size=6) | st.sampled_from(TEXTS),
        st.sampled_from(SURROGATES),
        st.text(max_size=6),
    ),
    st.builds(lambda char, size: char * size, st.sampled_from("7a\ud800"), st.integers(0, 3000)),
)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | hostile_text, children, max_size=6)
    ),
    max_leaves=30,
)
json_objects = st.dictionaries(st.sampled_from(KEYS) | hostile_text, json_values, max_size=8)


def _real_payloads() -> list[Any]:
    paths = sorted(CONTRACTS.glob("*.json")) + sorted(FIXTURES.glob("*.json"))
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


REAL = _real_payloads()


@st.composite
def mutated_real(draw: st.DrawFn) -> Any:
    """A real payload with a few values replaced by hostile ones, at any depth."""
    document = json.loads(json.dumps(draw(st.sampled_from(REAL))))
    for _ in range(draw(st.integers(1, 4))):
        node = document
        for _ in range(draw(st.integers(0, 6))):
            children = list(node.items()) if isinstance(node, dict) else None
            if isinstance(node, list):
                children = list(enumerate(node))
            if not children:
                break
            key, child = draw(st.sampled_from(children))
            if not isinstance(child, dict | list):
                node[key] = draw(json_values)
                break
            node = child
        else:
            if isinstance(node, dict):
                node[draw(st.sampled_from(KEYS) | hostile_text)] = draw(json_values)
    return document


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def assert_safe(alerts: list[Alert]) -> None:
    """Bounded and surrogate-free: writable as UTF-8 wherever the alert goes."""
    for alert in alerts:
        assert isinstance(alert, Alert)
        json.dumps(alert.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")
        assert len(alert.alert_id) <= MAX_ID and len(alert.version) <= MAX_ID
        assert alert.incident_id is None or len(alert.incident_id) <= MAX_ID
        for text in (alert.title, alert.category, alert.status, alert.classification):
            assert len(text) <= MAX_TEXT and not _has_surrogate(text)
        assert not _has_surrogate(alert.provider) and len(alert.provider) <= MAX_TEXT
        for entity in alert.entities:
            for value in (entity.user_id, entity.upn, entity.address, entity.mailbox):
                assert value is None or len(value) <= MAX_ENTITY_ID
            for value in (entity.display_name, entity.verdict, entity.raw_type, *entity.roles):
                assert value is None or len(value) <= MAX_TEXT


def _one(normalizer: Callable[[object], Alert]) -> Callable[[object], list[Alert]]:
    return lambda payload: [normalizer(payload)]


NORMALIZERS: dict[str, Callable[[object], list[Alert]]] = {
    "normalize": normalize,
    "graph_alert": _one(normalize_graph_alert),
    "graph_alert_list": normalize_graph_alert_list,
    "graph_incident": normalize_graph_incident,
    "sentinel": _one(normalize_sentinel),
    "generic": _one(normalize_generic),
}


def check(normalizer: Callable[[object], list[Alert]], payload: object) -> None:
    try:
        alerts = normalizer(payload)
    except InvalidInput:
        return
    assert_safe(alerts)


PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", sorted(NORMALIZERS))
def test_any_json_gives_safe_alerts_or_invalid_input(name: str) -> None:
    @PROPERTY_SETTINGS
    @given(json_values | json_objects | mutated_real())
    def run(payload: object) -> None:
        check(NORMALIZERS[name], payload)

    run()


def stream_alerts(bodies: list[bytes]) -> list[Alert]:
    """The Defender stream's path without storage: batch, then join each alert's rows."""
    batch = StreamBatch()
    for body in bodies:
        batch.add_message(body)
    for row in [*batch.infos.values(), *batch.evidence]:
        json.dumps(row, ensure_ascii=False).encode("utf-8")  # what the state table stores
    alerts = []
    for alert_id in sorted(batch.alert_ids):
        info = batch.infos.get(alert_id, {"AlertId": alert_id})
        rows = [row for row in batch.evidence if row["AlertId"] == alert_id]
        try:
            alerts.append(normalize_stream_alert(info, rows, "v"))
        except InvalidInput:
            continue
    return alerts


stream_records = st.fixed_dictionaries(
    {
        "category": st.sampled_from(["AdvancedHunting-AlertInfo", "AdvancedHunting-AlertEvidence"])
        | hostile_text,
        "properties": json_objects | hostile_text,
    },
    optional={"tenantId": hostile_text},
)


@PROPERTY_SETTINGS
@given(
    st.lists(
        st.builds(
            lambda records: json.dumps({"records": records}).encode(), st.lists(stream_records)
        )
        | st.builds(lambda value: json.dumps(value).encode(), json_values)
        | st.binary(max_size=40),
        max_size=4,
    )
)
def test_any_stream_message_gives_safe_rows_and_alerts_never_an_exception(
    bodies: list[bytes],
) -> None:
    assert_safe(stream_alerts(bodies))


PLAYBOOK_TEXT = DEFAULT_PLAYBOOK.read_text(encoding="utf-8")


@st.composite
def playbook_texts(draw: st.DrawFn) -> str:
    """The shipped playbook with a slice replaced by junk, or junk alone."""
    if draw(st.booleans()):
        return draw(st.text(max_size=200))
    start = draw(st.integers(0, len(PLAYBOOK_TEXT)))
    end = draw(st.integers(start, min(len(PLAYBOOK_TEXT), start + 40)))
    junk = draw(st.sampled_from(["", "true", '"x"', "[", "]]", "=", "1e999", "\ud800", "{}"]))
    return PLAYBOOK_TEXT[:start] + junk + PLAYBOOK_TEXT[end:]


@PROPERTY_SETTINGS
@given(playbook_texts())
def test_the_playbook_loader_gives_a_playbook_or_a_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "playbook.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            playbook = Playbook.load(path)
        except ConfigError as error:
            assert str(error).startswith(f"playbook {path}")
            return
    assert playbook.rules


def test_an_incident_id_its_alerts_inherit_is_capped_like_their_own() -> None:
    incident = {
        "@odata.type": "#microsoft.graph.security.incident",
        "id": "9" * 40_000,
        "alerts": [{"id": "da637551227677560813_-961444813", "evidence": []}],
    }
    with pytest.raises(InvalidInput, match="incident_id: String should have at most 256"):
        normalize(incident)
