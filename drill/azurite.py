"""Starts Azurite's table and blob services (from the repo's node_modules) on free loopback
ports, or uses ones that are already running, and hands out their connection string (the blob
service holds the audit checkpoints).

With `persistent=True` the tables live on disk (Azurite's `--location`, without
`--inMemoryPersistence`), so a drill can stop Azurite for a storage outage and start it again on
the same port with its data (`outage_begin()` / `outage_end()`). Azurite saves its table database
every 5 seconds and when it is closed with SIGINT; it is always stopped that way here, so
nothing written before an outage is lost with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[1]
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-table"
AZURITE_BLOB_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
# Azurite's published development account; it guards nothing and is the same everywhere.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ENV_ENDPOINT = "AZURITE_TABLE_ENDPOINT"
ENV_BLOB_ENDPOINT = "AZURITE_BLOB_ENDPOINT"


def connection_string(endpoint: str, blob_endpoint: str = "") -> str:
    blob = f"BlobEndpoint={blob_endpoint.rstrip('/')};" if blob_endpoint else ""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"TableEndpoint={endpoint.rstrip('/')};{blob}"
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
    otherwise a private instance starts and stops with the context, in memory. With
    `persistent=True` a private instance always starts, on disk in a temporary directory."""

    def __init__(self, persistent: bool = False) -> None:
        # A persistent one is always our own: only then can it go down and come back.
        self.endpoint = "" if persistent else os.environ.get(ENV_ENDPOINT, "")
        self.blob_endpoint = "" if persistent else os.environ.get(ENV_BLOB_ENDPOINT, "")
        self.persistent = persistent
        self._process: subprocess.Popen[bytes] | None = None
        self._blob_process: subprocess.Popen[bytes] | None = None
        self._blob_port: int | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._port: int | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.endpoint, self.blob_endpoint)

    @property
    def owned(self) -> bool:
        """Whether this object started the Azurite it talks to (only then can it stop it)."""
        return self._port is not None

    def start(self) -> Azurite:
        if self.endpoint:
            return self
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run `npm ci` first")
        self._port = _free_port()
        if AZURITE_BLOB_BIN.exists():
            self._blob_port = _free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="azurite-")
        self._launch()
        self.endpoint = f"http://127.0.0.1:{self._port}/{DEV_ACCOUNT}"
        if self._blob_port is not None:
            self.blob_endpoint = f"http://127.0.0.1:{self._blob_port}/{DEV_ACCOUNT}"
        return self

    def _launch(self) -> None:
        assert self._port is not None and self._workdir is not None
        storage = (
            ["--location", self._workdir.name] if self.persistent else ["--inMemoryPersistence"]
        )
        self._process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                str(self._port),
                *storage,
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--silent",
            ],
            cwd=self._workdir.name,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self._port, self._process, timeout_s=30)
        if self._blob_port is not None:
            self._blob_process = subprocess.Popen(
                [
                    str(AZURITE_BLOB_BIN),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self._blob_port),
                    *storage,
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--silent",
                ],
                cwd=self._workdir.name,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_for_port(self._blob_port, self._blob_process, timeout_s=30)

    def _halt(self) -> None:
        """Stop the processes: SIGINT first, on which Azurite saves its data and closes."""
        processes = (self._process, self._blob_process)
        self._process = self._blob_process = None
        for process in processes:
            if process is None:
                continue
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def outage_begin(self) -> None:
        """Take storage away: the process stops and its port refuses connections."""
        if not (self.owned and self.persistent):
            raise RuntimeError("only a persistent Azurite this object started can go down")
        self._halt()

    def outage_end(self) -> None:
        """Bring storage back on the same port with the data it had."""
        if not (self.owned and self.persistent) or self._process is not None:
            raise RuntimeError("outage_end() needs outage_begin() first")
        self._launch()

    def stop(self) -> None:
        self._halt()
        if self._port is not None:
            self._port = None
            self.endpoint = ""
        if self._blob_port is not None:
            self._blob_port = None
            self.blob_endpoint = ""
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
