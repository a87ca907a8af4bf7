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
the chain verification. Any loss or duplicate fails the drill.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import inspect
import ipaddress
import json
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import azure.functions as func
from azure.core.exceptions import ServiceRequestError
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

from drill.compromised import DOMAIN, SENTINEL_INCIDENT, graph_alert, user_evidence
from drill.context import DrillContext, Scenario
from drill.exchange_dos import (
    FOREIGN_RULE,
    JUNK,
    PARTNER_NETWORK,
    REFUSED,
    attacker_addresses,
    webhook_alert,
)
from drill.exchange_dos import graph_alert as dos_graph_alert
from drill.host import MAX_CONCURRENT_CALLS, LocalHost, registered_functions
from functions.http import KEY_HEADER
from shared.actions.ip_blocks import exchange_range, is_managed
from shared.adapters.queue import Delivery, InMemoryQueue
from shared.models import ActionKind, ActionRequest, AuditEntry, AuditRecord
from shared.ports import BlockEntry, TransportRule
from shared.simulator import Fault, SimulatedTenant, SimUser

logger = logging.getLogger(__name__)

# Azure Logic Apps' default retry policy: up to 4 retries at exponentially growing intervals
# scaled by 7.5 s and capped between 5 and 45 s, on 408, 429, 5xx and no answer
# (https://learn.microsoft.com/azure/logic-apps/logic-apps-exception-handling).
SENDER_RETRIES_S = (7.5, 15.0, 30.0, 45.0)
SENDER_RETRY_STATUSES = frozenset({408, 429})
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


class WorkerKilled(BaseException):  # noqa: N818 - it is an event, not an error
    """The worker process died at a crash point."""


@dataclass
class Invocation:
    """One function invocation: whether its worker died, or its storage went away."""

    function: str
    killed: bool = False
    storage_down: bool = False


_INVOCATION: ContextVar[Invocation | None] = ContextVar("chaos_invocation", default=None)


def storage_error() -> ServiceRequestError:
    return ServiceRequestError("storage is unreachable (chaos drill)")


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosOptions:
    """Sizes and fault rates; `responder drill --scenario chaos --set NAME=VALUE` sets them."""

    users: int = 40  # compromised users, half polled from Graph, half posted by Sentinel
    dos_alerts: int = 300  # exchange-dos alerts, a tenth polled, the rest posted
    addresses: int = 100  # attacker addresses the dos alerts draw from
    feed_s: float = 0.0  # how long alerts keep coming (0: outage_s + 40)
    outage_at_s: float = 20.0  # when storage goes down, from the first alert
    outage_s: float = 120.0  # how long storage stays down
    throttle_rate: float = 0.2  # Graph and Exchange calls answered 429 or 503 (half each)
    timeout_rate: float = 0.03  # Graph and Exchange calls answered after the client's timeout
    retry_after_s: int = 1  # Retry-After of Graph's 429
    graph_timeout_s: float = 2.0  # the client timeout (GRAPH_TIMEOUT_SECONDS)
    crash_points: bool = True  # kill the worker at each crash point
    drop_one_message: bool = False  # drop one action message on its way to the queue (tests)
    sender_retry_scale: float = 1.0  # multiplies the Logic App retry intervals
    lock_s: float = 5.0  # peek-lock duration: a dead worker's message comes back after it
    timer_period_s: float = 5.0  # every timer function fires this often
    settle_rounds: int = 3  # after the feed: move the clock on, fire timers, drain
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
        return self.feed_s or self.outage_s + 40.0


# --- crash points ----------------------------------------------------------------------------


@dataclass
class CrashPoint:
    """Where the worker dies: `method` on any wrapped port, `when` before or after the call, for
    the calls `matches` picks. `effect` "kill" kills the worker, "storage" makes this and every
    later storage call of the invocation fail, "drop" swallows the call (a message that never
    arrives). Each fires once."""

    name: str
    description: str
    method: str
    when: str
    matches: Callable[[tuple[Any, ...], Any], bool]
    target: str
    effect: str = "kill"
    fired: int = 0


def _action_in(args: tuple[Any, ...]) -> ActionRequest | None:
    for arg in args:
        if isinstance(arg, ActionRequest):
            return arg
        if isinstance(arg, list) and arg and isinstance(arg[0], ActionRequest):
            return arg[0]
    return None


def _actions_in(args: tuple[Any, ...]) -> list[ActionRequest]:
    for arg in args:
        if isinstance(arg, ActionRequest):
            return [arg]
        if isinstance(arg, list) and arg and isinstance(arg[0], ActionRequest):
            return list(arg)
    return []


