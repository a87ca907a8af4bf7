"""`responder drill --scenario audit`: concurrent writers against Azurite lose nothing, a
checkpoint lands in the blob service, and every kind of tampering applied to a copy of the
trail fails verification (smaller sizes than the drill's default)."""

from __future__ import annotations

import json

import pytest

from drill.audit_trail import TAMPERS
from shared.cli import main

pytestmark = pytest.mark.integration


def test_the_audit_drill_reports_every_tampering_detected(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["drill", "--scenario", "audit", "--json", "--set", "writers=4"]
    assert main([*args, "--set", "per_writer=30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 120 and report["append_failures"] == 0
    assert report["indexed_append_failures"] == 0
    assert report["checkpoint"] == {"count": 120, "intact_trail_verified": True}
    assert set(report["tamper"]) == set(TAMPERS)
    for kind, found in report["tamper"].items():
        assert found["detected"], kind
        assert isinstance(found["first_broken_seq"], int), kind
    assert report["appends_per_s"] > 0 and report["plain_inserts_per_s"] > 0


def test_the_audit_drill_refuses_unknown_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drill", "--scenario", "audit", "--set", "speed=11"]) == 2
    assert "unknown option 'speed'" in capsys.readouterr().err
