"""The msgraph-sdk adapter over real HTTP against the simulated tenant: reads, writes, and
the mapping of Graph errors to transient and permanent failures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from stduritemplate import StdUriTemplate

from shared.adapters import graph_urls
from shared.adapters.credentials import StaticTokenCredential, build_credential
from shared.adapters.graph import GraphDirectory, build_graph_client
from shared.config import Settings
from shared.errors import PermanentError, TransientError
from shared.simulator import Fault, SimulatedTenant
from tests.conftest import ADELE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def graph(sim: SimulatedTenant) -> AsyncIterator[GraphDirectory]:
    yield await _graph(sim)


async def _graph(sim: SimulatedTenant, **overrides: Any) -> GraphDirectory:
    settings = Settings.model_validate(
        {
            "RESPONDER_TABLES_CONNECTION": "UseDevelopmentStorage=true",
            "GRAPH_BASE_URL": sim.base_url,
            "RESPONDER_CREDENTIAL": "simulator",
            "SIMULATOR_TOKEN": sim.token,
            "RESPONDER_QUEUE": "memory",
            "GRAPH_MAX_RETRIES": 0,
            **overrides,
        }
    )
    return GraphDirectory(build_graph_client(settings, build_credential(settings)))


async def test_a_request_expands_its_url_template_once_without_std_uritemplate(
    graph: GraphDirectory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kiota expands a request's URL template on every read of its URL (about three per
    request), with std-uritemplate, one character at a time; each request the containment
    sends has its URL expanded once, by shared/adapters/graph_urls.py (docs/performance.md)."""
    by_library: list[str] = []
    ours: list[str] = []
    library, expand = StdUriTemplate.expand, graph_urls.expand

    def counted(template: str, data: Any) -> str:
        by_library.append(template)
        return library(template, data)

    def counted_here(template: str, values: Any) -> str:
        ours.append(template)
        return expand(template, values)

    monkeypatch.setattr(StdUriTemplate, "expand", staticmethod(counted))
    monkeypatch.setattr(graph_urls, "expand", counted_here)
    user = await graph.get_user(ADELE.user_principal_name)
    assert user.id == ADELE.id
    await graph.revoke_sign_in_sessions(ADELE.id)
    await graph.set_account_enabled(ADELE.id, False)
    await graph.roles_of(ADELE.id)
    assert by_library == []
    assert len(ours) == 5, ours  # a read, two writes, the role assignments and the groups


