"""The audit page end to end: the functions served over real HTTP (drill.serve.LocalApi) on
Azurite and a simulated tenant, records made through POST /api/actions, and the page driven in
headless Debian Chromium by Playwright with tokens the simulated tenant issued."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.data.tables import UpdateMode
from playwright.sync_api import Browser, Page, Route, sync_playwright

from drill.azurite import Azurite
from drill.host import LocalHost
from drill.serve import LocalApi
from shared.adapters.audit_table import to_entity
from shared.adapters.queue import InMemoryActionQueue
from shared.container import Container
from shared.identity import ROLE_ACT, ROLE_AUDIT_READ
from shared.simulator import SimulatedTenant, SimUser
from tests.conftest import ADELE, API_AUDIENCE, BREAK_GLASS, settings_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
# As root, on a machine whose network reaches nothing but loopback. Playwright gives every
# launch a new empty profile (--user-data-dir) of its own.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ENGINEER = "oncall@contoso.onmicrosoft.com"
AUDITOR = "auditor@contoso.onmicrosoft.com"
MARKUP_REASON = "phishing link clicked <img src=x onerror=alert(1)>"
INCIDENT = "INC-1001"
SCREENSHOT = Path("/tmp/audit-page.png")
MOBILE_SCREENSHOT = Path("/tmp/audit-page-mobile.png")


@dataclass
class Trail:
    base: str
    sim: SimulatedTenant
    head_seq: int
    rows: list[dict[str, str]]
    action_ids: list[str]

    def token(self, *roles: str, upn: str = AUDITOR) -> str:
        return self.sim.issue_token(audience=API_AUDIENCE, roles=roles, upn=upn)


async def _pump(services: Container) -> int:
    assert isinstance(services.queue, InMemoryActionQueue)
    return await LocalHost().pump(services.queue)


@pytest.fixture(scope="module")
def trail(azurite: Azurite) -> Iterator[Trail]:
    """An audit trail made over HTTP: two actions on Adele in one incident (planned, then
    executed), one refused on the break-glass account."""
    with SimulatedTenant() as sim:
        sim.add_user(SimUser(**vars(ADELE)))
        sim.add_user(SimUser(**vars(BREAK_GLASS)))
        with LocalApi(settings_for(sim, azurite)) as api:
            act = sim.issue_token(audience=API_AUDIENCE, roles=[ROLE_ACT], upn=ENGINEER)
            with httpx.Client(base_url=api.base_url, timeout=30) as http:
                requests = [
                    {
                        "kind": "disable_account",
                        "target": ADELE.id,
                        "reason": MARKUP_REASON,
                        "incident_id": INCIDENT,
                    },
                    {
                        "kind": "revoke_sessions",
                        "target": ADELE.id,
                        "reason": "session tokens replayed from 203.0.113.7",
                        "incident_id": INCIDENT,
                    },
                    {"kind": "disable_account", "target": BREAK_GLASS.id, "reason": "odd sign-in"},
                ]
                decisions, action_ids = [], []
                for body in requests:
                    response = http.post(
                        "/api/actions", json=body, headers={"Authorization": f"Bearer {act}"}
                    )
                    assert response.status_code == 202, response.text
                    decisions.append(response.json()["decision"])
                    action_ids.append(response.json()["id"])
                assert decisions == ["execute", "execute", "refused"]
                assert api.call(_pump) == 2
                assert not sim.user(ADELE.id).account_enabled

                auditor = sim.issue_token(
                    audience=API_AUDIENCE, roles=[ROLE_AUDIT_READ], upn=AUDITOR
                )
                read = {"Authorization": f"Bearer {auditor}"}
                verified = http.get("/api/audit/verify", headers=read).json()
                rows = http.get("/api/audit", params={"limit": 200}, headers=read).json()
            assert verified["verified"] is True
            yield Trail(api.base_url, sim, verified["head_seq"], rows["records"], action_ids)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watched:
    page: Page
    dialogs: list[str]
    problems: list[str]


@contextmanager
def open_page(browser: Browser, trail: Trail, **context: Any) -> Iterator[Watched]:
    """A new browser context on the page; afterwards, no dialog may have opened (script in an
    audit reason must never run) and nothing may have been logged (a CSP violation would be)."""
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    watched = Watched(page, [], [])

    def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            watched.problems.append(f"console {message.type}: {message.text}")
            if message.type in ("error", "warning")
            else None
        ),
    )
    page.goto(f"{trail.base}/api/audit/ui")
    try:
        yield watched
    finally:
        ctx.close()
    assert watched.dialogs == []
    assert watched.problems == []


@pytest.fixture
def desktop(browser: Browser, trail: Trail) -> Iterator[Watched]:
    with open_page(browser, trail, viewport={"width": 1280, "height": 900}) as watched:
        yield watched


@pytest.fixture
def phone(browser: Browser, trail: Trail) -> Iterator[Watched]:
    phone = {"width": 390, "height": 844}
    with open_page(
        browser, trail, viewport=phone, device_scale_factor=2, is_mobile=True, has_touch=True
    ) as watched:
        yield watched


def sign_in(page: Page, token: str) -> None:
    page.fill("#token", token)
    page.click("#signin-button")


def shown_seqs(page: Page) -> list[str]:
    return page.locator("#timeline li.entry").evaluate_all("nodes => nodes.map(n => n.dataset.seq)")


def wait_for_entries(page: Page, count: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('#timeline li.entry').length === n"
        " && document.querySelector('#timeline').getAttribute('aria-busy') === 'false'",
        arg=count,
    )


def test_the_page_is_served_self_contained_with_a_strict_policy(trail: Trail) -> None:
    response = httpx.get(f"{trail.base}/api/audit/ui")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    html = response.text
    assert '<meta name="viewport"' in html
    assert "<script src" not in html and 'rel="stylesheet"' not in html
    assert "http://" not in html and "https://" not in html  # no CDN, no external fonts
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html


def test_the_bridge_serves_routes_as_the_host_does(trail: Trail) -> None:
    read = {"Authorization": f"Bearer {trail.token(ROLE_AUDIT_READ)}"}
    with httpx.Client(base_url=trail.base, timeout=30) as http:
        # A {param} segment becomes a route parameter; literal segments match in any case.
        action = http.get(f"/API/Actions/{trail.action_ids[0]}", headers=read)
        assert action.status_code == 200
        assert action.headers["content-type"] == "application/json"
        assert action.json()["state"] == "executed"
        # Query-string parameters reach the function.
        page = http.get("/api/audit", params={"target": BREAK_GLASS.id}, headers=read).json()
        assert [row["event"] for row in page["records"]] == ["action.refused"]
        # Problems keep their media type and status.
        refused = http.get("/api/audit", params={"limit": "0"}, headers=read)
        assert refused.status_code == 400
        assert refused.headers["content-type"] == "application/problem+json"
        assert http.get("/api/audit/verify").headers["www-authenticate"] == "Bearer"
        assert http.get("/api/nothing-here").status_code == 404
        assert http.get("/elsewhere/health").status_code == 404
        assert http.delete("/api/audit", headers=read).status_code == 405


def test_an_auditor_reads_the_timeline_and_the_verification_badge(
    desktop: Watched, trail: Trail
) -> None:
    page = desktop.page
    token = trail.token(ROLE_AUDIT_READ)
    sign_in(page, token)
    wait_for_entries(page, len(trail.rows))
    badge = page.locator("#badge[data-state='ok']")
    badge.wait_for()
    # Record numbers are positions of 19 digits, beyond a JavaScript number: shown exactly.
    assert page.locator("#badge-text").inner_text() == f"Verified up to #{trail.head_seq}"
    assert badge.get_attribute("data-state") == "ok"
    assert badge.get_attribute("aria-live") == "polite"
    assert trail.head_seq == int(trail.rows[0]["seq"]) and len(trail.rows) == 5

    # The token is kept in this tab's session storage only: not in the URL, not in local storage.
    assert token.split(".")[1] not in page.url
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("Object.values(sessionStorage)") == [token]
    assert page.input_value("#token") == ""

    # Grouped per incident; the refused action has no incident.
    headings = page.locator("#timeline h3").all_inner_texts()
    assert headings == ["No incident", f"Incident {INCIDENT}"] or headings == [
        f"Incident {INCIDENT}",
        "No incident",
    ]
    pills = page.locator("#timeline .pill").all_inner_texts()
    assert sorted(pills) == ["Executed", "Executed", "Planned", "Planned", "Refused"]
    # Newest first within each group, every record once.
    assert sorted(shown_seqs(page)) == sorted(row["seq"] for row in trail.rows)
    for group in page.locator("#timeline section.group").all():
        seqs = [
            int(seq)
            for seq in group.locator("li.entry").evaluate_all(
                "nodes => nodes.map(n => n.dataset.seq)"
            )
        ]
        assert seqs == sorted(seqs, reverse=True)
    timeline = page.locator("#timeline").inner_text()
    assert ENGINEER in timeline and "Disable account" in timeline and BREAK_GLASS.id in timeline
    assert "protected identity" in timeline  # why the break-glass action was refused

    # Markup in a reason is shown as the literal text, never parsed.
    markup = page.locator("#timeline dd", has_text="onerror")
    assert markup.count() == 2  # planned and executed carry the same reason
    assert markup.first.inner_text() == MARKUP_REASON
    assert page.locator("#timeline img").count() == 0

    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Still signed in after a reload (session storage), with no token field showing.
    page.reload()
    wait_for_entries(page, len(trail.rows))
    assert page.locator("#signin").is_hidden()


def test_a_target_filter_narrows_the_timeline_and_the_csv_matches(
    desktop: Watched, trail: Trail, tmp_path: Path
) -> None:
    page = desktop.page
    sign_in(page, trail.token(ROLE_AUDIT_READ))
    wait_for_entries(page, len(trail.rows))

    page.fill("#f-target", BREAK_GLASS.id)
    page.click("#apply")
    wait_for_entries(page, 1)
    assert page.locator("#timeline .pill").all_inner_texts() == ["Refused"]
    assert page.locator("#timeline h3").all_inner_texts() == ["No incident"]

    page.fill("#f-target", ADELE.id)
    page.click("#apply")
    wait_for_entries(page, 4)
    seqs = shown_seqs(page)
    expected = [row["seq"] for row in trail.rows if row["target"] == ADELE.id]
    assert seqs == expected

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert download.suggested_filename.startswith("audit-")
    assert download.suggested_filename.endswith(".csv")
    saved = tmp_path / "audit.csv"
    download.save_as(saved)
    exported = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert [row["seq"] for row in exported] == seqs
    by_seq = {row["seq"]: row for row in trail.rows}
    for row in exported:
        shown = by_seq[row["seq"]]
        assert {k: row[k] for k in ("event", "actor", "kind", "target", "reason", "hash")} == {
            k: shown[k] for k in ("event", "actor", "kind", "target", "reason", "hash")
        }
    assert MARKUP_REASON in {row["reason"] for row in exported}
    assert page.locator("#download-status").inner_text().startswith("Saved audit-")

    page.click("#clear")
    wait_for_entries(page, len(trail.rows))


def test_the_download_follows_the_export_pages_into_one_file(
    desktop: Watched, trail: Trail, tmp_path: Path
) -> None:
    """The export answers in pages (Link rel="next"); the page joins them into one file. The
    first request is asked for pages of two records so a small trail spans several."""
    page = desktop.page
    sign_in(page, trail.token(ROLE_AUDIT_READ))
    wait_for_entries(page, len(trail.rows))
    requested: list[str] = []

    def small_pages(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        if "continuation=" not in url:
            url += "&limit=2"
        route.continue_(url=url)

    page.route("**/api/audit/export?*", small_pages)
    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / "paged.csv"
    download_info.value.save_as(saved)
    exported = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert [row["seq"] for row in exported] == [row["seq"] for row in trail.rows]
    assert len(requested) == -(-len(trail.rows) // 2)
    status = page.locator("#download-status").inner_text()
    assert status.startswith("Saved audit-")
    assert f"{len(trail.rows)} records" in status


def test_a_token_without_the_auditor_role_is_told_so(desktop: Watched, trail: Trail) -> None:
    page = desktop.page
    # The browser logs the API's 403 answers itself; they are expected here.
    sign_in(page, trail.token(ROLE_ACT, upn=ENGINEER))
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert page.locator("#error-message").inner_text() == "Your token lacks the Audit.Read role."
    assert error.get_attribute("role") == "alert"
    assert page.locator("#badge-text").inner_text() == "Verification unavailable"
    assert page.locator("#timeline li.entry").count() == 0
    desktop.problems[:] = [p for p in desktop.problems if "403" not in p]


def test_the_page_fits_a_phone(phone: Watched, trail: Trail) -> None:
    page = phone.page
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    sign_in(page, trail.token(ROLE_AUDIT_READ))
    wait_for_entries(page, len(trail.rows))
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    # The filters start folded on a phone; opened, they stack in one column.
    assert page.locator("#filters-panel").get_attribute("open") is None
    assert page.locator("#f-target").is_hidden()
    page.screenshot(path=str(MOBILE_SCREENSHOT), full_page=True)
    page.click("#filters-panel > summary")
    assert page.locator("#f-target").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    lefts = page.locator("#filters .filters > div").evaluate_all(
        "nodes => nodes.map(n => Math.round(n.getBoundingClientRect().left))"
    )
    assert len(set(lefts)) == 1


async def _tamper_first_record(services: Container) -> None:
    """An edit made with the storage keys, behind the app's back."""
    [record] = [r async for r in services.audit_store.newest_first()]
    table = services.tables.get_table_client(services.settings.audit_table)
    entity = await table.get_entity(record.chain, to_entity(record)["RowKey"])
    assert "protected identity" in entity["Body"]
    entity["Body"] = entity["Body"].replace("protected identity", "routine check")
    await table.update_entity(entity, mode=UpdateMode.REPLACE)


def test_a_broken_chain_turns_the_badge_red(
    browser: Browser, azurite: Azurite, sim: SimulatedTenant
) -> None:
    with LocalApi(settings_for(sim, azurite)) as api:
        act = sim.issue_token(audience=API_AUDIENCE, roles=[ROLE_ACT], upn=ENGINEER)
        body = {"kind": "disable_account", "target": BREAK_GLASS.id, "reason": "odd sign-in"}
        response = httpx.post(
            f"{api.base_url}/api/actions", json=body, headers={"Authorization": f"Bearer {act}"}
        )
        assert response.status_code == 202, response.text
        api.call(_tamper_first_record)
        trail = Trail(api.base_url, sim, 0, [], [])
        with open_page(browser, trail, viewport={"width": 1280, "height": 900}) as watched:
            page = watched.page
            sign_in(page, trail.token(ROLE_AUDIT_READ))
            badge = page.locator("#badge[data-state='broken']")
            badge.wait_for()
            broken = page.locator("#badge-text").inner_text()
            assert broken.startswith("Broken at #") and "content does not match" in broken
            assert badge.get_attribute("aria-live") == "polite"
            # The records are still listed: the reader sees what the chain no longer vouches for.
            wait_for_entries(page, 1)
