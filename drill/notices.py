"""What a drill told the people on call: after the scenario, the notice dispatcher's timer and
the sender's queue trigger run until nothing is left, and the simulated tenant's Workflows
webhook, mailbox and comment endpoints are read back, one line per notice."""

from __future__ import annotations

import re

from drill.context import DrillContext
from shared.adapters.notice_queue import InMemoryNoticeQueue
from shared.simulator import SimulatedTenant, SimUser

DRILL_MAILBOX = SimUser(
    id="6e5d4c3b-2a19-4f08-8e7d-6c5b4a392817",
    user_principal_name="responder-notices@contoso.onmicrosoft.com",
    display_name="M365 Responder notices",
)
DRILL_RECIPIENTS = "held,failed,breakglass,readiness=oncall@contoso.com;*=soc@contoso.com"
DRILL_PAGE = "https://responder.example/api/audit/ui"
# The workspace the drills' Sentinel incidents come from.
DRILL_WORKSPACE = (
    "/subscriptions/6a1b2c3d-0000-4000-8000-00000000c0de/resourceGroups/rg-sentinel/providers/"
    "Microsoft.OperationalInsights/workspaces/law-sentinel"
)
SENTINEL_INCIDENT = "sentinel:/subscriptions/"
# The most dispatcher passes a drill waits for (a pass reads every record up to the head).
MAX_PASSES = 50
_ESCAPE = re.compile(r"\\(.)")


def notice_settings(sim: SimulatedTenant) -> dict[str, str]:
    """Every channel on, aimed at the simulated tenant."""
    return {
        "NOTICE_TEAMS_WEBHOOK_URL": sim.workflow_url,
        "NOTICE_MAIL_SENDER": DRILL_MAILBOX.user_principal_name,
        "NOTICE_MAIL_ROUTES": DRILL_RECIPIENTS,
        "NOTICE_ALERT_COMMENTS": "true",
        "SENTINEL_WORKSPACE_ID": DRILL_WORKSPACE,
        "ARM_BASE_URL": sim.arm_base_url,
        "NOTICE_PAGE_URL": DRILL_PAGE,
    }


def prepare_notices(sim: SimulatedTenant) -> None:
    """The sender mailbox with its scoped Application Mail.Send, and the Sentinel Responder
    role on the drill's workspace."""
    try:
        sim.user(DRILL_MAILBOX.id)
    except KeyError:
        sim.add_user(SimUser(**vars(DRILL_MAILBOX)))
    sim.allow_mail_sender(DRILL_MAILBOX.user_principal_name)
    sim.grant_sentinel_responder(DRILL_WORKSPACE)


async def deliver_notices(ctx: DrillContext) -> list[str]:
    """Dispatch and send every notice the scenario's records call for; one line per notice or
    comment the simulated tenant received. Sets the metrics `notifications_sent` and
    `comments_posted`."""
    services = ctx.services
    queue = services.notice_queue
    assert isinstance(queue, InMemoryNoticeQueue)
    # Sentinel holds the incidents it sent the responder: the simulated one learns of them here.
    async for record in services.audit_store.newest_first():
        alert = record.entry.alert_id or ""
        if alert.startswith(SENTINEL_INCIDENT):
            ctx.sim.add_sentinel_incident(alert.removeprefix("sentinel:"))
    for _ in range(MAX_PASSES):
        await ctx.host.fire_timer("dispatch_notices")
        await ctx.host.pump_through_time(queue, ctx.clock, "send_notice")
        cursor = await services.notice_rows.cursor()
        heads = await services.audit_store.heads()
        if cursor is None or all(cursor.done.get(n, 0) >= h.seq for n, h in heads.items()):
            break
    lines = [f"teams: {_card_line(card)}" for card in ctx.sim.cards()]
    for mail in ctx.sim.mail():
        to = ", ".join(r["emailAddress"]["address"] for r in mail.message["toRecipients"])
        lines.append(f"mail to {to}: {mail.message['subject']}")
    comments = 0
    for alert_id, posted in ctx.sim.commented_alerts().items():
        comments += len(posted)
        lines += [f"comment on alert {alert_id}: {_first(c['comment'])}" for c in posted]
    for incident, by_id in ctx.sim.commented_incidents().items():
        comments += len(by_id)
        name = incident.rsplit("/", 1)[-1]
        lines += [
            f"comment on incident {name}: {_first(c['properties']['message'])}"
            for c in by_id.values()
        ]
    ctx.metrics["notifications_sent"] = len(ctx.sim.cards()) + len(ctx.sim.mail())
    ctx.metrics["comments_posted"] = comments
    return lines


def _card_line(card: dict[str, object]) -> str:
    attachments = card.get("attachments")
    assert isinstance(attachments, list)
    body = attachments[0]["content"]["body"]
    texts = [_ESCAPE.sub(r"\1", b["text"]) for b in body[:2] if b.get("type") == "TextBlock"]
    return " - ".join(texts)


def _first(text: str) -> str:
    return text.splitlines()[0] if text else ""