def _entries_in(args: tuple[Any, ...]) -> list[AuditEntry]:
    for arg in args:
        if isinstance(arg, AuditEntry):
            return [arg]
        if isinstance(arg, list) and arg and isinstance(arg[0], AuditEntry):
            return list(arg)
    return []


def _names(user: SimUser) -> set[str]:
    return {user.id.lower(), user.user_principal_name.lower()}


def network_key(target: str) -> str:
    """An address or network as Exchange writes it (no /32), for comparing targets."""
    return exchange_range(str(ipaddress.ip_network(target.strip(), strict=False)))


def crash_points(victims: list[SimUser], network: str) -> list[CrashPoint]:
    """The crash points of issue 11, each on a target of its own."""
    claim, write, audit, commit = victims[:4]
    disable = str(ActionKind.DISABLE_ACCOUNT)

    def claimed(args: tuple[Any, ...], result: Any) -> bool:
        action = _action_in(args)
        return (
            result is True
            and action is not None
            and str(action.kind) == disable
            and action.target.lower() in _names(claim)
        )

    def written(args: tuple[Any, ...], result: Any) -> bool:
        return len(args) >= 2 and str(args[0]).lower() in _names(write) and args[1] is False

    def audited(args: tuple[Any, ...], result: Any) -> bool:
        return any(
            e.kind == disable
            and str(e.event) in ("action.executed", "action.already_done")
            and (e.target or "").lower() in _names(audit)
            for e in _entries_in(args)
        )

    def registry_moves(args: tuple[Any, ...], result: Any) -> bool:
        entry = args[0] if args else None
        return (
            isinstance(entry, BlockEntry)
            and len(args) >= 2
            and str(args[1]) == "blocked"
            and network_key(entry.network) == network
        )

    def committing(args: tuple[Any, ...], result: Any) -> bool:
        return any(
            e.kind == disable
            and str(e.event) == "action.planned"
            and (e.target or "").lower() in _names(commit)
            for e in _entries_in(args)
        )

    return [
        CrashPoint(
            "claim_then_crash",
            "killed between the ledger claim and the send to the queue",
            "claim",
            "after",
            claimed,
            claim.id,
        ),
        CrashPoint(
            "tenant_write_then_crash",
            "killed between the tenant write (disable) and its audit",
            "set_account_enabled",
            "after",
            written,
            write.id,
        ),
        CrashPoint(
            "audit_then_crash",
            "killed between the outcome's audit and the ledger update",
            "append_all",
            "after",
            audited,
            audit.id,
        ),
        CrashPoint(
            "audit_then_crash_before_registry",
            "killed after a block's audit, before the block registry moves",
            "update",
            "before",
            registry_moves,
            network,
        ),
        CrashPoint(
            "storage_fails_in_intake_commit",
            "storage fails while intake commits (audit of the plan, and all after it)",
            "append_all",
            "before",
            committing,
            commit.id,
            effect="storage",
        ),
    ]


def dropped_message(victim: SimUser) -> CrashPoint:
    """A deliberate loss: the victim's disable never reaches the queue, though the send
    returns. Tests use it to check that the report counts a loss it knows of."""

    def sending(args: tuple[Any, ...], result: Any) -> bool:
        return any(
            str(a.kind) == str(ActionKind.DISABLE_ACCOUNT) and a.target.lower() in _names(victim)
            for a in _actions_in(args)
        )

    return CrashPoint(
        "dropped_message",
        "the disable's queue message is dropped on the way (deliberate loss)",
        "send",
        "before",
        sending,
        victim.id,
        effect="drop",
    )


class Saboteur:
    """The crash points, and the wrapping of a container's ports and adapters."""

    def __init__(self, points: list[CrashPoint]) -> None:
        self.points = points

    def wrap(self, name: str, port: Any, kind: str) -> PortProxy:
        return PortProxy(name, port, kind, self)

    def due(self, method: str, when: str, args: tuple[Any, ...], result: Any) -> CrashPoint | None:
        for point in self.points:
            if point.fired or point.method != method or point.when != when:
                continue
            try:
                if point.matches(args, result):
                    point.fired += 1
                    return point
            except Exception:  # a predicate that does not fit a changed port never fires
                logger.debug("crash point %s did not fit %s", point.name, method, exc_info=True)
        return None


def _strike(point: CrashPoint, invocation: Invocation | None) -> None:
    logger.warning("chaos: %s (%s)", point.description, point.target)
    if point.effect == "storage":
        if invocation is not None:
            invocation.storage_down = True
        raise storage_error()
    if invocation is not None:
        invocation.killed = True
    raise WorkerKilled(point.name)


