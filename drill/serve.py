"""The app's HTTP functions served locally over real HTTP, as the Functions host would serve
them: `/api/<route>` is matched against each HTTP trigger's route template (`{param}` segments
included) and methods, the function gets an `azure.functions.HttpRequest` and its
`HttpResponse` is written back (status, headers, content type from mimetype and charset, body).

`LocalApi` owns a thread with its own event loop. The container is built and installed in that
loop and the functions run there too, so their clients (tables, JWKS, Graph) stay on the loop
they were made in. Loopback only, on an ephemeral port. Function keys are not checked, as the
Core Tools do not check them locally.

    api = LocalApi(settings)
    base = api.start()            # "http://127.0.0.1:PORT"
    ...                           # GET {base}/api/audit/ui, POST {base}/api/actions, ...
    api.call(lambda c: LocalHost().pump(c.queue))   # run a coroutine on the serving loop
    api.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import azure.functions as func
from aiohttp import web
from azure.functions.decorators.function_app import Function

from drill.host import registered_functions
from shared import container as worker
from shared.config import Settings
from shared.container import Container

logger = logging.getLogger(__name__)

T = TypeVar("T")
HOST_JSON = Path(__file__).resolve().parents[1] / "host.json"
LOOPBACK = "127.0.0.1"
MAX_REQUEST_BYTES = 100 * 1024 * 1024  # the Functions host's request size limit
START_TIMEOUT_S = 30.0
_PARAMETER = re.compile(r"^\{(?P<star>\*)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[:?=][^}]*)?\}$")


def loopback_socket() -> socket.socket:
    """A TCP socket bound to an ephemeral port on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    return sock


def route_prefix() -> str:
    """host.json's extensions.http.routePrefix ("api" unless set)."""
    config = json.loads(HOST_JSON.read_text())
    prefix = config.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    return str(prefix).strip("/")


@dataclass(frozen=True)
class HttpRoute:
    """One HTTP-triggered function: its route template compiled to a pattern."""

    function: str
    template: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    binding: str  # the trigger's parameter name
    handler: Callable[..., Any]
    specificity: tuple[int, ...]  # literal segments sort before parameters, catch-alls last

    @classmethod
    def of(cls, name: str, fn: Function) -> HttpRoute | None:
        trigger = fn.get_trigger()
        if trigger is None or getattr(trigger, "type", None) != "httpTrigger":
            return None
        template = (getattr(trigger, "route", None) or name).strip("/")
        methods = getattr(trigger, "methods", None) or []
        parts: list[str] = []
        specificity: list[int] = []
        for segment in template.split("/"):
            parameter = _PARAMETER.match(segment)
            if parameter is None:
                parts.append(re.escape(segment))
                specificity.append(0)
            elif parameter["star"]:
                parts.append(f"(?P<{parameter['name']}>.*)")
                specificity.append(2)
            else:
                optional = (parameter["rest"] or "").startswith("?")
                parts.append(f"(?P<{parameter['name']}>[^/]+){'?' if optional else ''}")
                specificity.append(1)
        return cls(
            function=name,
            template=template,
            methods=frozenset(str(getattr(m, "value", m)).upper() for m in methods),
            # Route templates match case-insensitively, as ASP.NET routing does.
            pattern=re.compile("/".join(parts), re.IGNORECASE),
            binding=str(trigger.name),
            handler=fn.get_user_function(),
            specificity=tuple(specificity),
        )

    def allows(self, method: str) -> bool:
        return not self.methods or method.upper() in self.methods


def http_routes() -> list[HttpRoute]:
    """The app's HTTP functions, most specific template first."""
    routes = [
        route
        for name, fn in registered_functions().items()
        if (route := HttpRoute.of(name, fn)) is not None
    ]
    return sorted(routes, key=lambda route: route.specificity)


