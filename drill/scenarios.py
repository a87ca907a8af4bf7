"""The drills `responder drill --scenario NAME` knows."""

from __future__ import annotations

from collections.abc import Callable

from drill.compromised import CompromisedAccount
from drill.context import Scenario
from drill.exchange_dos import ExchangeDos
from drill.lockout import Lockout
from drill.readiness import ReadinessDrill
from drill.tamper import Tamper

SCENARIOS: dict[str, Callable[[], Scenario]] = {
    CompromisedAccount.name: CompromisedAccount,
    ExchangeDos.name: ExchangeDos,
    Lockout.name: Lockout,
    ReadinessDrill.name: ReadinessDrill,
    Tamper.name: Tamper,
}
