"""The command line against Azurite with Graph out of reach: one line, exit 2."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from drill.azurite import Azurite
from shared.cli import main
from shared.simulator import SimulatedTenant
from tests.conftest import BREAK_GLASS, installed, settings_for

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_graph_out_of_reach_is_one_line_and_exit_2(
    sim: SimulatedTenant, azurite: Azurite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(sim, azurite)
    async with installed(settings):  # the tables exist, as after a deployment
        pass
    values = {
        "RESPONDER_TABLES_CONNECTION": azurite.connection_string,
        "RESPONDER_AUDIT_TABLE": settings.audit_table,
        "RESPONDER_STATE_TABLE": settings.state_table,
        "RESPONDER_AUDIT_INDEX_TABLE": settings.audit_index_table,
        "RESPONDER_QUEUE": "memory",
        "RESPONDER_CREDENTIAL": "simulator",
        "SIMULATOR_TOKEN": sim.token,
        "GRAPH_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1.0",
        "GRAPH_MAX_RETRIES": "0",
        "BREAKGLASS_ACCOUNTS": f"{BREAK_GLASS.id},{BREAK_GLASS.id[:-1]}1",
    }
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": values}))
    code = await _in_thread(["--settings", str(path), "breakglass", "check"])
    captured = capsys.readouterr()
    assert code == 2, captured
    # The simulated tenant's token endpoint is on the Graph host: the sign-in is the first call
    # that cannot reach it.
    assert captured.err.startswith("responder: sign-in failed: token endpoint: ConnectError")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


async def _in_thread(argv: list[str]) -> int:
    import asyncio

    # main() runs its own event loop; this test's loop must not be the running one there.
    return await asyncio.to_thread(main, argv)
