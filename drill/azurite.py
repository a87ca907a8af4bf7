"""Starts Azurite's table service (from the repo's node_modules) on a free loopback port, or
uses one that is already running, and hands out its connection string."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[1]
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-table"
# Azurite's published development account; it guards nothing and is the same everywhere.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ENV_ENDPOINT = "AZURITE_TABLE_ENDPOINT"


def connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"TableEndpoint={endpoint.rstrip('/')};"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"azurite-table exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"azurite-table did not listen on port {port} within {timeout_s}s")


class Azurite:
    """Context manager: `AZURITE_TABLE_ENDPOINT` (if set) names a running Azurite to use;
    otherwise a private in-memory instance starts and stops with the context."""

    def __init__(self) -> None:
        self.endpoint = os.environ.get(ENV_ENDPOINT, "")
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.endpoint)

    def start(self) -> Azurite:
        if self.endpoint:
            return self
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run `npm ci` first")
        port = _free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="azurite-")
        self._process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                str(port),
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--silent",
            ],
            cwd=self._workdir.name,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(port, self._process, timeout_s=30)
        self.endpoint = f"http://127.0.0.1:{port}/{DEV_ACCOUNT}"
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
            self.endpoint = ""
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
