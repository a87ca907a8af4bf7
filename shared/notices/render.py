"""How a notice reads: an Adaptive Card for a Teams Workflows webhook, an HTML e-mail for Graph
`sendMail`, plain text for a comment on the alert.

Every text that comes from an alert (titles, UPNs, display names, rule reasons) is
attacker-influenced. Adaptive Card TextBlocks and facts render a Markdown subset, links
included, so such text has every ASCII punctuation character backslash-escaped (CommonMark's
escape rule): no link, emphasis, list or `<at>` mention survives. E-mail bodies are HTML-escaped.
Lone UTF-16 surrogates, which no JSON consumer accepts, become U+FFFD everywhere.
"""

from __future__ import annotations

import html
import re
import string
from typing import Any
from urllib.parse import quote

from shared.notices.model import Notice, NoticeClass, NoticeItem

# Items shown in full in one notice; the rest are counted.
MAX_ITEMS_SHOWN = 10
MAX_FIELD_CHARS = 300
APPROVALS_VIEW = "view=approvals"
CARD_VERSION = "1.4"

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_MARKDOWN_SPECIAL = re.compile("([" + re.escape(string.punctuation) + "])")

_DONE = {
    "disable_account": ("account disabled", "accounts disabled"),
    "enable_account": ("account enabled", "accounts enabled"),
    "revoke_sessions": ("user's sessions revoked", "users' sessions revoked"),
    "block_ip": ("address blocked", "addresses blocked"),
    "unblock_ip": ("address unblocked", "addresses unblocked"),
    "activate_breakglass": ("emergency access activation", "emergency access activations"),
    "deactivate_breakglass": ("emergency access deactivation", "emergency access deactivations"),
}
_STATE = {
    NoticeClass.EXECUTED: "done",
    NoticeClass.HELD: "waiting for approval",
    NoticeClass.REFUSED: "refused by a guard",
    NoticeClass.FAILED: "failed",
    NoticeClass.BREAKGLASS: "done",
    NoticeClass.BLOCK_EXPIRED: "done (the temporary block expired)",
    NoticeClass.READINESS: "raised",
}
_TITLES = {
    NoticeClass.EXECUTED: "Contained",
    NoticeClass.HELD: "Waiting for approval",
    NoticeClass.REFUSED: "Refused by a guard",
    NoticeClass.FAILED: "Failed",
    NoticeClass.BREAKGLASS: "Emergency access",
    NoticeClass.BLOCK_EXPIRED: "Temporary block expired",
    NoticeClass.READINESS: "Responder not ready",
}


def clean(text: object, limit: int = MAX_FIELD_CHARS) -> str:
    """`text` as safe plain text: lone surrogates replaced, control characters dropped, cut to
    `limit` characters."""
    value = _CONTROL.sub("", _SURROGATE.sub("\ufffd", str(text)))
    return value if len(value) <= limit else value[: limit - 1] + "…"


