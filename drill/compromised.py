"""Drill `compromised-account`: Defender flags a user as compromised after a password spray,
another alert names an emergency access account, and a Sentinel playbook posts a high-severity
incident twice. Identities are fictitious (contoso.onmicrosoft.com)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from drill.context import DrillContext, Scenario
from shared.actions.ip_blocks import exchange_range, is_managed
from shared.ports import TransportRule
from shared.simulator import SimulatedTenant, SimUser

DOMAIN = "contoso.onmicrosoft.com"
ATTACKER_ADDRESS = "185.220.101.77"


def _user(uid: str, name: str, enabled: bool = True) -> SimUser:
    return SimUser(
        id=uid,
        user_principal_name=f"{name}@{DOMAIN}",
        display_name=name.replace(".", " ").title(),
        account_enabled=enabled,
    )


ADELE = _user("5b2f3d0e-1c4a-4e8b-9f6d-2a7c8e1b4d01", "adele.vance")
GRADY = _user("8c1e7a52-3f9b-4d26-a0e4-6b5d9c2f7a13", "grady.archie")
BREAK_GLASS = _user("0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d20", "bg-emergency-01")
BYSTANDER = _user("2d4f6b8a-9c1e-4a3b-8e5d-7f0a2c4e6b31", "megan.bowen")


def _user_evidence(user: SimUser, roles: list[str], verdict: str) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.security.userEvidence",
        "createdDateTime": None,
        "verdict": verdict,
        "remediationStatus": "none",
        "roles": roles,
        "tags": [],
        "userAccount": {
            "accountName": user.user_principal_name.split("@")[0],
            "domainName": DOMAIN,
            "userSid": "S-1-12-1-1111111111-2222222222-3333333333-4444444444",
            "azureAdUserId": user.id,
            "userPrincipalName": user.user_principal_name,
            "displayName": user.display_name,
        },
    }


def _ip_evidence(address: str) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.security.ipEvidence",
        "verdict": "malicious",
        "remediationStatus": "none",
        "roles": ["attacker"],
        "ipAddress": address,
        "countryLetterCode": "NL",
    }


def _graph_alert(
    alert_id: str, title: str, updated: datetime, evidence: list[dict[str, Any]]
) -> dict[str, Any]:
    stamp = updated.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    return {
        "@odata.type": "#microsoft.graph.security.alert",
        "id": alert_id,
        "providerAlertId": alert_id.split("_")[-1],
        "incidentId": "4711",
        "status": "new",
        "severity": "high",
        "classification": None,
        "determination": None,
        "serviceSource": "microsoftDefenderForIdentity",
        "detectionSource": "microsoftDefenderForIdentity",
        "title": title,
        "category": "CredentialAccess",
        "createdDateTime": stamp,
        "lastUpdateDateTime": stamp,
        "evidence": evidence,
    }


def _compromised_alerts(now: datetime) -> list[dict[str, Any]]:
    return [
        _graph_alert(
            "da637551227677560813_-961444813",
            "Password spray followed by a successful sign-in",
            now - timedelta(seconds=40),
            [
                _user_evidence(ADELE, ["compromised"], "malicious"),
                # A routable address (documentation ranges are refused), so the block runs.
                _ip_evidence(ATTACKER_ADDRESS),
            ],
        ),
        _graph_alert(
            "da637551227677560813_-961444999",
            "Suspicious sign-in to an emergency access account",
            now - timedelta(seconds=20),
            [_user_evidence(BREAK_GLASS, ["compromised"], "suspicious")],
        ),
    ]


SENTINEL_INCIDENT: dict[str, Any] = {
    "eventUniqueId": "7e4e9a53-6a4c-4c61-8f8e-2b0f5c7d1a11",
    "objectSchemaType": "Incident",
    "objectEventType": "Create",
    "workspaceInfo": {
        "SubscriptionId": "6a1b2c3d-0000-4000-8000-00000000c0de",
        "ResourceGroupName": "rg-sentinel",
        "WorkspaceName": "law-sentinel",
    },
    "workspaceId": "1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b",
    "object": {
        "id": "/subscriptions/6a1b2c3d-0000-4000-8000-00000000c0de/resourceGroups/rg-sentinel/"
        "providers/Microsoft.OperationalInsights/workspaces/law-sentinel/providers/"
        "Microsoft.SecurityInsights/Incidents/3c9d2f1e-8b7a-4c6d-9e5f-1a2b3c4d5e6f",
        "name": "3c9d2f1e-8b7a-4c6d-9e5f-1a2b3c4d5e6f",
        "etag": '"0300c1a2-0000-0d00-0000-65f1a2b30000"',
        "type": "Microsoft.SecurityInsights/Incidents",
        "properties": {
            "title": "Mass download by a user after impossible travel",
            "severity": "High",
            "status": "New",
            "incidentNumber": 1287,
            "createdTimeUtc": "2026-11-26T00:03:11.4211432Z",
            "lastModifiedTimeUtc": "2026-11-26T00:03:12.1017715Z",
            "relatedEntities": [
                {
                    "kind": "Account",
                    "properties": {
                        "accountName": "grady.archie",
                        "upnSuffix": DOMAIN,
                        "aadUserId": GRADY.id,
                        "friendlyName": "Grady Archie",
                    },
                },
                {
                    "kind": "Ip",
                    "properties": {"address": "198.51.100.23", "friendlyName": "198.51.100.23"},
                },
            ],
        },
    },
}


def _blocked_at_the_mail_edge(sim: SimulatedTenant, address: str) -> bool:
    wanted = exchange_range(f"{address}/32")
    for item in sim.transport_rules:
        rule = TransportRule(
            name=str(item["Name"]),
            ranges=tuple(item.get("SenderIpRanges") or ()),
            comments=str(item.get("Comments") or ""),
        )
        if is_managed(rule) and wanted in rule.ranges:
            return True
    return False


def _tenant_checks(sim: SimulatedTenant) -> dict[str, bool]:
    adele, grady = sim.user(ADELE.id), sim.user(GRADY.id)
    guard, bystander = sim.user(BREAK_GLASS.id), sim.user(BYSTANDER.id)
    return {
        "attacker address blocked at the mail edge": _blocked_at_the_mail_edge(
            sim, ATTACKER_ADDRESS
        ),
        "adele.vance disabled": not adele.account_enabled,
        "adele.vance sessions revoked": adele.revocations >= 1,
        "grady.archie disabled": not grady.account_enabled,
        "grady.archie sessions revoked": grady.revocations >= 1,
        "break-glass account untouched": guard.account_enabled and guard.revocations == 0,
        "bystander untouched": bystander.account_enabled and bystander.revocations == 0,
    }


class CompromisedAccount(Scenario):
    name = "compromised-account"
    description = (
        "Defender flags a user as compromised after a password spray; another alert names an "
        "emergency access account; a Sentinel playbook posts a high-severity incident twice."
    )

    def settings(self) -> dict[str, Any]:
        return {"RESPONDER_PROTECTED_IDENTITIES": BREAK_GLASS.id}

    def prepare(self, sim: SimulatedTenant, now: datetime) -> None:
        for user in (ADELE, GRADY, BREAK_GLASS, BYSTANDER):
            sim.add_user(user)
        for alert in _compromised_alerts(now):
            sim.add_alert(alert)

    async def drive(self, ctx: DrillContext) -> None:
        await ctx.poll()
        for _ in range(2):
            await ctx.post_alert(
                SENTINEL_INCIDENT, "webhook ingest_alert receives a Sentinel incident"
            )
        await ctx.drain()

    async def checks(self, ctx: DrillContext) -> dict[str, bool]:
        return _tenant_checks(ctx.sim)


# The alert shapes, for drills built on this one (chaos).
graph_alert = _graph_alert
user_evidence = _user_evidence
