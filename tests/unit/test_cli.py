"""The `responder` command: plan prints JSON and runs nothing; bad input exits 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alerts"


def test_plan_prints_the_alert_and_its_actions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--alert", str(FIXTURES / "graph_alert_compromised_user.json")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["alert"]["source"] == "graph_alerts_v2"
    assert {a["kind"] for a in plan["actions"]} == {
        "disable_account",
        "revoke_sessions",
        "block_ip",
    }
    assert set(plan["actions"][0]) >= {"id", "kind", "target", "params", "decision", "reason"}


def test_plan_honours_protected_identities_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = FIXTURES / "graph_alert_compromised_user.json"
    alert = json.loads(path.read_text())
    victim = next(
        e["userAccount"]["azureAdUserId"]
        for e in alert["evidence"]
        if e["@odata.type"].endswith("userEvidence")
    )
    monkeypatch.setenv("RESPONDER_PROTECTED_IDENTITIES", victim)
    assert main(["plan", "--alert", str(path)]) == 0
    decisions = {a["decision"] for a in json.loads(capsys.readouterr().out)["actions"]}
    assert decisions == {"refused"}


def test_plan_with_another_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        'version = 1\n[[rules]]\nname = "revoke-only"\nactions = ["revoke_sessions"]\n'
        '[rules.entities]\nkind = "user"\nroles = ["compromised"]\n'
    )
    alert = str(FIXTURES / "graph_alert_compromised_user.json")
    assert main(["plan", "--alert", alert, "--policy", str(policy)]) == 0
    assert {a["kind"] for a in json.loads(capsys.readouterr().out)["actions"]} == {
        "revoke_sessions"
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"hello": 1}', "unrecognized alert payload"),
        ("[]", "must be a JSON object"),
    ],
)
def test_plan_rejects_bad_input_with_exit_2_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "alert.json"
    path.write_text(content)
    assert main(["plan", "--alert", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plan_names_a_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--alert", "/nonexistent/alert.json"]) == 2
    assert "cannot read /nonexistent/alert.json" in capsys.readouterr().err


def test_audit_verify_without_settings_names_the_problem(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RESPONDER_TABLES_CONNECTION", "RESPONDER_TABLES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["audit", "verify"]) == 2
    assert "RESPONDER_TABLES_CONNECTION" in capsys.readouterr().err


def test_an_unknown_scenario_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drill", "--scenario", "meteor"]) == 2
    assert "known: compromised-account" in capsys.readouterr().err


@pytest.fixture
def local_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings that parse; nothing is read, as bad input is refused before any table call."""
    monkeypatch.delenv("RESPONDER_TABLES_ENDPOINT", raising=False)
    monkeypatch.setenv("RESPONDER_TABLES_CONNECTION", "UseDevelopmentStorage=true")
    monkeypatch.setenv("RESPONDER_QUEUE", "memory")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "--since", "yesterday"], "since must be an ISO 8601 date-time"),
        (["query", "--since", "2025-02-01", "--until", "2025-01-01"], "since must not be later"),
        (["query", "--limit", "0"], "--limit must be a whole number from 1 to 200"),
        (["query", "--limit", "many"], "--limit must be a whole number from 1 to 200"),
        (["query", "--limit", "201"], "--limit must be a whole number from 1 to 200"),
        (["query", "--continuation", "garbage"], "invalid continuation token"),
        (["query", "--outcome", "succeeded"], "unknown outcome 'succeeded'"),
        (["query", "--target", "x" * 300], "target is longer than 256 characters"),
        (["export", "--format", "xml"], "--format must be csv or jsonl"),
        (["export", "--format", "csv", "--until", "soon"], "until must be an ISO 8601"),
        (
            ["export", "--format", "csv", "--output", "/nonexistent/dir/audit.csv"],
            "cannot write /nonexistent/dir/audit.csv",
        ),
    ],
)
def test_audit_query_and_export_refuse_bad_input_with_exit_2_and_one_line(
    local_tables: None, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["audit", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1
    assert captured.out == ""
