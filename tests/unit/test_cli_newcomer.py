"""What a newcomer runs into first: the drill list in `--help`, the whole timeline on request,
and the outcome names `audit query` accepts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drill.context import Mark
from drill.runner import TIMELINE_ROWS, DrillReport
from drill.scenarios import SCENARIOS
from shared.audit import VerifyReport
from shared.audit_query import AuditFilter
from shared.cli import AUDIT_DRILL, main
from shared.errors import ConfigError, InvalidInput
from shared.policy import Playbook


def test_drill_help_lists_every_scenario_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["drill", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    listed = out.split("scenarios:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed if line.strip()] == [*SCENARIOS, AUDIT_DRILL]
    assert "--all" in out


def test_the_outcome_filter_takes_the_short_names_too() -> None:
    assert AuditFilter.from_params({"outcome": "executed"}).outcome == "action.executed"
    assert AuditFilter.from_params({"outcome": "Failed"}).outcome == "action.failed"
    assert AuditFilter.from_params({"outcome": "alert.raised"}).outcome == "alert.raised"
    with pytest.raises(InvalidInput, match="unknown outcome 'raised'"):
        AuditFilter.from_params({"outcome": "raised"})


def test_audit_query_help_lists_the_outcomes_and_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["audit", "query", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "action.executed" in out and "e.g. executed" in out and "unblock_ip" in out


def report(rows: int) -> DrillReport:
    start = datetime(2026, 11, 30, tzinfo=UTC)
    marks = [Mark(start + timedelta(milliseconds=i), "alert", f"mark {i}") for i in range(rows)]
    return DrillReport(
        scenario="storm",
        started=start,
        marks=marks,
        records=[],
        verification=VerifyReport(records_checked=0, head_seq=None, head_hash=None),
        checks={},
        graph_calls=0,
        deliveries=0,
        dead_letters=0,
        elapsed_ms=0.0,
    )


def test_the_whole_timeline_is_shown_on_request() -> None:
    long = report(TIMELINE_ROWS * 3)
    assert len(long.timeline()) == TIMELINE_ROWS + 1  # start, "... N more records ...", end
    whole = long.timeline(whole=True)
    assert len(whole) == TIMELINE_ROWS * 3 and whole[-1].endswith(f"mark {TIMELINE_ROWS * 3 - 1}")


def test_a_playbook_error_names_each_rule_echoes_the_value_and_lists_every_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "playbook.toml"
    path.write_text(
        'version = 1\n[[rules]]\nname = "contain-users"\nactions = ["format_disk"]\n'
        '[[rules]]\nname = "watch-admins"\nactions = ["disable_account"]\nsevrity = "high"\n'
    )
    with pytest.raises(ConfigError) as refused:
        Playbook.load(path)
    message = str(refused.value)
    assert "2 errors" in message and "\n" not in message
    assert "rule 'contain-users' actions[0].kind" in message and "(got 'format_disk')" in message
    assert "rule 'watch-admins' sevrity" in message and "(got 'high')" in message