class PortProxy:
    """Stands in for one port or adapter: every coroutine method first checks whether the
    invocation is dead (or its storage down), and the crash points fire around the call."""

    def __init__(self, name: str, target: Any, kind: str, chaos: Saboteur) -> None:
        self._name = name
        self._target = target
        self._kind = kind
        self._chaos = chaos

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._target, attr)
        if not inspect.iscoroutinefunction(value):
            return value
        chaos, kind = self._chaos, self._kind

        async def call(*args: Any, **kwargs: Any) -> Any:
            invocation = _INVOCATION.get()
            if invocation is not None and invocation.killed:
                raise WorkerKilled(f"{attr} after the worker died")
            if invocation is not None and invocation.storage_down and kind == "storage":
                raise storage_error()
            point = chaos.due(attr, "before", args, None)
            if point is not None and point.effect == "drop":
                keep = [a for a in _actions_in(args) if not point.matches((a,), None)]
                logger.warning("chaos: %s (%s)", point.description, point.target)
                return await value(keep, *args[1:], **kwargs)
            if point is not None:
                _strike(point, invocation)
            result = await value(*args, **kwargs)
            point = chaos.due(attr, "after", args, result)
            if point is not None:
                _strike(point, invocation)
            return result

        return call


PORT_KINDS = {
    "shared.adapters.state_table": "storage",
    "shared.adapters.audit_table": "storage",
    "shared.adapters.audit_index_table": "storage",
    "shared.adapters.watch_table": "storage",
    "shared.adapters.queue": "bus",
    "shared.adapters.notification_queue": "bus",
}


def wrap_container(services: Any, chaos: Saboteur) -> dict[str, str]:
    """Wrap every port and adapter the container holds (found at run time, so new ones are
    wrapped too), the audit chain, and the Graph and Exchange clients. Must run before any
    service is built from them. Returns what was wrapped, by kind."""
    wrapped: dict[str, str] = {}
    for name, value in list(vars(services).items()):
        module = type(value).__module__
        kind = PORT_KINDS.get(module)
        if kind is None and module.startswith("shared.adapters.") and "table" in module:
            kind = "storage"  # a table adapter added since
        if kind is None:
            continue
        setattr(services, name, chaos.wrap(name, value, kind))
        wrapped[name] = kind
    services.chain = chaos.wrap("chain", services.chain, "storage")
    wrapped["chain"] = "storage"
    for name in ("graph", "exchange"):
        adapter = getattr(services, name)
        if adapter is not None:
            services.__dict__[name] = chaos.wrap(name, adapter, "tenant")
            wrapped[name] = "tenant"
    return wrapped


# --- the host under chaos --------------------------------------------------------------------


@dataclass
class SenderLog:
    """What the alert senders saw."""

    posts: int = 0
    accepted: set[str] = field(default_factory=set)
    given_up: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)


