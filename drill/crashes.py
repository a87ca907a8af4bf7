"""Crash points for drills: the ports and adapters a container builds are wrapped, and at a
chosen call the worker dies (`WorkerKilled`, a BaseException: a dying process runs no `except
Exception`), storage fails for the rest of the invocation, or a message is dropped on its way.
Every later call of a dead invocation fails the same way. The invocation is a context variable,
set per function invocation by the drill's host (drill/chaos_host.py)."""

from __future__ import annotations

import inspect
import ipaddress
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ServiceRequestError

from shared.actions.ip_blocks import exchange_range
from shared.models import ActionKind, ActionRequest, AuditEntry
from shared.ports import BlockEntry
from shared.simulator import SimUser

logger = logging.getLogger(__name__)


class WorkerKilled(BaseException):  # noqa: N818 - it is an event, not an error
    """The worker process died at a crash point."""


@dataclass
class Invocation:
    """One function invocation: whether its worker died, or its storage went away."""

    function: str
    killed: bool = False
    storage_down: bool = False


INVOCATION: ContextVar[Invocation | None] = ContextVar("chaos_invocation", default=None)


def storage_error() -> ServiceRequestError:
    return ServiceRequestError("storage is unreachable (chaos drill)")


@dataclass
class CrashPoint:
    """Where the worker dies: `method` on any wrapped port, `when` before or after the call, for
    the calls `matches` picks. `effect` "kill" kills the worker, "storage" makes this and every
    later storage call of the invocation fail, "drop" swallows the call (a message that never
    arrives). Each fires once, unless `every_time`: then at every call it picks."""

    name: str
    description: str
    method: str
    when: str
    matches: Callable[[tuple[Any, ...], Any], bool]
    target: str
    effect: str = "kill"
    every_time: bool = False
    fired: int = 0


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
        return any(
            str(action.kind) == disable
            and action.target.lower() in _names(claim)
            and action.id in result
            for action in _actions_in(args)
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
        moves = args[0] if args and isinstance(args[0], list) else []
        return any(
            isinstance(entry, BlockEntry)
            and str(state) == "blocked"
            and network_key(entry.network) == network
            for entry, state, _ in moves
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
            "claim_all",
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
            "update_all",
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
    returns, however often it is sent. Tests use it to check that the report counts a loss it
    knows of. Every send is dropped, not only the first: when storage fails before the claim
    is noted as sent (whether it does depends on the machine's speed), a retry of the alert or
    the reconciler rightly sends the claim again, and a once-only drop would not be a loss."""

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
        every_time=True,
    )


class Saboteur:
    """The crash points, and the wrapping of a container's ports and adapters."""

    def __init__(self, points: list[CrashPoint]) -> None:
        self.points = points

    def wrap(self, name: str, port: Any, kind: str) -> PortProxy:
        return PortProxy(name, port, kind, self)

    def due(self, method: str, when: str, args: tuple[Any, ...], result: Any) -> CrashPoint | None:
        for point in self.points:
            spent = point.fired and not point.every_time
            if spent or point.method != method or point.when != when:
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
            invocation = INVOCATION.get()
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
