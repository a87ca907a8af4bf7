"""Answers of the live Exchange admin endpoint, as published (tests/contracts/exchange), replayed
through the adapter: what it returns, how it fails, and where it sends the token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.adapters.credentials import StaticTokenCredential
from shared.adapters.exchange import (
    CmdletFailed,
    CmdletUnavailable,
    ExchangeAdmin,
    RuleNotFound,
)
from shared.errors import NotFoundError, PermanentError

CONTRACTS = Path(__file__).parent.parent / "contracts" / "exchange"
# The live captures name their tenant "tenant" in every link.
BASE = "https://outlook.office365.com"
TENANT = "tenant"
ENDPOINT = f"{BASE}/adminapi/beta/{TENANT}/InvokeCommand"


def recorded(name: str) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads((CONTRACTS / name).read_text())
    return fixture


def answer(fixture: dict[str, Any]) -> httpx.Response:
    if "raw_body_nul_bytes" in fixture:
        return httpx.Response(fixture["status"], content=bytes(fixture["raw_body_nul_bytes"]))
    return httpx.Response(fixture["status"], json=fixture["body"])


class Replay:
    """Answers requests with recorded answers, in order, and keeps the requests."""

    def __init__(self, *fixtures: dict[str, Any]) -> None:
        self._answers = [answer(f) for f in fixtures]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._answers.pop(0)


def admin(replay: Replay, tenant: str = TENANT) -> ExchangeAdmin:
    credential = StaticTokenCredential("exchange-token")
    return ExchangeAdmin(BASE, tenant, credential, 5.0, transport=httpx.MockTransport(replay))


def test_every_fixture_names_its_source() -> None:
    files = sorted(CONTRACTS.glob("*.json"))
    assert len(files) >= 8
    for path in files:
        fixture = json.loads(path.read_text())
        assert fixture["_source"].startswith("https://"), path.name
        assert fixture["_note"] and fixture["cmdlet"] and fixture["status"], path.name


async def test_a_complete_answer_gives_every_row_and_no_warning() -> None:
    replay = Replay(recorded("success-complete.json"))
    client = admin(replay)
    try:
        result = await client.invoke("Get-Mailbox", {})
    finally:
        await client.close()
    assert [row["Identity"] for row in result.value] == ["one", "two", "three"]
    assert result.warnings == [] and client.take_warnings() == []
    [sent] = replay.requests
    assert sent.headers["Prefer"] == "odata.maxpagesize=1000"
    assert sent.headers["X-AnchorMailbox"] == (
        "APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@tenant"
    )
    assert json.loads(sent.content) == {
        "CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}
    }


async def test_a_truncated_answer_whose_next_page_cannot_be_read_is_a_failed_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    replay = Replay(
        recorded("success-truncated.json"), recorded("error-pagination-expired-400.json")
    )
    client = admin(replay)
    try:
        with pytest.raises(PermanentError) as caught:
            await client.invoke("Get-Mailbox", {})
        warnings = client.take_warnings()
    finally:
        await client.close()
    assert "next page" in str(caught.value)
    assert "Expired or Invalid pagination request" in str(caught.value)
    assert [str(r.url) for r in replay.requests] == [
        ENDPOINT,
        f"{ENDPOINT}?%24skiptoken=ADZmViMTYwMGZlOTg5NDUxYTljOTBjMDllODY4MmEwOWVMT0JQMjY1TUI5MjQ5",
    ]
    assert warnings == [
        "Get-Mailbox: There are more results available than are currently displayed. To view "
        "them, increase the value for the ResultSize parameter."
    ]
    assert "more results available" in caplog.text


async def test_a_next_link_to_another_tenant_path_is_not_followed() -> None:
    replay = Replay(recorded("success-truncated.json"))
    client = admin(replay, tenant="contoso.onmicrosoft.com")
    try:
        with pytest.raises(PermanentError, match="not followed"):
            await client.invoke("Get-Mailbox", {})
    finally:
        await client.close()
    assert len(replay.requests) == 1


@pytest.mark.parametrize(
    ("name", "exception_type", "reason"),
    [
        (
            "error-invalid-enum-400.json",
            "Microsoft.Exchange.AdminApi.CommandInvocation.ParameterTransformationException",
            "Cannot process argument transformation on parameter 'QuarantineTypes'",
        ),
        (
            "error-unknown-parameter-400.json",
            "Microsoft.Exchange.AdminApi.CommandInvocation.AmbiguousParameterSetException",
            "Parameter set cannot be resolved using the specified named parameters.",
        ),
    ],
)
async def test_a_refusal_keeps_the_exception_type_apart_from_a_clean_reason(
    name: str, exception_type: str, reason: str
) -> None:
    client = admin(Replay(recorded(name)))
    try:
        with pytest.raises(CmdletFailed) as caught:
            await client.invoke("Get-QuarantineMessage", {})
    finally:
        await client.close()
    assert not isinstance(caught.value, NotFoundError)
    assert caught.value.exception_type == exception_type
    assert caught.value.status == 400
    message = str(caught.value)
    assert message.startswith(f"Get-QuarantineMessage: Exchange answered 400: {reason}")
    assert "|" not in message and "Invalid Operation" not in message


@pytest.mark.parametrize(
    ("name", "status"), [("error-not-found-400.json", 400), ("error-not-found-500.json", 500)]
)
async def test_a_missing_rule_is_known_by_its_exception_whatever_the_status(
    name: str, status: int
) -> None:
    client = admin(Replay(recorded(name), recorded(name)))
    try:
        assert await client.get_rule("M365 Responder IP block reject 001") is None
        with pytest.raises(RuleNotFound) as caught:
            await client.remove_rule("M365 Responder IP block reject 001")
    finally:
        await client.close()
    assert isinstance(caught.value, NotFoundError)
    assert not isinstance(caught.value, CmdletUnavailable), "a 500 here is not worth retrying"
    assert caught.value.status == status
    assert caught.value.exception_type == (
        "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
    )
    assert "|" not in str(caught.value) and "couldn't be found on" in str(caught.value)


async def test_a_body_that_is_not_json_is_a_clear_permanent_failure() -> None:
    client = admin(Replay(recorded("error-forbidden-not-json-403.json")))
    try:
        with pytest.raises(CmdletFailed) as caught:
            await client.invoke("Get-QuarantineMessage", {})
    finally:
        await client.close()
    message = str(caught.value)
    assert caught.value.status == 403 and caught.value.exception_type is None
    assert "not JSON (4096 bytes)" in message and "Exchange.ManageAsApp" in message
    assert "\x00" not in message


# Beyond the recorded answers: shapes no capture shows, handled defensively -------------------


@pytest.mark.parametrize(
    "link",
    [
        f"http://outlook.office365.com/adminapi/beta/{TENANT}/InvokeCommand?%24skiptoken=x",
        f"https://outlook.office365.com.evil.example/adminapi/beta/{TENANT}/InvokeCommand",
        f"https://outlook.office365.com:8443/adminapi/beta/{TENANT}/InvokeCommand",
        f"https://user:pw@outlook.office365.com/adminapi/beta/{TENANT}/InvokeCommand",
        "https://outlook.office365.com/adminapi/beta/other-tenant/InvokeCommand",
    ],
)
async def test_a_next_link_off_the_configured_https_endpoint_is_never_sent_the_token(
    link: str,
) -> None:
    requests: list[httpx.Request] = []

    def truncated(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"@odata.nextLink": link, "value": [{}]})

    client = ExchangeAdmin(
        BASE, TENANT, StaticTokenCredential("t"), 5.0, transport=httpx.MockTransport(truncated)
    )
    try:
        with pytest.raises(PermanentError, match="not followed"):
            await client.invoke("Get-TransportRule", {"ResultSize": "Unlimited"})
    finally:
        await client.close()
    assert [str(r.url) for r in requests] == [ENDPOINT]


async def test_a_link_that_keeps_pointing_at_another_page_is_given_up_on() -> None:
    requests: list[httpx.Request] = []

    def always_truncated(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body = {"@odata.nextLink": f"{ENDPOINT}?%24skiptoken={len(requests)}", "value": [{}]}
        return httpx.Response(200, json=body)

    client = ExchangeAdmin(
        BASE,
        TENANT,
        StaticTokenCredential("t"),
        5.0,
        transport=httpx.MockTransport(always_truncated),
    )
    try:
        with pytest.raises(PermanentError, match="still truncated after 5 pages"):
            await client.invoke("Get-TransportRule", {"ResultSize": "Unlimited"})
    finally:
        await client.close()
    assert len(requests) == 5


async def test_a_retry_after_would_be_honoured_and_a_lone_warning_string_is_kept() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "12"}, json={"error": {"code": "TooMany"}}),
        httpx.Response(200, json={"@adminapi.warnings": "one warning", "value": []}),
    ]
    client = ExchangeAdmin(
        BASE,
        TENANT,
        StaticTokenCredential("t"),
        5.0,
        transport=httpx.MockTransport(lambda request: answers.pop(0)),
    )
    try:
        with pytest.raises(CmdletUnavailable) as caught:
            await client.invoke("Get-TransportRule", {})
        result = await client.invoke("Get-TransportRule", {})
    finally:
        await client.close()
    assert (caught.value.status, caught.value.retry_after) == (429, 12.0)
    assert result.warnings == ["one warning"]
