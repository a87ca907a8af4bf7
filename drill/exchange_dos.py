"""Drill `exchange-dos`: shortly after midnight thousands of forged requests hit Exchange Online.
A burst of alerts names a few hundred attacker addresses, with duplicates, and some addresses
the guards must refuse. At the end every permitted address is blocked exactly once across the
product's transport rules, no refused one is, and a day later the blocks lift themselves."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from drill.context import DrillContext, Scenario
from shared.actions.ip_blocks import exchange_range, is_managed
from shared.models import AuditEvent
from shared.ports import TransportRule
from shared.simulator import SimulatedTenant

PARTNER_NETWORK = "52.96.0.0/14"
# Addresses the guards refuse, each for another reason; the last never even parses.
REFUSED = [
    "10.20.30.40",  # private
    "192.168.7.20",  # private
    "127.0.0.1",  # loopback
    "fe80::1",  # link-local
    "198.51.100.7",  # documentation range, not routable
    "52.96.10.20",  # the partner network on the allow-list
    "185.221.0.0/16",  # broader than /24
    "0.0.0.0/0",  # everything
]
JUNK = "185.220.101.9; Remove-TransportRule *"
POLLED_SHARE = 0.1
WRITES = ("new-transportrule", "set-transportrule", "remove-transportrule")
TTL = timedelta(days=1)
# A rule the mail team made; the responder must never touch it.
FOREIGN_RULE = {
    "Name": "Partner relay - bypass spam filtering",
    "Comments": "Owned by the messaging team.",
    "SenderIpRanges": ["52.96.10.0/24"],
    "Mode": "Enforce",
    "StopRuleProcessing": False,
}


async def _post_all(ctx: DrillContext, posts: list[Any], in_flight: int) -> None:
    """POST `posts` in order to the webhook, `in_flight` at a time."""
    pending = iter(posts)

    async def sender() -> None:
        for post in pending:
            await ctx.post_alert(post)

    async with asyncio.TaskGroup() as senders:  # one failing stops the others
        for _ in range(in_flight):
            senders.create_task(sender())


def attacker_addresses(count: int) -> list[str]:
    """Public addresses: mostly IPv4 from two botnet-heavy /16s, every tenth an IPv6 /64."""
    addresses = []
    for n in range(count):
        if n % 10 == 9:
            addresses.append(f"2a0b:f4c2:{n // 256:x}:{n % 256:x}::/64")
        else:
            addresses.append(f"185.{220 + n // 50000}.{100 + (n // 250) % 150}.{n % 250 + 1}")
    return addresses


def webhook_alert(n: int, names: list[str]) -> dict[str, Any]:
    return {
        "source": "generic",
        "id": f"mailflow-flood-{n:05d}",
        "title": "Forged SMTP submissions flooding Exchange Online",
        "severity": "high",
        "category": "Impact",
        "provider": "mail-gateway",
        "entities": [{"kind": "ip", "address": name, "roles": ["attacker"]} for name in names],
    }


def graph_alert(n: int, names: list[str], now: datetime) -> dict[str, Any]:
    stamp = (now - timedelta(seconds=60) + timedelta(milliseconds=n)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    return {
        "@odata.type": "#microsoft.graph.security.alert",
        "id": f"do{n:016d}_{n}",
        "title": "Unusual volume of inbound mail from a single source",
        "severity": "medium",
        "category": "Impact",
        "serviceSource": "microsoftDefenderForOffice365",
        "lastUpdateDateTime": stamp,
        "createdDateTime": stamp,
        "evidence": [
            {
                "@odata.type": "#microsoft.graph.security.ipEvidence",
                "ipAddress": name,
                "roles": ["attacker"],
                "verdict": "malicious",
            }
            for name in names
        ],
    }


class ExchangeDos(Scenario):
    name = "exchange-dos"
    description = (
        "Thousands of forged requests flood Exchange Online; alerts name a few hundred "
        "attacker addresses, with duplicates and addresses the guards must refuse."
    )

    def __init__(
        self,
        alerts: int = 5000,
        addresses: int = 300,
        seed: int = 7,
        per_post: int = 1,
        in_flight: int = 1,
    ) -> None:
        """`per_post` above 1 sends the webhook storm as list pages of that many Graph alerts
        (what a Logic App forwarding a query result sends), rather than one alert per POST;
        `in_flight` POSTs are under way at once (the Functions host runs an async function's
        invocations side by side on one event loop), each sent when an earlier one ends."""
        if in_flight < 1:
            raise ValueError("in_flight is at least 1")
        self.in_flight = in_flight
        self.alerts = alerts
        self.per_post = per_post
        self.attackers = attacker_addresses(addresses)
        rng = random.Random(seed)
        self._burst: list[tuple[int, list[str]]] = []
        for n in range(alerts):
            names = rng.sample(self.attackers, k=rng.choice((1, 1, 2, 3)))
            if rng.random() < 0.05:
                names.append(rng.choice([*REFUSED, JUNK]))
            self._burst.append((n, names))
        # Every refused address shows up at least once, and some alerts arrive twice.
        self._burst[1][1].extend([*REFUSED, JUNK])
        self._repeats = [self._burst[i] for i in range(0, alerts, 97)]
        self._polled = int(alerts * POLLED_SHARE)
        self._at_containment: list[str] = []
        self._after_expiry: list[str] = []

    def settings(self) -> dict[str, Any]:
        return {"RESPONDER_IP_ALLOWLIST": PARTNER_NETWORK}

    def prepare(self, sim: SimulatedTenant, now: datetime) -> None:
        sim.add_transport_rule(FOREIGN_RULE)
        for n, names in self._burst[: self._polled]:
            sim.add_alert(graph_alert(n, names, now))

    async def drive(self, ctx: DrillContext) -> None:
        async def feed() -> None:
            await ctx.poll()
            ctx.mark("alert", f"webhook storm: {self.alerts - self._polled} alerts")
            webhook = self._burst[self._polled :] + self._repeats
            posts: list[Any]
            if self.per_post > 1:
                now = ctx.clock()
                posts = []
                for start in range(0, len(webhook), self.per_post):
                    page = webhook[start : start + self.per_post]
                    alerts = [graph_alert(n, ns, now) for n, ns in page]
                    for alert in alerts:
                        # Defender holds every alert it forwards: comments on it land.
                        ctx.sim.add_alert(alert)
                    posts.append({"value": alerts})
            else:
                posts = [webhook_alert(n, names) for n, names in webhook]
            await _post_all(ctx, posts, self.in_flight)
            ctx.mark("alert", "storm over")

        ctx.metrics["alerts_sent"] = self.alerts + len(self._repeats)
        await ctx.run_with_executor(feed)
        exchange = ctx.services.exchange
        ctx.metrics["exchange_calls"] = exchange.calls if exchange else 0
        cmdlets = [cmdlet for cmdlet, _ in ctx.sim.exchange_calls]
        ctx.metrics["exchange_calls_by_cmdlet"] = dict(Counter(cmdlets))
        writes = Counter(
            str(params.get("Identity") or params.get("Name"))
            for cmdlet, params in ctx.sim.exchange_calls
            if cmdlet.lower() in WRITES
        )
        ctx.metrics["exchange_writes_per_shard"] = dict(sorted(writes.items()))
        rules = _managed_rules(ctx)
        ctx.metrics["transport_rule_shards"] = len(rules)
        self._at_containment = [rng for rule in rules for rng in rule.ranges]

        ctx.clock.advance(TTL + timedelta(minutes=1))
        ctx.mark("revert", "a day later: the sweep timer fires, scheduled unblocks come due")
        await ctx.host.fire_timer("sweep_ip_blocks")
        await ctx.drain()
        self._after_expiry = [rng for rule in _managed_rules(ctx) for rng in rule.ranges]

    async def checks(self, ctx: DrillContext) -> dict[str, bool]:
        wanted = {exchange_range(a if "/" in a else f"{a}/32") for a in self.attackers}
        blocked = self._at_containment
        refused = {exchange_range(a if "/" in a else f"{a}/32") for a in REFUSED}
        records = [r async for r in ctx.services.audit_store.newest_first()]
        unblocked = [
            r
            for r in records
            if r.entry.event is AuditEvent.ACTION_EXECUTED and r.entry.kind == "unblock_ip"
        ]
        ctx.metrics["addresses_blocked"] = len(set(blocked))
        ctx.metrics["addresses_unblocked_after_ttl"] = len(unblocked)
        return {
            "every attacker address blocked": wanted <= set(blocked),
            "each address in exactly one rule": len(blocked) == len(set(blocked)),
            "no refused address blocked": not (refused & set(blocked)),
            "nothing but attacker addresses blocked": set(blocked) <= wanted,
            "the junk entry never reached Exchange": not any(
                "Remove-TransportRule *" in str(params) for _, params in ctx.sim.exchange_calls
            ),
            "every block lifted after its day": not self._after_expiry
            and len(unblocked) == len(wanted),
            "the mail team's own rule untouched": _foreign(ctx) == FOREIGN_RULE["SenderIpRanges"],
        }


def _managed_rules(ctx: DrillContext) -> list[TransportRule]:
    return [_rule(rule) for rule in ctx.sim.transport_rules if is_managed(_rule(rule))]


def _foreign(ctx: DrillContext) -> list[str]:
    found = [r for r in ctx.sim.transport_rules if r["Name"] == FOREIGN_RULE["Name"]]
    return list(found[0]["SenderIpRanges"]) if found else []


def _rule(item: dict[str, Any]) -> TransportRule:
    return TransportRule(
        name=str(item["Name"]),
        ranges=tuple(item.get("SenderIpRanges") or ()),
        comments=str(item.get("Comments") or ""),
    )