class ChaosHost:
    """Invokes the app's functions as the Functions host does, each invocation in a task of its
    own, so a worker killed in one does not take the drill down."""

    def __init__(self, queue: InMemoryQueue, options: ChaosOptions) -> None:
        self.functions = LocalHost().functions
        self.queue = queue
        self.options = options
        self.deliveries = 0
        self.kills: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.timers_fired: Counter[str] = Counter()
        self.dead_letters_handled = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._relocks: set[asyncio.Task[None]] = set()
        registered = registered_functions()
        self.timers = sorted(
            name
            for name, fn in registered.items()
            if getattr(fn.get_trigger(), "type", None) == "timerTrigger"
        )
        self.dead_letter_handlers = sorted(
            name
            for name, fn in registered.items()
            if getattr(fn.get_trigger(), "type", None) == "serviceBusTrigger"
            and "deadletter" in str(getattr(fn.get_trigger(), "queue_name", "")).lower()
        )

    async def invoke(self, function: str, argument: Any) -> tuple[bool, Any]:
        """(True, result), or (False, None) when the worker died; exceptions propagate."""
        invocation = Invocation(function)

        async def run() -> Any:
            _INVOCATION.set(invocation)
            return await self.functions[function](argument)

        try:
            return True, await asyncio.create_task(run())
        except WorkerKilled:
            self.kills[function] += 1
            return False, None

    async def post(self, payload: Any, key: str) -> int | None:
        """One webhook call: the status, or None when no answer came (the worker died)."""
        request = func.HttpRequest(
            method="POST",
            url="http://127.0.0.1/api/alerts",
            headers={"Content-Type": "application/json", KEY_HEADER: key},
            params={},
            route_params={},
            body=json.dumps(payload).encode(),
        )
        try:
            alive, response = await self.invoke("ingest_alert", request)
        except Exception:
            logger.debug("ingest_alert failed", exc_info=True)
            self.failures["ingest_alert"] += 1
            return 500  # the host answers an unhandled exception with 500
        return int(response.status_code) if alive else None

    async def send_alert(self, alert_id: str, payload: Any, key: str, log: SenderLog) -> None:
        """A Logic App's HTTP action with the default retry policy."""
        delays = [0.0, *(d * self.options.sender_retry_scale for d in SENDER_RETRIES_S)]
        for delay in delays:
            await asyncio.sleep(delay)
            log.posts += 1
            status = await self.post(payload, key)
            log.statuses[str(status)] += 1
            if status is not None and 200 <= status < 300:
                log.accepted.add(alert_id)
                return
            if status is not None and status < 500 and status not in SENDER_RETRY_STATUSES:
                log.refused.add(alert_id)
                return
        log.given_up.add(alert_id)

    async def fire_timer(self, name: str) -> None:
        self.timers_fired[name] += 1
        try:
            await self.invoke(name, TimerRequest(past_due=False))
        except Exception:
            logger.debug("timer %s failed", name, exc_info=True)
            self.failures[name] += 1

    async def fire_timers(self) -> None:
        """Every timer once, side by side, as the host runs them."""
        await asyncio.gather(*(self.fire_timer(name) for name in self.timers))

    async def deliver_dead_letters(self) -> None:
        """Hand dead-lettered messages to the app's dead-letter trigger, if it has one."""
        if not self.dead_letter_handlers:
            return
        handler = self.dead_letter_handlers[0]
        waiting, self.queue.dead_letters[:] = list(self.queue.dead_letters), []
        for delivery in waiting:
            try:
                alive, _ = await self.invoke(handler, self._message(delivery))
            except Exception:
                alive = False
                self.failures[handler] += 1
            if alive:
                self.dead_letters_handled += 1
            else:
                self.queue.dead_letters.append(delivery)

    @staticmethod
    def _message(delivery: Delivery) -> ServiceBusMessage:
        return ServiceBusMessage(
            body=delivery.body,
            message_id=delivery.message_id,
            content_type=delivery.content_type,
            delivery_count=delivery.delivery_count,
            application_properties={},
            user_properties={},
        )

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            alive, _ = await self.invoke("execute_action", self._message(delivery))
        except Exception:
            self.failures["execute_action"] += 1
            self.queue.abandon(delivery)  # the host abandons; Service Bus redelivers at once
            return
        if not alive:
            # Nobody settles the message: it comes back when its lock expires.
            relock = asyncio.create_task(self._after_lock(delivery))
            self._relocks.add(relock)
            relock.add_done_callback(self._relocks.discard)

    async def _after_lock(self, delivery: Delivery) -> None:
        await asyncio.sleep(self.options.lock_s)
        self.queue.abandon(delivery)

    @property
    def idle(self) -> bool:
        return not self._in_flight and not self._relocks and len(self.queue) == 0

    async def execute(self, stop: asyncio.Event) -> None:
        """The Service Bus trigger: up to maxConcurrentCalls deliveries at once, until `stop`
        is set and nothing is left to deliver."""
        while True:
            while len(self._in_flight) < MAX_CONCURRENT_CALLS:
                delivery = self.queue.receive()
                if delivery is None:
                    break
                self.deliveries += 1
                task = asyncio.create_task(self._deliver(delivery))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if stop.is_set() and self.idle:
                return
            if self._in_flight:
                await asyncio.wait(
                    set(self._in_flight), timeout=0.05, return_when=asyncio.FIRST_COMPLETED
                )
            else:
                await asyncio.sleep(0.02)

    async def until_idle(self, limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while not self.idle:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


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
                    Fault(path_pattern=pattern, status=0, delay_s=timeout, times=None, rate=share)
                )

    async def drive(self, ctx: DrillContext) -> None:
        o = self.options
        raw_queue = ctx.queue
        self.facts["wrapped"] = wrap_container(ctx.services, self.chaos)
        host = ChaosHost(raw_queue, o)
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
        for round_ in range(o.settle_rounds):
            ctx.clock.advance(timedelta(minutes=o.settle_step_min))
            ctx.mark("settle", f"the clock moves on {o.settle_step_min} min (round {round_ + 1})")
            await host.fire_timers()
            await host.deliver_dead_letters()
            if not await host.until_idle(o.max_settle_s):
                ctx.problems.append(f"the queue did not settle in round {round_ + 1}")
        stop.set()
        await executor
        self.facts.update(
            run_s=round(time.monotonic() - started, 1),
            outage=outage,
            host=host,
        )

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
