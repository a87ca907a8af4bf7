"""Whether the storage clients (and the httpx clients' aiohttp transport, `http_transport`)
read proxy settings from the environment on every request.

azure-core's aiohttp transport, told to use the environment's settings (its default), looks up
the proxy for the request's URL and reads ~/.netrc for every request, on a worker thread of
the event loop: about 0.8 ms of CPU per Table Storage request on the development machine,
nearly half of what the request costs otherwise (docs/performance.md). The environment is
read once instead, when a client is built: with a proxy configured (`HTTPS_PROXY`,
`HTTP_PROXY`, `ALL_PROXY` or another `<scheme>_proxy`, in either case), the clients keep
the per-request lookup, so the proxy and `NO_PROXY` apply exactly as before; without one,
they skip it. Credentials for storage never come from ~/.netrc: the clients sign their
requests with the account key or the managed identity's token.
"""

from __future__ import annotations

from typing import Any
from urllib.request import getproxies_environment


def proxy_configured() -> bool:
    """Whether the environment names a proxy for any scheme (`NO_PROXY` alone names none)."""
    return any(scheme != "no" for scheme in getproxies_environment())


def storage_client_options() -> dict[str, Any]:
    """The keyword arguments that tell an Azure storage client whether to read the
    environment's proxy settings (`use_env_settings`)."""
    return {"use_env_settings": proxy_configured()}
