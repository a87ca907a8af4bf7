"""When an action that met an infrastructure error runs again: Retry-After when the service
sent one (however deeply the error is wrapped), jittered exponential backoff otherwise."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.actions.runner import RecordingFailed, RetryPolicy
from shared.errors import TransientError

POLICY = RetryPolicy(give_up_after=timedelta(minutes=60), base_delay_s=5.0, max_delay_s=300.0)


def test_retry_after_is_honoured() -> None:
    throttled = TransientError("429", status=429, retry_after=30.0)
    delays = {POLICY.delay(retry, throttled) for retry in range(20)}
    assert all(timedelta(seconds=30) <= d <= timedelta(seconds=33) for d in delays)


def test_retry_after_is_found_behind_a_recording_failure() -> None:
    try:
        try:
            raise TransientError("storage busy", status=503, retry_after=12.0)
        except TransientError as cause:
            raise RecordingFailed("recording 1 outcomes failed") from cause
    except RecordingFailed as wrapped:
        assert POLICY.delay(0, wrapped) >= timedelta(seconds=12)


@pytest.mark.parametrize(("retry", "ceiling"), [(0, 5.0), (1, 10.0), (3, 40.0), (6, 300.0)])
def test_without_retry_after_the_backoff_doubles_up_to_its_ceiling_with_jitter(
    retry: int, ceiling: float
) -> None:
    delays = [POLICY.delay(retry, ConnectionError("refused")) for _ in range(200)]
    assert all(timedelta(seconds=ceiling / 2) <= d <= timedelta(seconds=ceiling) for d in delays)
    assert len(set(delays)) > 1, "jittered, so that retries of a storm spread out"


def test_a_retry_far_along_stays_at_the_ceiling() -> None:
    assert POLICY.delay(10_000, ConnectionError()) <= timedelta(seconds=300)