def markdown_literal(text: object, limit: int = MAX_FIELD_CHARS) -> str:
    """`text` shown literally in an Adaptive Card TextBlock or fact (Markdown subset)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", clean(text, limit)).replace("\n", " ")


def html_literal(text: object, limit: int = MAX_FIELD_CHARS) -> str:
    return html.escape(clean(text, limit), quote=True)


def summary(notice: Notice) -> str:
    """One line: "312 addresses blocked", "2 accounts disabled waiting for approval"."""
    if notice.cls is NoticeClass.READINESS:
        return f"{notice.total} readiness finding{'s' if notice.total != 1 else ''}"
    parts = []
    for kind, count in sorted(notice.counts.items()):
        one, many = _DONE.get(kind, (kind, kind))
        parts.append(f"{count} {one if count == 1 else many}")
    text = ", ".join(parts) or f"{notice.total} records"
    state = _STATE[notice.cls]
    return text if state == "done" else f"{text}: {state}"


def title(notice: Notice) -> str:
    where = "" if notice.incident == "-" else f" · incident {clean(notice.incident, 80)}"
    return f"{_TITLES[notice.cls]}{where}"


def incident_link(page_url: str, notice: Notice) -> str:
    if notice.incident == "-":
        return page_url
    return f"{page_url}?incident={quote(clean(notice.incident, 256), safe='')}"


def approvals_link(page_url: str) -> str:
    return f"{page_url}?{APPROVALS_VIEW}"


def _facts(item: NoticeItem) -> list[tuple[str, str]]:
    who = (
        " ".join(p for p in (item.display_name, f"({item.upn})" if item.upn else "") if p)
        or item.target
    )
    facts = [
        ("What", item.kind or item.event),
        ("Whom", f"{who} [{item.target}]" if who != item.target else item.target),
        ("Why", item.reason),
        ("Rule", item.rule),
        ("Alert", item.alert_id),
        ("Guards", "; ".join(item.guards)),
        ("Error", item.error),
        ("Expires", item.expires_at),
        ("Action id", item.action_id),
        ("Audit record", f"#{item.seq}"),
    ]
    return [(name, value) for name, value in facts if value]


def _shown(notice: Notice) -> tuple[list[NoticeItem], int]:
    shown = list(notice.items[:MAX_ITEMS_SHOWN])
    return shown, notice.total - len(shown)


def teams_card(notice: Notice, page_url: str | None) -> dict[str, Any]:
    """The body a Workflows "post to a channel when a webhook request is received" flow takes:
    a message with one Adaptive Card attachment."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": markdown_literal(title(notice)),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
        },
        {"type": "TextBlock", "text": markdown_literal(summary(notice)), "wrap": True},
    ]
    shown, hidden = _shown(notice)
    for item in shown:
        body.append(
            {
                "type": "FactSet",
                "separator": True,
                "facts": [
                    {"title": name, "value": markdown_literal(value)}
                    for name, value in _facts(item)
                ],
            }
        )
    if hidden > 0 or notice.folded:
        body.append(
            {"type": "TextBlock", "text": markdown_literal(_more(hidden, notice)), "wrap": True}
        )
    actions = []
    if page_url:
        actions.append(
            {
                "type": "Action.OpenUrl",
                "title": "Audit trail",
                "url": incident_link(page_url, notice),
            }
        )
        if notice.cls is NoticeClass.HELD:
            actions.append(
                {
                    "type": "Action.OpenUrl",
                    "title": "Waiting for approval",
                    "url": approvals_link(page_url),
                }
            )
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
    }
    if actions:
        card["actions"] = actions
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _more(hidden: int, notice: Notice) -> str:
    parts = []
    if hidden > 0:
        parts.append(f"and {hidden} more in the audit trail")
    if notice.folded:
        parts.append(f"{notice.folded} further incidents folded in (notice rate limit)")
    return "; ".join(parts)


def mail_subject(notice: Notice) -> str:
    return clean(f"[Responder] {title(notice)}: {summary(notice)}", 250)


def mail_html(notice: Notice, page_url: str | None) -> str:
    """The e-mail body (HTML, every value escaped). No approve link: approval needs the page's
    sign-in."""
    rows = []
    shown, hidden = _shown(notice)
    for item in shown:
        cells = "".join(
            f'<tr><th align="left">{html_literal(name)}</th><td>{html_literal(value)}</td></tr>'
            for name, value in _facts(item)
        )
        rows.append(f"<table>{cells}</table><hr>")
    links = []
    if page_url:
        links.append(f'<a href="{html.escape(incident_link(page_url, notice))}">Audit trail</a>')
        if notice.cls is NoticeClass.HELD:
            links.append(
                f'<a href="{html.escape(approvals_link(page_url))}">Waiting for approval</a>'
            )
    more = f"<p>{html_literal(_more(hidden, notice))}</p>" if hidden > 0 or notice.folded else ""
    return (
        f"<h2>{html_literal(title(notice))}</h2><p>{html_literal(summary(notice))}</p>"
        + "".join(rows)
        + more
        + (f"<p>{' · '.join(links)}</p>" if links else "")
    )


def comment_text(notice: Notice, marker: str) -> str:
    """A comment for the originating alert: what was done, with audit record numbers. The
    marker (the task id) lets a redelivery see that the comment exists already."""
    lines = [f"M365 Responder: {summary(notice)}"]
    shown, hidden = _shown(notice)
    for item in shown:
        whom = item.upn or item.target
        lines.append(
            f"- {clean(item.kind or item.event, 40)} {clean(whom, 120)}: "
            f"{clean(item.event, 40)} (audit record #{item.seq})"
        )
    if hidden > 0:
        lines.append(f"- and {hidden} more (audit records #{notice.first_seq}..#{notice.last_seq})")
    lines.append(f"[{marker}]")
    return "\n".join(lines)
