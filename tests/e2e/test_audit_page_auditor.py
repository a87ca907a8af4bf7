"""The audit page as an auditor and an approver use it, in headless Debian Chromium: times with
their zone and a local-time toggle, a search by UPN, labelled events with action ids, the
approval behind an approved run, the integrity panel, the printable incident report, the JSON
lines download, the "Waiting for approval" view with four eyes enforced by the server, and all
of it on a 390 px phone. The trail is made over HTTP on Azurite and a simulated tenant."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route

from drill.azurite import Azurite
from drill.serve import LocalApi
from shared.config import PRIVILEGED_ROLES
from shared.identity import ROLE_ACT, ROLE_APPROVE, ROLE_AUDIT_READ
from shared.simulator import SimulatedTenant, SimUser
from tests.conftest import ADELE, API_AUDIENCE, BREAK_GLASS, settings_for
from tests.e2e.test_audit_page import (
    ENGINEER,
    INCIDENT,
    Trail,
    Watched,
    _pump,
    browser,
    open_page,
    shown_seqs,
    sign_in,
    wait_for_entries,
)

pytestmark = pytest.mark.integration

__all__ = ["browser"]  # the module-scoped Chromium, shared with the other page tests

USER_ADMINISTRATOR = next(k for k, v in PRIVILEGED_ROLES.items() if v == "User Administrator")
LEAD = "lead@contoso.onmicrosoft.com"
GRADY = SimUser(
    id="8c1e7a52-3f9b-4d26-a0e4-6b5d9c2f7a13",
    user_principal_name="grady.archie@contoso.onmicrosoft.com",
    display_name="Grady Archie",
)
LYNNE = SimUser(
    id="3a6f9e21-5c7d-4b8a-9e1f-2d4c6b8a0e13",
    user_principal_name="lynne.robbins@contoso.onmicrosoft.com",
    display_name="Lynne Robbins",
)
# A display name is whatever an administrator typed: the page must show it as text.
KATIE = SimUser(
    id="b7d2c4e6-8a1f-4c3e-9b5d-7e0a2c4f6b81",
    user_principal_name="katie.jordan@contoso.onmicrosoft.com",
    display_name="Katie <img src=x onerror=alert(2)> Jordan",
)
APPROVAL_NOTE = "checked with the SOC lead on the bridge"
BERLIN = "Europe/Berlin"
PRINT_SCREENSHOT = Path("/tmp/audit-report-print.png")
APPROVALS_SCREENSHOT = Path("/tmp/audit-approvals-mobile.png")


@dataclass
class World(Trail):
    api: LocalApi
    held: dict[str, str]  # user id -> action id of the disable waiting for approval

    def records(self, **params: str) -> list[dict[str, str]]:
        read = {"Authorization": f"Bearer {self.token(ROLE_AUDIT_READ)}"}
        answer = httpx.get(
            f"{self.base}/api/audit", params={"limit": "200", **params}, headers=read
        )
        assert answer.status_code == 200, answer.text
        records: list[dict[str, str]] = answer.json()["records"]
        return records


def _request(http: httpx.Client, token: str, body: dict[str, Any]) -> str:
    answer = http.post("/api/actions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 202, answer.text
    action_id: str = answer.json()["id"]
    return action_id


@pytest.fixture(scope="module")
def world(azurite: Azurite) -> Iterator[World]:
    """Adele disabled and signed out in incident INC-1001 (requested by object id); three
    holders of a privileged role whose disables the executor held for approval: Grady's
    approved over the API and run, Lynne's and Katie's still waiting."""
    with SimulatedTenant() as sim:
        for user in (ADELE, BREAK_GLASS, GRADY, LYNNE, KATIE):
            sim.add_user(SimUser(**vars(user)))
        for user in (GRADY, LYNNE, KATIE):
            sim.assign_role(user.id, USER_ADMINISTRATOR)
        with (
            LocalApi(settings_for(sim, azurite)) as api,
            httpx.Client(base_url=api.base_url, timeout=30) as http,
        ):
            act = sim.issue_token(audience=API_AUDIENCE, roles=[ROLE_ACT], upn=ENGINEER)
            for kind, reason in (
                ("disable_account", "phishing link clicked"),
                ("revoke_sessions", "session tokens replayed"),
            ):
                body = {"kind": kind, "target": ADELE.id, "reason": reason}
                _request(http, act, {**body, "incident_id": INCIDENT})
            held = {
                user.id: _request(
                    http,
                    act,
                    {
                        "kind": "disable_account",
                        "target": user.id,
                        "reason": f"password spray hit {user.user_principal_name}",
                        "incident_id": "INC-2002",
                    },
                )
                for user in (GRADY, LYNNE, KATIE)
            }
            api.call(_pump)
            assert not sim.user(ADELE.id).account_enabled
            assert all(sim.user(u.id).account_enabled for u in (GRADY, LYNNE, KATIE))
            lead = sim.issue_token(audience=API_AUDIENCE, roles=[ROLE_APPROVE], upn=LEAD)
            approved = http.post(
                f"/api/actions/{held[GRADY.id]}/approve",
                json={"note": APPROVAL_NOTE},
                headers={"Authorization": f"Bearer {lead}"},
            )
            assert approved.status_code == 200, approved.text
            api.call(_pump)
            assert not sim.user(GRADY.id).account_enabled
            yield World(api.base_url, sim, 0, [], list(held.values()), api, held)


@pytest.fixture
def berlin(browser: Browser, world: World) -> Iterator[Watched]:
    viewport = {"width": 1280, "height": 900}
    with open_page(browser, world, viewport=viewport, timezone_id=BERLIN) as watched:
        yield watched


@pytest.fixture
def phone(browser: Browser, world: World) -> Iterator[Watched]:
    with open_page(
        browser,
        world,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    ) as watched:
        yield watched


def no_overflow(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= innerWidth"))


def first_time(page: Page) -> str:
    return page.locator("#timeline li.entry time").first.inner_text()


def test_times_carry_their_zone_and_the_local_toggle_shows_the_offset(
    berlin: Watched, world: World, tmp_path: Path
) -> None:
    page = berlin.page
    rows = world.records()
    sign_in(page, world.token(ROLE_AUDIT_READ))
    wait_for_entries(page, len(rows))
    newest = datetime.fromisoformat(rows[0]["at"])
    assert first_time(page) == newest.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert page.locator("label[for=f-since]").inner_text() == "From (UTC)"

    page.check("#zone-local")
    local = newest.astimezone(ZoneInfo(BERLIN))
    offset = local.strftime("%z")
    shown_offset = f"UTC{offset[0]}{offset[1:3]}:{offset[3:]}"
    assert first_time(page) == local.strftime("%Y-%m-%d %H:%M:%S ") + shown_offset
    # The other zone is one hover away, and the machine-readable time is the record's own.
    assert page.locator("#timeline time").first.get_attribute("title") == newest.strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )
    assert page.locator("#timeline time").first.get_attribute("datetime") == rows[0]["at"]
    assert page.locator("label[for=f-since]").inner_text() == f"From (local time, {shown_offset})"
    assert BERLIN in page.locator("#zone").inner_text()

    # A local "until" entered in the form is the same instant in UTC: the newest record at its
    # own second is excluded, the ones before it stay.
    page.fill("#f-until", local.strftime("%Y-%m-%dT%H:%M:%S"))
    page.click("#apply")
    older = [r for r in rows if datetime.fromisoformat(r["at"]) < newest.replace(microsecond=0)]
    wait_for_entries(page, len(older))
    assert sorted(shown_seqs(page)) == sorted(r["seq"] for r in older)

    # The export states its zone too: every time is ISO 8601 in UTC, written with a `Z`.
    page.click("#clear")
    wait_for_entries(page, len(rows))
    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / "audit.csv"
    download_info.value.save_as(saved)
    exported = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert len(exported) == len(rows) and all(row["at"].endswith("Z") for row in exported)
    assert "times in UTC" in page.locator("#download-status").inner_text()


def test_a_search_by_upn_finds_the_accounts_records_made_by_object_id(
    berlin: Watched, world: World
) -> None:
    page = berlin.page
    sign_in(page, world.token(ROLE_AUDIT_READ))
    wait_for_entries(page, len(world.records()))
    page.fill("#f-target", ADELE.user_principal_name.upper())
    page.click("#apply")
    expected = [r["seq"] for r in world.records() if r["target"] == ADELE.id]
    assert len(expected) == 4  # planned and executed, for the disable and the sign-out
    wait_for_entries(page, len(expected))
    assert shown_seqs(page) == expected
    # Each record shows whom it was about by the names the trail recorded.
    whats = page.locator("#timeline dd").filter(has_text="Adele Vance").all_inner_texts()
    assert any(ADELE.user_principal_name in what and ADELE.id in what for what in whats)


def test_every_event_is_labelled_and_every_record_shows_its_action_id(
    berlin: Watched, world: World
) -> None:
    page = berlin.page
    rows = world.records()
    sign_in(page, world.token(ROLE_AUDIT_READ))
    wait_for_entries(page, len(rows))
    labels = dict(
        zip(
            page.locator("#timeline .pill").evaluate_all("ns => ns.map(n => n.title)"),
            page.locator("#timeline .pill").all_inner_texts(),
            strict=True,
        )
    )
    assert {
        "action.planned": "Planned",
        "action.held": "Held for approval",
        "action.approved": "Approved",
        "action.executed": "Executed",
    }.items() <= labels.items()
    assert all("." not in label and "_" not in label for label in labels.values())
    # The event filter offers the same labels.
    options = page.locator("#f-outcome option").all_inner_texts()
    assert "Held for approval" in options and "Approval expired" in options
    shown_ids = page.locator("#timeline li.entry").evaluate_all(
        "ns => ns.map(n => [n.dataset.seq, [...n.querySelectorAll('dt')]"
        ".find(dt => dt.textContent === 'Action').nextElementSibling.textContent])"
    )
    assert dict(shown_ids) == {r["seq"]: r["action_id"] for r in rows}


def test_an_approved_run_names_its_approver_and_links_the_hold(
    berlin: Watched, world: World
) -> None:
    page = berlin.page
    grady = world.records(target=GRADY.id)
    by_event = {r["event"]: r for r in grady}
    approved, held = by_event["action.approved"], by_event["action.held"]
    sign_in(page, world.token(ROLE_AUDIT_READ))
    wait_for_entries(page, len(world.records()))
    executed = page.locator("li.entry[data-event='action.executed']", has_text="Grady Archie")
    line = executed.locator(".link-line").inner_text()
    approved_at = datetime.fromisoformat(approved["at"]).strftime("%Y-%m-%d %H:%M:%S UTC")
    held_at = datetime.fromisoformat(held["at"]).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert line == (
        f"Approved by {LEAD} at {approved_at}, #{approved['seq']} (“{APPROVAL_NOTE}”); "
        f"held at {held_at}, #{held['seq']}."
    )
    executed.locator(f"a[href='#rec-{approved['seq']}']").click()
    assert page.evaluate("location.hash") == f"#rec-{approved['seq']}"

    # Filtered to the run alone, the page reads the hold and the approval to name them.
    page.select_option("#f-outcome", "action.executed")
    page.fill("#f-target", GRADY.id)
    page.click("#apply")
    wait_for_entries(page, 1)
    page.wait_for_function("() => document.querySelector('#timeline .link-line') !== null")
    line = page.locator("#timeline .link-line").inner_text()
    assert line.startswith(f"Approved by {LEAD} at {approved_at}, #{approved['seq']}")
    assert page.locator("#timeline .link-line a").count() == 0  # those records are not shown


def test_the_integrity_panel_shows_what_was_checked(berlin: Watched, world: World) -> None:
    page = berlin.page
    verified = httpx.get(
        f"{world.base}/api/audit/verify",
        headers={"Authorization": f"Bearer {world.token(ROLE_AUDIT_READ)}"},
    ).json()
    sign_in(page, world.token(ROLE_AUDIT_READ))
    page.locator("#integrity .verdict[data-state='ok']").wait_for()
    facts = dict(
        zip(
            page.locator("#integrity dt").all_inner_texts(),
            page.locator("#integrity dd").all_inner_texts(),
            strict=True,
        )
    )
    assert facts["Status"] == f"Verified up to #{verified['head_seq']}"
    assert facts["Records checked"] == str(verified["records_checked"])
    assert facts["Head hash"] == verified["head_hash"]
    if verified.get("checkpoint") is None:
        assert facts["Last checkpoint"] == "No checkpoint yet."
    assert facts["Checked"].endswith(" UTC")


def test_a_checkpoint_that_does_not_match_is_shown_as_such(berlin: Watched, world: World) -> None:
    page = berlin.page

    def with_checkpoint(route: Route) -> None:
        report = route.fetch().json()
        report["checkpoint"] = {"at": "2026-03-01T08:00:00Z", "count": 41, "matches": False}
        report["checkpoints_checked"] = 3
        route.fulfill(json=report)

    page.route("**/api/audit/verify", with_checkpoint)
    sign_in(page, world.token(ROLE_AUDIT_READ))
    page.locator("#integrity .verdict").wait_for()
    panel = page.locator("#integrity").inner_text()
    assert "written 2026-03-01 08:00:00 UTC, 41 records — does NOT match the trail." in panel
    assert "Checkpoints checked\n3" in panel or "Checkpoints checked\t3" in panel


def made(record: dict[str, Any]) -> tuple[datetime, int]:
    """When a record was made, to the millisecond the page compares, then its position."""
    at = datetime.fromisoformat(record["at"])
    return at.replace(microsecond=at.microsecond // 1000 * 1000), int(record["seq"])


def test_the_incident_report_prints_cleanly(berlin: Watched, world: World) -> None:
    page = berlin.page
    incident = world.records(incident=INCIDENT)
    sign_in(page, world.token(ROLE_AUDIT_READ))
    wait_for_entries(page, len(world.records()))
    page.get_by_role("button", name=f"Incident report for Incident {INCIDENT}").click()
    report = page.locator("#report-view")
    report.wait_for()
    assert page.locator("#report-title").inner_text() == f"Incident report: {INCIDENT}"
    assert page.evaluate("document.activeElement.id") == "report-view"
    tables = report.locator("table")
    assert tables.count() == 3
    current, decisions, timeline = (tables.nth(n) for n in range(3))
    # Oldest first by the time each record was made (positions order one second's records by
    # lane), every record of the incident once.
    seqs = [
        cell.split(" · #")[1]
        for cell in timeline.locator("tbody tr td:first-child").all_inner_texts()
    ]
    assert seqs == [r["seq"] for r in sorted(incident, key=made)]
    states = current.locator("tbody tr").all_inner_texts()
    assert any("Disable account" in s and "Sign-in disabled" in s for s in states)
    assert any("Revoke sessions" in s and "Sessions valid only from" in s for s in states)
    requests = decisions.locator("tbody tr").all_inner_texts()
    assert len(requests) == 2 and all(ENGINEER in r and "Requested" in r for r in requests)
    assert f"Verified up to #{incident[0]['seq']}" in report.inner_text() or "Verified up to #" in (
        report.inner_text()
    )

    page.emulate_media(media="print")
    assert report.is_visible()
    for hidden in ("header.top", "#session", "#trail-view", "#report-print", "#report-back"):
        assert page.locator(hidden).is_hidden(), hidden
    assert no_overflow(page)
    colour = page.evaluate("getComputedStyle(document.querySelector('#report-view')).color")
    assert colour == "rgb(0, 0, 0)"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
    page.screenshot(path=str(PRINT_SCREENSHOT), full_page=True)
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    page.emulate_media(media="screen")
    page.click("#report-back")
    assert page.locator("#trail-view").is_visible()


def test_the_json_lines_download_carries_the_records_as_hashed(
    berlin: Watched, world: World, tmp_path: Path
) -> None:
    page = berlin.page
    rows = world.records()
    sign_in(page, world.token(ROLE_AUDIT_READ))
    wait_for_entries(page, len(rows))
    with page.expect_download() as download_info:
        page.click("#download-jsonl")
    assert download_info.value.suggested_filename.endswith("Z.jsonl")
    saved = tmp_path / "audit.jsonl"
    download_info.value.save_as(saved)
    items = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]
    assert items[0]["type"] == "export" and items[-1]["type"] == "end"
    lines = [item for item in items if item["type"] == "record"]
    assert [str(line["position"]) for line in lines] == [r["seq"] for r in rows]
    assert [line["hash"] for line in lines] == [r["hash"] for r in rows]
    # Times as hashed: ISO 8601 in UTC, the zone written out.
    assert all(json.loads(line["body"])["at"].endswith(("Z", "+00:00")) for line in lines)


def test_the_page_fits_a_phone_in_every_view(phone: Watched, world: World) -> None:
    page = phone.page
    sign_in(page, world.token(ROLE_AUDIT_READ, ROLE_APPROVE, upn=LEAD))
    wait_for_entries(page, len(world.records()))
    assert no_overflow(page)
    page.click("#view-approvals")
    page.locator("#approvals li.approval").first.wait_for()
    page.wait_for_function(
        "() => document.querySelector('#approvals').getAttribute('aria-busy') === 'false'"
    )
    assert no_overflow(page)
    # On a phone the facts stack under their labels and the buttons share the width.
    buttons = page.locator("#approvals li.approval").first.locator(".decide button")
    widths = buttons.evaluate_all("ns => ns.map(n => n.getBoundingClientRect().width)")
    assert min(widths) > 100
    page.screenshot(path=str(APPROVALS_SCREENSHOT), full_page=True)
    page.click("#view-trail")
    page.get_by_role("button", name=f"Incident report for Incident {INCIDENT}").click()
    page.locator("#report-view table").first.wait_for()
    assert no_overflow(page)
    page.emulate_media(media="print")
    assert no_overflow(page)


def test_the_waiting_list_needs_the_approver_role(world: World) -> None:
    url = f"{world.base}/api/approvals"
    assert httpx.get(url).status_code == 401
    auditor = {"Authorization": f"Bearer {world.token(ROLE_AUDIT_READ)}"}
    refused = httpx.get(url, headers=auditor)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    lead = {"Authorization": f"Bearer {world.token(ROLE_APPROVE, upn=LEAD)}"}
    waiting = httpx.get(url, headers=lead).json()["approvals"]
    assert waiting, "the approver test below decides these; this one runs first"
    first = waiting[0]
    assert first["action_id"] in (world.held[LYNNE.id], world.held[KATIE.id])
    assert first["held_seq"] and first["expired"] is False
    assert [g["guard"] for g in first["guards"]][-1] == "approval"
    assert [w["expires_at"] for w in waiting] == sorted(w["expires_at"] for w in waiting)


def approval_titles(page: Page) -> list[str]:
    return page.locator("#approvals li.approval h3").all_inner_texts()


def test_an_approver_decides_held_actions_and_the_server_keeps_four_eyes(
    berlin: Watched, world: World
) -> None:
    page = berlin.page
    # The engineer who asked for the disables holds the approver role too: the page offers the
    # decision, the server refuses it.
    sign_in(page, world.token(ROLE_APPROVE, ROLE_AUDIT_READ, upn=ENGINEER))
    page.click("#view-approvals")
    page.locator("#approvals li.approval").nth(1).wait_for()
    assert page.locator("#view-approvals").inner_text() == "Waiting for approval (2)"
    lynne = page.locator("li.approval", has_text=LYNNE.user_principal_name)
    facts = lynne.locator("dl").inner_text()
    assert "Lynne Robbins" in facts and LYNNE.id in facts and "INC-2002" in facts
    assert "password spray hit" in facts and ENGINEER in facts
    assert "✗ stopped · approval: holds privileged roles (User Administrator)" in facts
    assert lynne.locator("time").last.inner_text().endswith(" UTC")
    lynne.get_by_label("Note for the trail (optional)").fill("my own request")
    lynne.get_by_role("button", name="Approve: ").click()
    refusal = lynne.locator("[role=alert]")
    refusal.wait_for()
    assert refusal.locator(".message").inner_text() == "The server refused this decision (403)."
    assert "requester cannot approve" in refusal.locator(".detail").inner_text()
    assert page.locator("#error").is_hidden()
    berlin.problems[:] = [p for p in berlin.problems if "403" not in p]
    assert len(approval_titles(page)) == 2  # nothing was decided
    page.click("#signout")

    # Another engineer, approver only: the page opens on the waiting actions.
    sign_in(page, world.token(ROLE_APPROVE, upn=LEAD))
    page.locator("#approvals li.approval").nth(1).wait_for()
    assert page.locator("#trail-view").is_hidden()
    katie = page.locator("li.approval", has_text=KATIE.user_principal_name)
    # The display name's markup is text: no image, no script (open_page checks for dialogs).
    assert KATIE.display_name in katie.locator("h3").inner_text()
    assert page.locator("#approvals img").count() == 0
    page.locator("li.approval", has_text=LYNNE.user_principal_name).get_by_role(
        "button", name="Reject: "
    ).click()
    page.wait_for_function("() => document.querySelectorAll('#approvals li.approval').length === 1")
    assert page.locator("#approvals-status").inner_text().startswith("Rejected at ")
    katie = page.locator("li.approval", has_text=KATIE.user_principal_name)
    katie.get_by_label("Note for the trail (optional)").fill("confirmed compromised")
    katie.get_by_role("button", name="Approve: ").press("Enter")  # from the keyboard
    page.locator("#approvals .empty").wait_for()
    assert page.locator("#approvals").inner_text() == "No action waits for approval."
    assert "The action is queued to run." in page.locator("#approvals-status").inner_text()

    world.api.call(_pump)
    assert not world.sim.user(KATIE.id).account_enabled
    assert world.sim.user(LYNNE.id).account_enabled
    decided = {r["target"]: r for r in world.records(outcome="action.rejected")}
    assert decided[LYNNE.id]["actor"] == LEAD
    katie_rows = world.records(target=KATIE.id)
    approved = next(r for r in katie_rows if r["event"] == "action.approved")
    assert (approved["actor"], approved["reason"]) == (LEAD, "confirmed compromised")
    assert katie_rows[0]["event"] == "action.executed"


def test_a_notice_link_opens_the_incident_or_the_approvals_view(
    berlin: Watched, world: World
) -> None:
    """Notices link to `?incident=<id>` and, for held actions, to `?view=approvals`."""
    page = berlin.page
    page.goto(f"{world.base}/api/audit/ui?incident={INCIDENT}")
    sign_in(page, world.token(ROLE_AUDIT_READ))
    expected = [r["seq"] for r in world.records(incident=INCIDENT)]
    assert expected and len(expected) < len(world.records())
    wait_for_entries(page, len(expected))
    assert shown_seqs(page) == expected
    assert page.locator("#f-incident").input_value() == INCIDENT

    page.goto(f"{world.base}/api/audit/ui?view=approvals")
    wait_for_entries(page, len(world.records()))  # the tab's session kept the auditor's token
    page.click("#signout")
    sign_in(page, world.token(ROLE_AUDIT_READ, ROLE_APPROVE, upn=LEAD))
    # The list as the server has it (earlier tests of this module may have decided some).
    page.wait_for_function("() => document.querySelector('#approvals-count').textContent !== ''")
    assert page.locator("#approvals-view").is_visible()
    assert page.locator("#trail-view").is_hidden()
