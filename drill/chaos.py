"""Drill `chaos`: the compromised-account and exchange-dos flows at once, under fire.

Alerts come in as in production: a Sentinel playbook posts incidents to the webhook (and retries
as a Logic App's default policy does: on no answer, 408, 429 and 5xx, up to 4 times at 7.5, 15,
30 and 45 seconds), and the `poll_alerts` timer reads Graph `security/alerts_v2`. The executor
takes the in-memory Service Bus queue with its peek-lock semantics. Every timer the app registers
fires on a short period, and a Service Bus trigger on the dead-letter queue, if the app has one,
gets the dead letters; whatever reconciler or dead-letter job the app has is found at run time,
none is assumed.

Meanwhile:
- a share of Graph and Exchange calls is answered 429 (Graph with `Retry-After`; Exchange's
  throttling carries none) or 503, and a smaller share times out (the simulator answers after
  the client gave up, and carries a write out all the same);
- storage goes away mid-run: Azurite is stopped and started again on the same port with its
  data;
- the worker dies at each crash point: the ports and adapters the container builds are wrapped,
  and at the chosen call a `WorkerKilled` (a BaseException, as a dying process does not run
  `except Exception` handlers) ends the invocation; everything that invocation still tries
  fails the same way. A message whose invocation died comes back when its lock expires, a
  webhook call whose invocation died gets no answer (so the sender retries), a timer runs again
  on its next tick.

The report counts alerts in; actions planned, executed, failed and lost (lost: the alert was
accepted or polled, yet the action has no outcome record and the tenant does not show its
effect); duplicate tenant writes from the simulator's write log; outcome records per action; and
the chain verification. Any loss or duplicate fails the drill. The crash machinery is in
drill/crashes.py, the host that plays the Functions host under it in drill/chaos_host.py.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from drill.chaos_host import ChaosHost, SenderLog
from drill.compromised import DOMAIN, SENTINEL_INCIDENT, graph_alert, user_evidence
from drill.context import DrillContext, Scenario
from drill.crashes import (
    Saboteur,
    crash_points,
    dropped_message,
    network_key,
    wrap_container,
)
from drill.exchange_dos import (
    FOREIGN_RULE,
    JUNK,
    PARTNER_NETWORK,
    REFUSED,
    attacker_addresses,
    webhook_alert,
)
from drill.exchange_dos import graph_alert as dos_graph_alert
from shared.actions.ip_blocks import is_managed
from shared.models import ActionKind, AuditRecord
from shared.ports import TransportRule
from shared.simulator import Fault, SimulatedTenant, SimUser

# Audit events that do not end an action; every other `action.*` event is an outcome.
NOT_OUTCOMES = frozenset({"action.planned", "action.held", "action.approved"})
USER_KINDS = frozenset({str(ActionKind.DISABLE_ACCOUNT), str(ActionKind.REVOKE_SESSIONS)})
BREAK_GLASS = SimUser(
    id="0f9a6c3d-7e21-4b58-8d4f-1c3e5a7b9d20",
    user_principal_name=f"bg-emergency-01@{DOMAIN}",
    display_name="Bg Emergency 01",
)
BYSTANDER = SimUser(
    id="2d4f6b8a-9c1e-4a3b-8e5d-7f0a2c4e6b31",
    user_principal_name=f"megan.bowen@{DOMAIN}",
    display_name="Megan Bowen",
)


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosOptions:
    """Sizes and fault rates; `responder drill --scenario chaos --set NAME=VALUE` sets them."""

    users: int = 40  # compromised users, half polled from Graph, half posted by Sentinel
    dos_alerts: int = 300  # exchange-dos alerts, a tenth polled, the rest posted
    addresses: int = 100  # attacker addresses the dos alerts draw from
    feed_s: float = 0.0  # how long alerts keep coming (0: outage_at_s + outage_s + 20)
    outage_at_s: float = 30.0  # when storage goes down, from the first alert
    outage_s: float = 120.0  # how long storage stays down
    throttle_rate: float = 0.2  # Graph and Exchange calls answered 429 or 503 (half each)
    timeout_rate: float = 0.03  # Graph and Exchange calls answered after the client's timeout
    retry_after_s: int = 1  # Retry-After of Graph's 429
    graph_timeout_s: float = 2.0  # the client timeout (GRAPH_TIMEOUT_SECONDS)
    # ACTIONS_WRITE_SETTLE_SECONDS: longer than a timed-out write takes to land here (it is
    # carried out graph_timeout_s + 1 s after it was sent)
    write_settle_s: float = 10.0
    crash_points: bool = True  # kill the worker at each crash point
    drop_one_message: bool = False  # drop one action message on its way to the queue (tests)
    sender_retry_scale: float = 1.0  # multiplies the Logic App retry intervals
    lock_s: float = 5.0  # peek-lock duration: a dead worker's message comes back after it
    timer_period_s: float = 5.0  # every timer function fires this often
    settle_rounds: int = 3  # after the feed: move the clock on, fire timers, drain (at least)
    settle_step_min: int = 15
    max_settle_s: float = 300.0
    seed: int = 11

    def __post_init__(self) -> None:
        needed = 6 if self.drop_one_message else 5 if self.crash_points else 1
        if self.users < needed:
            raise ValueError(f"chaos option users must be at least {needed} here")
        if self.dos_alerts < 2 or self.addresses < 1:
            raise ValueError("chaos options dos_alerts and addresses must be at least 2 and 1")
        if not (0 <= self.throttle_rate < 1 and 0 <= self.timeout_rate < 1 - self.throttle_rate):
            raise ValueError("chaos rates must be at least 0 and add up to less than 1")
        if min(self.outage_s, self.outage_at_s, self.lock_s, self.sender_retry_scale) < 0:
            raise ValueError("chaos times must not be negative")
        if self.timer_period_s <= 0:
            raise ValueError("chaos option timer_period_s must be positive")

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> ChaosOptions:
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, text in options.items():
            if name not in known:
                raise ValueError(f"unknown chaos option {name!r}; known: {', '.join(known)}")
            kind: type[Any] = type(known[name].default)
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(f"chaos option {name} takes true or false, not {text!r}")
                values[name] = text.lower() in ("true", "1", "yes")
            else:
                try:
                    values[name] = kind(text)
                except ValueError:
                    raise ValueError(f"chaos option {name} takes a {kind.__name__}") from None
        return cls(**values)

    @property
    def feed_duration_s(self) -> float:
        return self.feed_s or self.outage_at_s + self.outage_s + 20.0


# --- the scenario ----------------------------------------------------------------------------


def _user(n: int) -> SimUser:
    name = f"user{n:03d}"
    return SimUser(
        id=f"c4a05000-0000-4000-8000-{n:012d}",
        user_principal_name=f"{name}@{DOMAIN}",
        display_name=f"User {n:03d}",
    )


def sentinel_incident(user: SimUser, number: int) -> dict[str, Any]:
    incident = copy.deepcopy(SENTINEL_INCIDENT)
    incident["eventUniqueId"] = f"c4a05e00-0000-4000-8000-{number:012d}"
    body = incident["object"]
    name = f"c4a05e11-0000-4000-8000-{number:012d}"
    body["name"] = name
    body["id"] = body["id"].rsplit("/", 1)[0] + "/" + name
    body["properties"]["incidentNumber"] = 20000 + number
    body["properties"]["relatedEntities"] = [
        {
            "kind": "Account",
            "properties": {
                "accountName": user.user_principal_name.split("@")[0],
                "upnSuffix": DOMAIN,
                "aadUserId": user.id,
                "friendlyName": user.display_name,
            },
        }
    ]
    return incident


@dataclass(frozen=True)
class Expected:
    """What an alert must lead to once accepted: (kind, key) pairs, keys being a user id or
    a network as Exchange writes it."""

    alert_id: str
    actions: frozenset[tuple[str, str]]


class ChaosDrill(Scenario):
    name = "chaos"
    description = (
        "compromised accounts and an Exchange flood at once, with throttling, timeouts, a "
        "storage outage and the worker killed at every crash point; counts what is lost"
    )
    persistent_storage = True

    def __init__(self, options: ChaosOptions | None = None) -> None:
        self.options = options or ChaosOptions()
        o = self.options
        rng = random.Random(o.seed)
        self.users = [_user(n) for n in range(o.users)]
        self.attackers = attacker_addresses(o.addresses)
        self._attacker_keys = {network_key(a) for a in self.attackers}
        # Polled (Graph) and posted (Sentinel) halves of the users; the dos alerts likewise.
        self.polled_users = self.users[0::2]
        self.posted_users = self.users[1::2]
        dos = []
        for n in range(o.dos_alerts):
            names = rng.sample(self.attackers, k=min(len(self.attackers), rng.choice((1, 2, 3))))
            if rng.random() < 0.05:
                names.append(rng.choice([*REFUSED, JUNK]))
            dos.append((n, names))
        if dos:
            dos[min(1, len(dos) - 1)][1].extend([*REFUSED, JUNK])
            if self.attackers[0] not in dos[-1][1]:
                dos[-1][1].append(self.attackers[0])  # the registry crash point's network
        polled = max(1, o.dos_alerts // 10) if dos else 0
        self.polled_dos, self.posted_dos = dos[:polled], dos[polled:]
        self.expected: dict[str, Expected] = {}
        self.polled_ids: list[str] = []
        self.webhook: list[tuple[str, dict[str, Any]]] = []
        self.victims = self.users[:5]
        self._build_feed(rng)
        self.dropped_victim = self.users[5] if o.drop_one_message and o.users > 5 else None
        first_block = self.attackers[0]
        self.points = crash_points(self.victims, network_key(first_block)) if o.crash_points else []
        if self.dropped_victim is not None:
            self.points.append(dropped_message(self.dropped_victim))
        self.chaos = Saboteur(self.points)
        self.sender = SenderLog()
        self.facts: dict[str, Any] = {}

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> ChaosDrill:
        return cls(ChaosOptions.parse(options))

    def _user_actions(self, user: SimUser) -> frozenset[tuple[str, str]]:
        return frozenset(
            {(str(ActionKind.DISABLE_ACCOUNT), user.id), (str(ActionKind.REVOKE_SESSIONS), user.id)}
        )

    def _block_actions(self, names: Iterable[str]) -> frozenset[tuple[str, str]]:
        keys = set()
        for name in names:
            try:
                key = network_key(name)
            except ValueError:
                continue
            if key in self._attacker_keys:
                keys.add((str(ActionKind.BLOCK_IP), key))
        return frozenset(keys)

    def _build_feed(self, rng: random.Random) -> None:
        for user in self.polled_users:
            alert_id = f"da6375512276775608{self.users.index(user):02d}_-9614448"
            self.expected[alert_id] = Expected(alert_id, self._user_actions(user))
            self.polled_ids.append(alert_id)
        for n, names in self.polled_dos:
            alert_id = f"do{n:016d}_{n}"
            self.expected[alert_id] = Expected(alert_id, self._block_actions(names))
            self.polled_ids.append(alert_id)
        posts: list[tuple[str, dict[str, Any]]] = []
        early: set[str] = set()
        for number, user in enumerate(self.posted_users):
            incident = sentinel_incident(user, number)
            alert_id = f"sentinel:{incident['object']['name']}"
            self.expected[alert_id] = Expected(alert_id, self._user_actions(user))
            posts.append((alert_id, incident))
            if user in self.users[:6]:
                early.add(alert_id)
        for n, names in self.posted_dos:
            alert_id = f"dos:{n}"
            self.expected[alert_id] = Expected(alert_id, self._block_actions(names))
            posts.append((alert_id, webhook_alert(n, names)))
        self.expected["protected"] = Expected("protected", frozenset())
        rng.shuffle(posts)
        # The crash points' victims come first, so their alerts (and the sender's first retry)
        # arrive before storage goes down, and the outage does not hide what a crash did.
        posts.sort(key=lambda post: post[0] not in early)
        # Senders deliver some alerts twice (a Sentinel automation rule firing again, a
        # gateway repeating itself): every 10th alert comes once more, later.
        repeats = posts[::10]
        self.webhook = posts + repeats
        self.webhook.append(
            (
                "protected",
                {
                    "source": "generic",
                    "id": "chaos-protected",
                    "title": "Suspicious sign-in to an emergency access account",
                    "severity": "high",
                    "category": "CredentialAccess",
                    "entities": [
                        {"kind": "user", "user_id": BREAK_GLASS.id, "roles": ["compromised"]}
                    ],
                },
            )
        )

    def settings(self) -> dict[str, Any]:
        return {
            "RESPONDER_PROTECTED_IDENTITIES": BREAK_GLASS.id,
            "RESPONDER_IP_ALLOWLIST": PARTNER_NETWORK,
            "AUTO_DISABLE_BUDGET": self.options.users + 10,
            "GRAPH_TIMEOUT_SECONDS": self.options.graph_timeout_s,
            "ACTIONS_WRITE_SETTLE_SECONDS": self.options.write_settle_s,
        }

    def prepare(self, sim: SimulatedTenant, now: datetime) -> None:
        for user in (*self.users, BREAK_GLASS, BYSTANDER):
            sim.add_user(user)
        sim.add_transport_rule(FOREIGN_RULE)
        for index, user in enumerate(self.polled_users):
            alert_id = self.polled_ids[index]
            evidence = [user_evidence(user, ["compromised"], "malicious")]
            sim.add_alert(
                graph_alert(alert_id, "Password spray", now - timedelta(seconds=30), evidence)
            )
        for n, names in self.polled_dos:
            sim.add_alert(dos_graph_alert(n, names, now))
        self._add_faults(sim)

    def _add_faults(self, sim: SimulatedTenant) -> None:
        o = self.options
        sim.seed_faults(o.seed)
        if o.crash_points and len(self.victims) >= 5:
            # A disable whose response is lost: carried out, never answered.
            sim.add_fault(
                Fault(
                    method="PATCH",
                    path_pattern=f"^/users/{self.victims[4].id}$",
                    status=0,
                    drop_response=True,
                )
            )
        half = o.throttle_rate / 2
        timeout = o.graph_timeout_s + 1.0
        for pattern, retry_after in (
            (r"^/(?!adminapi/)", str(o.retry_after_s)),
            ("^/adminapi/", None),
        ):
            if half > 0:
                sim.add_fault(
                    Fault(
                        path_pattern=pattern,
                        status=429,
                        retry_after=retry_after,
                        times=None,
                        rate=half,
                    )
                )
                sim.add_fault(
                    Fault(path_pattern=pattern, status=503, times=None, rate=half / (1 - half))
                )
            if o.timeout_rate > 0:
                share = o.timeout_rate / (1 - o.throttle_rate)
                sim.add_fault(
                    Fault(
                        path_pattern=self._spare_write_victim(pattern),
                        status=0,
                        delay_s=timeout,
                        times=None,
                        rate=share,
                    )
                )

    def _spare_write_victim(self, pattern: str) -> str:
        """`pattern` without the user of the crash point after the tenant write: a timeout
        there lands the disable unanswered, the retry confirms it without writing again,
        and the crash point would never be reached (throttling is retried and still ends in
        the write)."""
        if not self.points or len(self.victims) < 2 or pattern.startswith("^/adminapi/"):
            return pattern
        return f"{pattern}(?!users/{self.victims[1].id}$)"

    async def drive(self, ctx: DrillContext) -> None:
        o = self.options
        raw_queue = ctx.queue
        self.facts["wrapped"] = wrap_container(ctx.services, self.chaos)
        host = ChaosHost(raw_queue, o.lock_s, o.sender_retry_scale)
        self.facts["timers"] = host.timers
        self.facts["dead_letter_handlers"] = host.dead_letter_handlers
        stop = asyncio.Event()
        outage: dict[str, float] = {}
        senders: set[asyncio.Task[None]] = set()
        started = time.monotonic()

        async def storage_outage() -> None:
            if ctx.azurite is None or o.outage_s <= 0:
                return
            await asyncio.sleep(o.outage_at_s)
            ctx.mark("outage", f"storage goes down for {o.outage_s:g} s")
            began = time.monotonic()
            try:
                await asyncio.to_thread(ctx.azurite.outage_begin)
            except RuntimeError as exc:
                ctx.problems.append(f"no storage outage: {exc}")
                return
            await asyncio.sleep(o.outage_s)
            await asyncio.to_thread(ctx.azurite.outage_end)
            outage["down_s"] = round(time.monotonic() - began, 1)
            ctx.mark("outage", f"storage is back after {outage['down_s']} s")

        fed = asyncio.Event()

        async def every_period(job: Callable[[], Awaitable[None]]) -> None:
            # A timer never overlaps itself: the next tick waits for the last run.
            while not fed.is_set():
                await job()
                try:
                    await asyncio.wait_for(fed.wait(), o.timer_period_s)
                except TimeoutError:
                    continue

        async def timers() -> None:
            jobs: list[Callable[[], Awaitable[None]]] = [
                functools.partial(host.fire_timer, name) for name in host.timers
            ]
            jobs.append(host.deliver_dead_letters)
            await asyncio.gather(*(every_period(job) for job in jobs))

        async def feed() -> None:
            pace = o.feed_duration_s / max(1, len(self.webhook))
            for alert_id, payload in self.webhook:
                task = asyncio.create_task(
                    host.send_alert(alert_id, payload, ctx.webhook_key, self.sender)
                )
                senders.add(task)
                await asyncio.sleep(pace)
            ctx.mark("alert", f"feed over: {len(self.webhook)} webhook alerts sent")
            await asyncio.gather(*senders)

        ctx.mark("alert", f"{len(self.polled_ids)} alerts wait in Graph, webhook feed starts")
        executor = asyncio.create_task(host.execute(stop))
        timer_task = asyncio.create_task(timers())
        await asyncio.gather(feed(), storage_outage())
        if not await host.until_idle(o.max_settle_s):
            ctx.problems.append("the queue did not settle after the feed")
        fed.set()
        await timer_task
        await self._settle(ctx, host)
        stop.set()
        await executor
        self.facts.update(
            run_s=round(time.monotonic() - started, 1),
            outage=outage,
            host=host,
        )

    async def _settle(self, ctx: DrillContext, host: ChaosHost) -> None:
        """After the feed: move the clock on, fire the timers, hand over dead letters and
        drain, `settle_rounds` times, then for as long as an open action still has work the
        app itself holds for it (bounded by `max_settle_s`): a retry the executor scheduled,
        a dead letter, or a claim not yet noted as sent, which the reconciler sends. Ending
        the drill then would count such an action lost (or without its outcome) although the
        app has not finished with it. An open action with none of these (its message is gone)
        does not keep the drill going: it is what the drill counts as lost. While an action
        waits for a scheduled retry, the clock moves on to when that retry is due; otherwise
        by `settle_step_min`."""
        o = self.options
        deadline = time.monotonic() + o.max_settle_s
        round_ = 0
        while True:
            waiting = await self._in_progress(ctx, host) if round_ >= o.settle_rounds else []
            if round_ >= o.settle_rounds and not waiting:
                if host.idle:
                    break
                # A delivery began while the ledger was read (a retry came due): its action
                # was neither scheduled nor done at that moment. Let it finish, look again.
                if not await host.until_idle(max(0.0, deadline - time.monotonic())):
                    ctx.problems.append("the queue did not settle after the last round")
                    break
                continue
            if time.monotonic() > deadline:
                ctx.problems.append(f"actions still in progress after settling: {waiting[:10]}")
                break
            round_ += 1
            step = self._next_step(ctx, host, waiting)
            ctx.clock.advance(step)
            ctx.mark("settle", f"the clock moves on {step} (round {round_})")
            await host.fire_timers()
            await host.deliver_dead_letters()
            if not await host.until_idle(max(0.0, deadline - time.monotonic())):
                ctx.problems.append(f"the queue did not settle in round {round_}")
        self.facts["settle_rounds"] = round_

    def _next_step(self, ctx: DrillContext, host: ChaosHost, waiting: list[str]) -> timedelta:
        """Up to the first retry of a waiting action the queue holds, else `settle_step_min`."""
        step = timedelta(minutes=self.options.settle_step_min)
        due = [at for at, message_id in host.queue.scheduled if _of(message_id, waiting)]
        if due:
            return max(
                timedelta(seconds=1), min(step, min(due) - ctx.clock() + timedelta(seconds=1))
            )
        return step

    async def _in_progress(self, ctx: DrillContext, host: ChaosHost) -> list[str]:
        """Planned actions still open in the ledger for which the app holds work: a scheduled
        or dead-lettered message, or a claim not yet noted as sent."""
        planned = {
            r.entry.action_id
            async for r in ctx.services.audit_store.newest_first()
            if r.entry.action_id is not None and str(r.entry.event) == "action.planned"
        }
        rows = [await ctx.services.state.get(action_id) for action_id in sorted(planned)]
        messages = [m for _, m in host.queue.scheduled]
        messages += [d.message_id for d in host.queue.dead_letters]
        return [
            row.action_id
            for row in rows
            if row is not None
            and row.open
            and (not row.sent or any(_of(m, [row.action_id]) for m in messages))
        ]

    async def checks(self, ctx: DrillContext) -> dict[str, bool]:
        records = [r async for r in ctx.services.audit_store.newest_first()]
        records.reverse()
        host: ChaosHost = self.facts["host"]
        self.facts["chain_verified"] = (await ctx.services.chain.verify()).ok
        account = tally(self, ctx.sim, records)
        ctx.metrics.update(account.report(self, host, ctx, self.facts))
        guard, bystander = ctx.sim.user(BREAK_GLASS.id), ctx.sim.user(BYSTANDER.id)
        return {
            "no action lost": not account.lost,
            "no duplicate disables or enables": account.duplicate_account_writes == 0,
            "no duplicate transport rule writes": account.duplicate_rule_writes == 0,
            "exactly one outcome record per action": set(account.outcome_counts.values()) <= {1},
            "every crash point reached": all(p.fired for p in self.points),
            "protected account untouched": guard.account_enabled and guard.revocations == 0,
            "bystander untouched": bystander.account_enabled and bystander.revocations == 0,
            "no junk reached Exchange": not any(
                "Remove-TransportRule *" in str(params) for _, params in ctx.sim.exchange_calls
            ),
        }


def _of(message_id: str, action_ids: Iterable[str]) -> bool:
    """Whether a queue message carries one of `action_ids` (its retries add a suffix)."""
    return any(message_id == a or message_id.startswith(f"{a}-") for a in action_ids)


# --- the accounting --------------------------------------------------------------------------


@dataclass
class Accounting:
    """What the trail and the tenant say about every action."""

    planned: set[str]
    outcomes: dict[str, list[str]]
    key_of: dict[str, tuple[str, str]]
    expected: set[tuple[str, str]]
    contained: dict[tuple[str, str], bool]
    lost: list[dict[str, Any]]
    unfinished_but_contained: list[str]
    not_contained: list[tuple[str, str]]
    outcome_counts: dict[str, int]
    duplicate_account_writes: int
    duplicate_rule_writes: int
    writes: dict[str, Any]

    def report(
        self, scenario: ChaosDrill, host: ChaosHost, ctx: DrillContext, facts: Mapping[str, Any]
    ) -> dict[str, Any]:
        def with_outcome(event: str) -> int:
            return sum(1 for events in self.outcomes.values() if event in events)

        sender = scenario.sender
        distribution = Counter(self.outcome_counts[a] for a in self.planned)
        o = scenario.options
        return {
            "options": dataclasses.asdict(o),
            "run_s": facts.get("run_s"),
            "alerts_in": {
                "alerts": len(scenario.expected),
                "polled": len(scenario.polled_ids),
                "posted": len({a for a, _ in scenario.webhook}),
                "webhook_calls": sender.posts,
                "webhook_answers": dict(sorted(sender.statuses.items())),
                "accepted": len(sender.accepted),
                "given_up_by_sender": sorted(sender.given_up),
                "refused": sorted(sender.refused),
            },
            "actions": {
                "planned": len(self.planned),
                "executed": with_outcome("action.executed"),
                "already_done": with_outcome("action.already_done"),
                "failed": with_outcome("action.failed"),
                "refused": with_outcome("action.refused"),
                "lost": len(self.lost),
                "without_outcome_but_in_effect": len(self.unfinished_but_contained),
                "expected_effects": len(self.expected),
                "not_in_effect": len(self.not_contained),
            },
            "lost": self.lost[:50],
            "not_in_effect": [f"{k} {t}" for k, t in self.not_contained[:50]],
            "duplicate_writes": self.writes,
            "outcome_records_per_planned_action": {
                str(n): distribution[n] for n in sorted(distribution)
            },
            "actions_with_other_than_one_outcome": sorted(
                a for a in self.planned if self.outcome_counts[a] != 1
            )[:50],
            "chain_verified": facts.get("chain_verified"),
            "faults_injected": ctx.sim.faults_applied,
            "storage_outage": {"planned_s": o.outage_s, **facts.get("outage", {})},
            "crash_points": {
                p.name: {"what": p.description, "target": p.target, "fired": p.fired}
                for p in scenario.points
            },
            "lost_response_on_disable": {
                "target": scenario.victims[4].id if len(scenario.victims) >= 5 else None,
                "fired": ctx.sim.faults_applied.get("lost_response", 0),
            },
            "host": {
                "deliveries": host.deliveries,
                "dead_letters": len(host.queue.dead_letters),
                "dead_letters_handled": host.dead_letters_handled,
                "dead_letter_handlers": facts.get("dead_letter_handlers", []),
                "timers": dict(host.timers_fired),
                "workers_killed": dict(host.kills),
                "invocations_failed": dict(host.failures),
                "wrapped": facts.get("wrapped", {}),
            },
        }


def action_key(sim: SimulatedTenant, kind: str, target: str) -> tuple[str, str]:
    if kind in USER_KINDS:
        try:
            return kind, sim.user(target).id
        except KeyError:
            return kind, target.lower()
    try:
        return kind, network_key(target)
    except ValueError:
        return kind, target


def in_effect(sim: SimulatedTenant, key: tuple[str, str], blocked: set[str]) -> bool:
    kind, target = key
    try:
        if kind == str(ActionKind.DISABLE_ACCOUNT):
            return not sim.user(target).account_enabled
        if kind == str(ActionKind.REVOKE_SESSIONS):
            return sim.user(target).revocations >= 1
    except KeyError:
        return False
    if kind == str(ActionKind.BLOCK_IP):
        return target in blocked
    return False


def blocked_ranges(sim: SimulatedTenant) -> set[str]:
    ranges: set[str] = set()
    for item in sim.transport_rules:
        rule = TransportRule(
            name=str(item["Name"]),
            ranges=tuple(item.get("SenderIpRanges") or ()),
            comments=str(item.get("Comments") or ""),
        )
        if is_managed(rule):
            ranges |= {network_key(r) for r in rule.ranges}
    return ranges


def tally(scenario: ChaosDrill, sim: SimulatedTenant, records: list[AuditRecord]) -> Accounting:
    """Loss, outcomes and duplicates from the audit trail, the tenant and its write log."""
    events: dict[str, list[str]] = defaultdict(list)
    key_of: dict[str, tuple[str, str]] = {}
    for record in records:
        entry = record.entry
        event = str(entry.event)
        if entry.action_id is None or not event.startswith("action.") or entry.kind is None:
            continue
        events[entry.action_id].append(event)
        key_of.setdefault(entry.action_id, action_key(sim, entry.kind, entry.target or ""))
    planned = {a for a, evs in events.items() if "action.planned" in evs}
    outcomes = {a: [e for e in evs if e not in NOT_OUTCOMES] for a, evs in events.items()}
    outcome_counts = {a: len(evs) for a, evs in outcomes.items()}
    arrived = scenario.sender.accepted | set(scenario.polled_ids)
    expected = {key for alert_id in arrived for key in scenario.expected[alert_id].actions}
    blocked = blocked_ranges(sim)
    keys = expected | {key_of[a] for a in planned}
    contained = {key: in_effect(sim, key, blocked) for key in keys}
    ended = {key_of[a] for a, evs in outcomes.items() if evs}
    lost = []
    for key in sorted(keys):
        if key in ended or contained[key]:
            continue
        ids = sorted(a for a, k in key_of.items() if k == key)
        lost.append(
            {
                "kind": key[0],
                "target": key[1],
                "action_ids": ids,
                "audit": [events[a] for a in ids],
            }
        )
    unfinished = sorted(a for a in planned if not outcomes[a] and contained[key_of[a]])
    not_contained = sorted(k for k in expected if not contained[k])
    writes = sim.writes
    account_kinds = ("disable", "enable")
    duplicate_account = sum(1 for w in writes if w.kind in account_kinds and not w.changed)
    rule_writes = [w for w in writes if w.kind.endswith("TransportRule")]
    duplicate_rules = sum(1 for w in rule_writes if not w.changed)
    revocations = Counter(w.target for w in writes if w.kind == "revoke")
    return Accounting(
        planned=planned,
        outcomes=outcomes,
        key_of=key_of,
        expected=expected,
        contained=contained,
        lost=lost,
        unfinished_but_contained=unfinished,
        not_contained=not_contained,
        outcome_counts=outcome_counts,
        duplicate_account_writes=duplicate_account,
        duplicate_rule_writes=duplicate_rules,
        writes={
            "disables": sum(1 for w in writes if w.kind == "disable"),
            "duplicate_disables": sum(1 for w in writes if w.kind == "disable" and not w.changed),
            "enables": sum(1 for w in writes if w.kind == "enable"),
            "duplicate_enables": sum(1 for w in writes if w.kind == "enable" and not w.changed),
            "rule_writes": len(rule_writes),
            "duplicate_rule_writes": duplicate_rules,
            "revocations": sum(revocations.values()),
            "users_revoked_more_than_once": sum(1 for n in revocations.values() if n > 1),
        },
    )
