"""The drills `responder drill --scenario NAME` knows."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from drill.chaos import ChaosDrill
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
    ChaosDrill.name: ChaosDrill,
}
# Scenarios that take options (`responder drill --set NAME=VALUE`).
WITH_OPTIONS: dict[str, Callable[[Mapping[str, str]], Scenario]] = {
    ChaosDrill.name: ChaosDrill.from_options,
}