class LocalApi:
    """Serves the app's HTTP functions on 127.0.0.1 from a thread with its own event loop,
    with a `shared.container.Container(settings)` built and installed in that loop."""

    def __init__(self, settings: Settings, prefix: str | None = None) -> None:
        self.settings = settings
        self.prefix = route_prefix() if prefix is None else prefix.strip("/")
        self.routes = http_routes()
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._container: Container | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        """Start serving; returns the base URL (`http://127.0.0.1:PORT`, no trailing slash)."""
        if self._thread is not None:
            raise RuntimeError("LocalApi is already started")
        self._thread = threading.Thread(target=self._run, name="local-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise TimeoutError("the local API did not start in time")
        if self._failure is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("the local API failed to start") from self._failure
        return self.base_url

    def stop(self) -> None:
        """Stop serving, uninstall and close the container, end the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        thread.join(START_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> LocalApi:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def container(self) -> Container:
        if self._container is None:
            raise RuntimeError("LocalApi is not started")
        return self._container

    def call(
        self,
        work: Callable[[Container], Coroutine[Any, Any, T]],
        timeout: float = 60.0,
    ) -> T:
        """Run `work(container)` on the serving loop (where the container's clients live) and
        wait for its result; for example pumping the in-memory action queue."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("LocalApi is not started")
        return asyncio.run_coroutine_threadsafe(work(self.container), self._loop).result(timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(), or logged once serving
            if not self._ready.is_set():
                self._failure = exc
            else:
                logger.exception("the local API stopped with an error")
        finally:
            self._ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        built = Container(self.settings)
        try:
            await built.prepare()
            self._container = built
            worker.install(built)
            async with self.serving() as base_url:
                self.base_url = base_url
                self._ready.set()
                await self._stopping.wait()
        finally:
            if self._container is built:
                worker.install(None)
                self._container = None
            await built.close()

    @contextlib.asynccontextmanager
    async def serving(self, sock: socket.socket | None = None) -> AsyncIterator[str]:
        """Serve in the running loop with the worker's installed container, for callers that
        own both (a drill or a test); yields the base URL. `sock`, bound to 127.0.0.1, lets a
        caller know the URL before serving (to put it into settings)."""
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        # Every path, even one whose decoded form holds a line break (`.` stops at one).
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            if sock is None:
                sock = loopback_socket()
            port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
            yield f"http://{LOOPBACK}:{port}"
        finally:
            await runner.cleanup()

    # --- requests ----------------------------------------------------------------------------

    def match(self, method: str, path: str) -> tuple[HttpRoute, dict[str, str]] | int:
        """The route and route parameters for a request path (without the query string), or
        the status to answer: 404 when no template matches, 405 when none allows the method."""
        prefix = f"/{self.prefix}/" if self.prefix else "/"
        if not path.lower().startswith(prefix.lower()):
            return 404
        rest = path[len(prefix) :].strip("/")
        status = 404
        for route in self.routes:
            found = route.pattern.fullmatch(rest)
            if found is None:
                continue
            if not route.allows(method):
                status = 405
                continue
            params = {k: v for k, v in found.groupdict().items() if v is not None}
            return route, params
        return status

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        matched = self.match(request.method, request.path)
        if isinstance(matched, int):
            return web.Response(status=matched)
        route, route_params = matched
        body = await request.read()
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            lowered = key.lower()
            headers[lowered] = f"{headers[lowered]}, {value}" if lowered in headers else value
        params: dict[str, str] = {}
        for key, value in request.query.items():
            params.setdefault(key, value)
        req = func.HttpRequest(
            method=request.method,
            url=str(request.url),
            headers=headers,
            params=params,
            route_params=route_params,
            body=body,
        )
        try:
            if inspect.iscoroutinefunction(route.handler):
                result = await route.handler(**{route.binding: req})
            else:  # the worker runs plain functions in a thread pool
                call = functools.partial(route.handler, **{route.binding: req})
                result = await asyncio.get_running_loop().run_in_executor(None, call)
        except Exception:
            logger.exception("function %s failed", route.function)
            return web.Response(status=500)
        if not isinstance(result, func.HttpResponse):
            logger.error("function %s returned %r, not an HttpResponse", route.function, result)
            return web.Response(status=500)
        return self._response(result)

    @staticmethod
    def _response(result: func.HttpResponse) -> web.Response:
        """The worker's conversion: the function's headers, and a Content-Type from mimetype
        (with the charset for text/*) unless the function set one."""
        headers = dict(result.headers.items())
        if "content-type" not in {key.lower() for key in headers}:
            mimetype = result.mimetype
            headers["Content-Type"] = (
                f"{mimetype}; charset={result.charset}"
                if mimetype.startswith("text/")
                else mimetype
            )
        return web.Response(status=result.status_code, headers=headers, body=result.get_body())
