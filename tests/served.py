"""The app's HTTP functions served over loopback (drill.serve.LocalApi) on Azurite and a
simulated tenant, with tokens that tenant issues: what the fuzzers aim at."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from drill.azurite import Azurite
from drill.serve import LocalApi
from functions.http import KEY_HEADER
from shared.identity import ROLE_ACT, ROLE_APPROVE, ROLE_AUDIT_READ
from shared.simulator import SimulatedTenant, SimUser
from tests.conftest import ADELE, API_AUDIENCE, BREAK_GLASS, WEBHOOK_SECRET, settings_for

ENGINEER = "fuzz@contoso.onmicrosoft.com"
PROBLEM_JSON = "application/problem+json"


@dataclass
class Served:
    base_url: str
    sim: SimulatedTenant
    http: httpx.Client

    def token(self, *roles: str, upn: str = ENGINEER) -> str:
        return self.sim.issue_token(audience=API_AUDIENCE, roles=roles, upn=upn)

    @property
    def engineer(self) -> dict[str, str]:
        """An engineer holding every app role."""
        token = self.token(ROLE_ACT, ROLE_APPROVE, ROLE_AUDIT_READ)
        return {"Authorization": f"Bearer {token}"}

    @property
    def webhook(self) -> dict[str, str]:
        return {KEY_HEADER: WEBHOOK_SECRET}


@contextmanager
def served(azurite: Azurite) -> Iterator[Served]:
    with SimulatedTenant() as sim:
        sim.add_user(SimUser(**vars(ADELE)))
        sim.add_user(SimUser(**vars(BREAK_GLASS)))
        with (
            LocalApi(settings_for(sim, azurite)) as api,
            httpx.Client(base_url=api.base_url, timeout=60) as http,
        ):
            yield Served(api.base_url, sim, http)


def problems_of(response: Any) -> list[str]:
    """What is wrong with an answer (httpx's or schemathesis's): a 5xx, or a refusal that is no
    problem+json 4xx."""
    status = int(response.status_code)
    if status >= 500:
        return [f"answered {status}: {response.text[:300]}"]
    if status < 400:
        return []
    if status in (404, 405) and not response.text:
        # The host's own refusal of a path or method no function declares (the functions
        # always explain theirs).
        return []
    kind = content_type(response)
    if kind != PROBLEM_JSON:
        return [f"{status} as {kind or 'no content type'}, not {PROBLEM_JSON}"]
    try:
        body = json.loads(response.text)
    except ValueError:
        return [f"{status}: the problem body is no JSON"]
    if not isinstance(body, dict) or body.get("status") != status or not body.get("title"):
        return [f"{status}: the problem body lacks its status or title: {body!r:.200}"]
    return []


def content_type(response: Any) -> str:
    for name, value in response.headers.items():
        if name.lower() == "content-type":
            text = value[0] if isinstance(value, list) else value
            return str(text).split(";")[0].strip().lower()
    return ""
