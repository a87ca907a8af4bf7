"""The simulated tenant for the warm benchmark: in a process of its own, or in this one.

Run in the benchmark's own process, the simulated tenant's server threads share the GIL with
the event loop being timed: while the simulator handles a Graph call (its HTTP parsing, the
route, the answer), the responder cannot run, as it never waits on Graph's own work in Azure.
On the development machine that added about 9 ms to the warm path's p50 (docs/performance.md).
The benchmark therefore starts the simulator as a child process (`SimulatedTenantProcess`,
which runs this file) and talks to it over its standard input and output, one command per
line, outside the timed sections; `InProcessTenant` offers the same methods on a simulator in
this process, which the benchmark still measures beside it.

Usage (what `SimulatedTenantProcess` runs): python bench/sim_process.py --users N
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.simulator import Fault, SimulatedTenant, SimUser  # noqa: E402


def sim_user(n: int) -> SimUser:
    return SimUser(
        id=f"00000000-0000-4000-8000-{n:012d}",
        user_principal_name=f"user{n}@contoso.onmicrosoft.com",
        display_name=f"User {n}",
    )


class InProcessTenant:
    """A simulated tenant in this process, with `users` users (`sim_user(0)`, ...)."""

    def __init__(self, users: int) -> None:
        self._sim = SimulatedTenant()
        self._users = users

    def __enter__(self) -> InProcessTenant:
        self._sim.__enter__()
        for n in range(self._users):
            self._sim.add_user(sim_user(n))
        return self

    def __exit__(self, *exc: object) -> None:
        self._sim.__exit__(None, None, None)

    @property
    def base_url(self) -> str:
        return self._sim.base_url

    @property
    def token(self) -> str:
        return self._sim.token

    def requests(self) -> int:
        """Graph requests served so far."""
        return len(self._sim.requests)

    def slow_down(self, seconds: float) -> None:
        """Answer every later Graph request `seconds` late."""
        self._sim.add_fault(Fault(status=0, delay_s=seconds, times=None))

    def clear_faults(self) -> None:
        self._sim.clear_faults()

    def still_enabled(self, first: int) -> int:
        """How many of the first `first` users can still sign in."""
        return sum(self._sim.user(sim_user(n).id).account_enabled for n in range(first))


class SimulatedTenantProcess:
    """`InProcessTenant`'s methods on a simulated tenant in a child process."""

    def __init__(self, users: int) -> None:
        self._users = users
        self._process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.token = ""

    def __enter__(self) -> SimulatedTenantProcess:
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--users", str(self._users)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            started = json.loads(self._read())
        except BaseException:
            self.__exit__()
            raise
        self.base_url, self.token = started["base_url"], started["token"]
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None and process.stdin is not None:
                process.stdin.write("quit\n")
                process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def requests(self) -> int:
        return int(self._ask("requests"))

    def slow_down(self, seconds: float) -> None:
        self._ask(f"slow {seconds}")

    def clear_faults(self) -> None:
        self._ask("clear")

    def still_enabled(self, first: int) -> int:
        return int(self._ask(f"enabled {first}"))

    def _ask(self, command: str) -> str:
        process = self._process
        if process is None or process.stdin is None:
            raise RuntimeError("the simulated tenant's process is not running")
        process.stdin.write(command + "\n")
        process.stdin.flush()
        return self._read()

    def _read(self) -> str:
        process = self._process
        line = process.stdout.readline() if process and process.stdout else ""
        if not line:
            raise RuntimeError("the simulated tenant's process ended")
        return line.strip()


def serve(users: int) -> None:
    """The child's side: answer commands until `quit` or the end of input."""
    with InProcessTenant(users) as sim:
        print(json.dumps({"base_url": sim.base_url, "token": sim.token}), flush=True)
        for line in sys.stdin:
            command, *args = line.split() or ["quit"]
            answer: Any = "ok"
            if command == "quit":
                break
            if command == "requests":
                answer = sim.requests()
            elif command == "slow":
                sim.slow_down(float(args[0]))
            elif command == "clear":
                sim.clear_faults()
            elif command == "enabled":
                answer = sim.still_enabled(int(args[0]))
            else:
                answer = f"unknown command {command}"
            print(answer, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, required=True)
    serve(parser.parse_args().users)
