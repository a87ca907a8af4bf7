"""Closed, resolved and false- or benign-positive alerts plan nothing by default, whatever
source they come from; the plan says why, and a playbook rule may opt in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.config import DEFAULT_PLAYBOOK, PolicySettings
from shared.errors import ConfigError
from shared.ingest import normalize
from shared.models import ActionKind, Alert
from shared.policy import Guards, Playbook, Policy, closed_reason

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alerts"
ADELE_ID = "87d349ed-44d7-43e1-9a83-5f2406dee5bd"


def load(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def policy(playbook: Path = DEFAULT_PLAYBOOK) -> Policy:
    return Policy(Playbook.load(playbook), Guards.from_settings(PolicySettings()))


def only(payload: object) -> Alert:
    [alert] = normalize(payload)
    return alert


def graph(**fields: Any) -> dict[str, Any]:
    return {**load("graph_alert_compromised_user"), **fields}


def sentinel_incident(**properties: Any) -> dict[str, Any]:
    payload = load("sentinel_incident")
    payload["object"]["properties"].update(properties)
    return payload


def sentinel_alert(**fields: Any) -> dict[str, Any]:
    return {**load("sentinel_alert"), **fields}


def generic(**fields: Any) -> dict[str, Any]:
    return {**load("generic_alert"), **fields}


def graph_incident(status: str, classification: str) -> dict[str, Any]:
    """An incident listed with $expand=alerts whose own alert is still new and unclassified."""
    alert = graph(status="new", classification="unknown")
    return {
        "@odata.type": "#microsoft.graph.security.incident",
        "id": "28282",
        "status": status,
        "classification": classification,
        "alerts": [alert],
    }


OPEN = [
    ("graph new", graph(status="new", classification="truePositive")),
    ("graph inProgress", graph(status="inProgress", classification="unknown")),
    ("sentinel incident active", sentinel_incident(status="Active", classification=None)),
    ("sentinel incident true positive", sentinel_incident(classification="TruePositive")),
    ("sentinel alert new", sentinel_alert(Status="New")),
    ("generic new", generic(status="new")),
    ("graph incident active", graph_incident("active", "truePositive")),
]
CLOSED = [
    ("graph resolved", graph(status="resolved"), "alert status is resolved"),
    ("graph false positive", graph(classification="falsePositive"), "classified falsePositive"),
    (
        "graph expected activity",
        graph(classification="informationalExpectedActivity"),
        "classified informationalExpectedActivity",
    ),
    ("sentinel incident closed", sentinel_incident(status="Closed"), "alert status is Closed"),
    (
        "sentinel incident false positive",
        sentinel_incident(status="Active", classification="FalsePositive"),
        "classified FalsePositive",
    ),
    (
        "sentinel incident benign positive",
        sentinel_incident(status="Active", classification="BenignPositive"),
        "classified BenignPositive",
    ),
    ("sentinel alert resolved", sentinel_alert(Status="Resolved"), "alert status is Resolved"),
    ("sentinel alert dismissed", sentinel_alert(Status="Dismissed"), "alert status is Dismissed"),
    ("generic resolved", generic(status="RESOLVED"), "alert status is RESOLVED"),
    ("generic false positive", generic(classification="falsePositive"), "falsePositive"),
    (
        "graph incident resolved",
        graph_incident("resolved", "unknown"),
        "alert status is resolved",
    ),
    (
        "graph incident false positive",
        graph_incident("active", "falsePositive"),
        "classified falsePositive",
    ),
]


@pytest.mark.parametrize("payload", [case[1] for case in OPEN], ids=[case[0] for case in OPEN])
def test_open_alerts_plan_their_actions(payload: dict[str, Any]) -> None:
    alert = only(payload)
    assert closed_reason(alert) is None
    plan = policy().plan(alert)
    assert ActionKind.DISABLE_ACCOUNT in {action.kind for action in plan.actions}


@pytest.mark.parametrize(
    ("payload", "reason"), [case[1:] for case in CLOSED], ids=[case[0] for case in CLOSED]
)
def test_closed_or_benign_alerts_plan_nothing_and_say_why(
    payload: dict[str, Any], reason: str
) -> None:
    alert = only(payload)
    plan = policy().plan(alert)

    assert plan.actions == []
    assert plan.skipped, "the plan says why nothing was planned"
    assert all(reason in skipped.reason for skipped in plan.skipped)
    assert {skipped.entity for skipped in plan.skipped} == {alert.key}


def test_an_incident_s_alerts_keep_their_own_closing_status() -> None:
    incident = graph_incident("active", "unknown")
    incident["alerts"][0]["status"] = "resolved"
    alert = only(incident)
    assert alert.status == "resolved" and policy().plan(alert).actions == []


OPT_IN = """
version = 1

[[rules]]
name = "contain-even-when-closed"
severities = ["high"]
include_closed = true
actions = ["disable_account"]

[rules.entities]
kind = "user"
roles = ["compromised"]
"""


def test_a_rule_may_opt_in_to_closed_alerts(tmp_path: Path) -> None:
    playbook = tmp_path / "playbook.toml"
    playbook.write_text(OPT_IN)
    alert = only(graph(status="resolved", classification="falsePositive"))

    plan = policy(playbook).plan(alert)

    assert [(a.kind, a.target) for a in plan.actions] == [(ActionKind.DISABLE_ACCOUNT, ADELE_ID)]
    assert plan.skipped == []


def test_the_opt_in_is_validated(tmp_path: Path) -> None:
    playbook = tmp_path / "playbook.toml"
    playbook.write_text(OPT_IN.replace("include_closed = true", 'include_closed = "yes"'))
    with pytest.raises(
        ConfigError, match=r"rule '[^']+' include_closed: Input should be a valid boolean"
    ):
        Playbook.load(playbook)


def test_the_shipped_playbook_does_not_opt_in() -> None:
    assert not any(rule.include_closed for rule in Playbook.load(DEFAULT_PLAYBOOK).rules)


def test_a_playbook_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    playbook = tmp_path / "playbook.toml"
    playbook.write_bytes(b"\xed\xa0\x80" + OPT_IN.encode())
    with pytest.raises(ConfigError, match="not UTF-8 at byte 0"):
        Playbook.load(playbook)
