"""Reading Graph's JSON without the SDK's models: the times Graph writes, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.adapters.graph import _moment
from shared.errors import TransientError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-30T10:00:00Z", datetime(2026, 11, 30, 10, tzinfo=UTC)),
        # Graph's DateTimeOffset may carry seven fractional digits; microseconds are kept.
        ("2026-11-30T10:00:00.1234567Z", datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=UTC)),
        (
            "2026-11-30T11:00:00+01:00",
            datetime(2026, 11, 30, 11, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_graph_times_are_read(text: str, expected: datetime) -> None:
    assert _moment(text, "u") == expected


def test_no_time_is_none() -> None:
    assert _moment(None, "u") is None


@pytest.mark.parametrize("value", ["yesterday", "", 1700000000, ["2026-11-30T10:00:00Z"]])
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(TransientError, match="invalid time"):
        _moment(value, "u")