class _ImportAttempts:
    """A finder first in `sys.meta_path`: it sees every import of a module not loaded yet."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.names.append(name)


async def test_warm_graph_calls_attempt_no_import(graph: GraphDirectory) -> None:
    """httpcore imports sniffio on every async request to learn which event loop runs it; a
    package missing from the environment is searched for on all of sys.path each time, in
    the middle of every Graph call (docs/performance.md)."""
    user = await graph.get_user(ADELE.user_principal_name)  # the first call loads its modules
    await graph.set_account_enabled(user.id, True)
    await graph.revoke_sign_in_sessions(user.id)
    await graph.roles_of(user.id)
    attempts = _ImportAttempts()
    sys.meta_path.insert(0, attempts)
    try:
        await graph.get_user(user.id)
        await graph.set_account_enabled(user.id, True)
        await graph.revoke_sign_in_sessions(user.id)
        await graph.roles_of(user.id)
    finally:
        sys.meta_path.remove(attempts)
    assert attempts.names == []


async def test_reads_and_writes_go_over_the_wire(
    graph: GraphDirectory, sim: SimulatedTenant
) -> None:
    user = await graph.get_user(ADELE.user_principal_name)
    assert (user.id, user.account_enabled) == (ADELE.id, True)
    request_id = await graph.set_account_enabled(user.id, False)
    assert request_id and len(request_id) == 36
    await graph.revoke_sign_in_sessions(user.id)
    after = await graph.get_user(user.id)
    assert not after.account_enabled and after.sessions_valid_from is not None
    assert ("PATCH", f"/users/{ADELE.id}") in sim.requests
    assert ("POST", f"/users/{ADELE.id}/revokeSignInSessions") in sim.requests


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (Fault(status=429, retry_after="2.128"), TransientError, 429),
        (Fault(status=503), TransientError, 503),
        (Fault(status=504), TransientError, 504),
        (Fault(status=403), PermanentError, 403),
        (Fault(status=400), PermanentError, 400),
    ],
)
async def test_graph_errors_map_to_typed_errors(
    graph: GraphDirectory, sim: SimulatedTenant, fault: Fault, error: type[Exception], status: int
) -> None:
    sim.add_fault(fault)
    with pytest.raises(error) as caught:
        await graph.set_account_enabled(ADELE.id, False)
    assert isinstance(caught.value, TransientError | PermanentError)
    assert caught.value.status == status
    assert caught.value.request_id, "the Graph request id is kept for support cases"


async def test_fractional_retry_after_is_kept(graph: GraphDirectory, sim: SimulatedTenant) -> None:
    sim.add_fault(Fault(status=429, retry_after="2.128"))
    with pytest.raises(TransientError) as caught:
        await graph.get_user(ADELE.id)
    assert caught.value.retry_after == pytest.approx(2.128)


async def test_an_unknown_user_is_permanent(graph: GraphDirectory) -> None:
    with pytest.raises(PermanentError, match="404"):
        await graph.get_user("nobody@contoso.onmicrosoft.com")


async def test_a_slow_graph_times_out_as_transient(sim: SimulatedTenant) -> None:
    graph = await _graph(sim, GRAPH_TIMEOUT_SECONDS=0.3)
    sim.add_fault(Fault(status=0, delay_s=2.0))
    with pytest.raises(TransientError, match="Timeout"):
        await graph.get_user(ADELE.id)


async def test_a_wrong_token_is_permanent(sim: SimulatedTenant) -> None:
    settings = Settings.model_validate(
        {
            "RESPONDER_TABLES_CONNECTION": "UseDevelopmentStorage=true",
            "GRAPH_BASE_URL": sim.base_url,
            "RESPONDER_CREDENTIAL": "simulator",
            "SIMULATOR_TOKEN": sim.token,
            "RESPONDER_QUEUE": "memory",
            "GRAPH_MAX_RETRIES": 0,
        }
    )
    # A token Graph does not accept (the simulator credential would refuse to get one).
    graph = GraphDirectory(build_graph_client(settings, StaticTokenCredential("not-the-token")))
    with pytest.raises(PermanentError, match="401"):
        await graph.get_user(ADELE.id)


# The calls of a containment, in a fresh interpreter: the SDK's models for directory objects
# import every model class on first use (about 1,400, seconds of CPU), which the adapter avoids
# by reading JSON itself (docs/performance.md).
CONTAINMENT_CALLS = """
import asyncio, sys
from shared.adapters.credentials import build_credential
from shared.adapters.graph import GraphDirectory, build_graph_client
from shared.config import Settings

async def main() -> None:
    settings = Settings.model_validate({
        "RESPONDER_TABLES_CONNECTION": "UseDevelopmentStorage=true",
        "GRAPH_BASE_URL": sys.argv[1], "RESPONDER_CREDENTIAL": "simulator",
        "SIMULATOR_TOKEN": sys.argv[2], "RESPONDER_QUEUE": "memory",
    })
    graph = GraphDirectory(build_graph_client(settings, build_credential(settings)))
    user = await graph.get_user(sys.argv[3])
    roles = await graph.roles_of(user.id)
    holders = await graph.holders_of(sys.argv[4])
    await graph.revoke_sign_in_sessions(user.id)
    await graph.set_account_enabled(user.id, False)
    assert roles and holders and not (await graph.get_user(user.id)).account_enabled
    print(sum(name.startswith("msgraph.generated.models.") for name in sys.modules))

asyncio.run(main())
"""


def test_containment_calls_load_few_sdk_models(sim: SimulatedTenant) -> None:
    role = "62e90394-69f5-4237-9190-012177145e10"
    sim.assign_role(ADELE.id, role)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESPONDER_", "GRAPH_"))}
    argv = [sim.base_url, sim.token, ADELE.user_principal_name, role]
    result = subprocess.run(
        [sys.executable, "-c", CONTAINMENT_CALLS, *argv],
        cwd=ROOT,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) < 100
