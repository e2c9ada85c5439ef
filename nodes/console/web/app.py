"""The console's web page: a Starlette app on the service's own loop and store (no second process,
no front-end build: static HTML, one vanilla JS file and one CSS file from this package).

Pages (/, /alerts, /device/<id>, /history, /wall) are one HTML shell each; the JS reads the JSON
API (/api/...) and re-reads what the live stream (/api/events, SSE fed by the fold's changes)
says has changed. Every endpoint is `async` so it runs on the loop that owns the store.
Security: a login session (HttpOnly, SameSite=Strict, Secure unless `cookie_secure = false`);
every POST carries the session's CSRF token; ack, silence and commands need the operator role and are
recorded with the user as author through the console's actions (sent to the devices as `cmd`s).
`/metrics` needs no login (Prometheus scrapes it): bind loopback or filter it at the proxy.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import quote, urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nodes.console.actions import (
    ActionError,
    parse_duration,
    parse_matchers,
    parse_moment,
    record_ack,
    record_command,
    record_silence,
)
from nodes.console.registry import Registry
from nodes.console.settings import ConsoleSettings
from nodes.console.store import Change, ConsoleStore
from nodes.console.web import metrics, views
from nodes.console.web.auth import Session, Sessions, User, Users, csrf_ok, password_ok
from nodes.console.web.live import Hub

log = logging.getLogger("vv.console")

COOKIE = "vv_session"
CSRF_HEADER = "x-csrf-token"
PAGES = {"fleet": "Fleet", "alerts": "Alerts", "device": "Device", "history": "History", "wall": "Wall"}
HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
KEEPALIVE_S = 15.0
LOGIN_SLOTS = 2  # password checks at once
MAX_TILES = 200  # tiles one live update may ask for by name (more: the page re-reads the grid)
# the commands an operator may send a device from its page (all without args)
COMMANDS = {
    "cmd.alerter.resync": "re-publish the alerts still firing",
    "cmd.ingest.pause": "stop taking new video files",
    "cmd.ingest.resume": "take new video files again",
}
_STATIC = resources.files("nodes.console.web") / "static"


@dataclass
class Web:
    """What the page reads and writes: the service's store, registry, change hub and counters."""

    store: ConsoleStore
    registry: Registry
    settings: ConsoleSettings
    users: Users
    hub: Hub = field(default_factory=Hub)
    ingestion: metrics.Ingestion = field(default_factory=metrics.Ingestion)
    closing: bool = False

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.settings.session_hours * 3600)
        self.login_slots = asyncio.Semaphore(LOGIN_SLOTS)


def _security_headers(app: ASGIApp) -> ASGIApp:
    """Headers every response carries (no inline script or style is allowed: CSP 'self')."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await app(scope, receive, sending)

    return wrapped


def _template(name: str) -> Template:
    return Template((_STATIC / name).read_text())


def create_app(web: Web) -> ASGIApp:
    shell, login_page = _template("page.html"), _template("login.html")

    def who(request: Request) -> tuple[Session, User] | None:
        session = web.sessions.get(request.cookies.get(COOKIE))
        user = web.users.get(session.user) if session is not None else None
        if session is None or user is None:
            return None
        return session, user

    def page(kind: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            found = who(request)
            if found is None:
                return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
            session, user = found
            arg = request.path_params.get("name", "")
            values = {
                "title": html.escape(f"{PAGES[kind]} {arg}".strip()),
                "page": kind,
                "arg": html.escape(arg),
                "user": html.escape(user.name),
                "role": user.role,
                "csrf": html.escape(session.csrf),
            }
            return HTMLResponse(shell.substitute(values))

        return endpoint

    def login_form(error: str, next_path: str, status: int) -> HTMLResponse:
        body = login_page.substitute(error=html.escape(error), next=html.escape(next_path))
        return HTMLResponse(body, status_code=status)

    async def login_get(request: Request) -> Response:
        return login_form("", _local(request.query_params.get("next", "/")), 200)

    async def login_post(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            # another site's form logging this browser in (to the attacker's account): refused
            return login_form("Log in from this site's own page.", "/", 403)
        form = await request.form()
        name, password = str(form.get("username", "")), str(form.get("password", ""))
        next_path = _local(str(form.get("next", "/")))
        user = web.users.get(name)
        # argon2id takes a moment and 64 MiB: off the loop (the fold and the live stream go on), and
        # LOGIN_SLOTS at a time, so a flood of logins cannot exhaust the console's memory
        async with web.login_slots:
            ok = await asyncio.to_thread(password_ok, user, password)
        if user is None or not ok:
            log.warning("console login refused for %r from %s", name, request.client and request.client.host)
            return login_form("Wrong user name or password.", next_path, 401)
        token, _ = web.sessions.open(user.name)
        log.info("console login: %s (%s)", user.name, user.role)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            COOKIE, token, httponly=True, secure=web.settings.cookie_secure, samesite="strict", path="/"
        )
        return response

    def guarded(
        handler: Callable[[Request, Session, User], Awaitable[Response]], *, action: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Login for every API call; for actions also the CSRF token (header or form field)."""

        async def endpoint(request: Request) -> Response:
            found = who(request)
            if found is None:
                return JSONResponse({"error": "log in first"}, status_code=401)
            session, user = found
            if action:
                given = request.headers.get(CSRF_HEADER)
                if given is None and request.headers.get("content-type", "").startswith(
                    ("application/x-www-form-urlencoded", "multipart/form-data")
                ):
                    given = str((await request.form()).get("csrf", ""))
                if not csrf_ok(session, given):
                    log.warning(
                        "console: %s refused for %s: missing or wrong CSRF token", request.url.path, user.name
                    )
                    return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
            return await handler(request, session, user)

        return endpoint

    async def logout(request: Request, session: Session, user: User) -> Response:
        web.sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(
            COOKIE, path="/", secure=web.settings.cookie_secure, httponly=True, samesite="strict"
        )
        return response

    async def api_fleet(request: Request, session: Session, user: User) -> Response:
        named = request.query_params.get("devices")
        only = None if named is None else [d for d in named.split(",") if d][:MAX_TILES]
        return JSONResponse(views.tiles(web.store, web.registry, request.query_params, only))

    async def api_alerts(request: Request, session: Session, user: User) -> Response:
        return JSONResponse(views.alerts(web.store, request.query_params, time.time()))

    async def api_device(request: Request, session: Session, user: User) -> Response:
        name = request.path_params["name"]
        found = views.device(web.store, web.registry, name, web.hub.loglines(name), time.time())
        if found is None:
            return JSONResponse({"error": f"no device {name!r}"}, status_code=404)
        return JSONResponse(found)

    async def api_history(request: Request, session: Session, user: User) -> Response:
        query = request.query_params
        now = time.time()
        try:
            since = parse_moment(query.get("since", ""), now, now - 86400)
            until = parse_moment(query.get("until", ""), now, now + 1)
        except ActionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        rows = views.history(web.store, since, until, query)
        if query.get("format") == "csv":
            return PlainTextResponse(
                views.history_csv(rows),
                media_type="text/csv; charset=utf-8",
                headers={"content-disposition": 'attachment; filename="vv-console-history.csv"'},
            )
        disposition = {"content-disposition": 'attachment; filename="vv-console-history.json"'}
        return JSONResponse(rows, headers=disposition if query.get("format") == "json" else None)

    async def api_events(request: Request, session: Session, user: User) -> Response:
        return StreamingResponse(
            _stream(web),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def operator_body(request: Request, user: User) -> tuple[dict[str, Any], Response | None]:
        if not user.operator:
            log.warning("console: %s refused for %s: viewers cannot act", request.url.path, user.name)
            return {}, JSONResponse({"error": "only operators can do that"}, status_code=403)
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                body = await request.json()
            else:
                body = dict(await request.form())
        except ValueError:
            return {}, JSONResponse({"error": "the body is not JSON or a form"}, status_code=400)
        if not isinstance(body, dict):
            return {}, JSONResponse({"error": "the body must be an object"}, status_code=400)
        return body, None

    async def api_ack(request: Request, session: Session, user: User) -> Response:
        body, refused = await operator_body(request, user)
        if refused is not None:
            return refused
        alert = web.store.alert(str(body.get("device", "")), str(body.get("dedup_key", "")))
        if alert is None:
            return JSONResponse({"error": "no such alert"}, status_code=404)
        comment = str(body.get("comment", ""))
        action = record_ack(web.store, alert, user.name, comment, time.time(), web.settings.command_ttl_s)
        log.info("console: %s acked %s on %s (action %d)", user.name, alert.title, alert.device, action)
        return JSONResponse({"action": action, "author": user.name})

    async def api_silence(request: Request, session: Session, user: User) -> Response:
        body, refused = await operator_body(request, user)
        if refused is not None:
            return refused
        raw = body.get("matchers", [])
        texts = (
            raw.split() if isinstance(raw, str) else [str(m) for m in raw] if isinstance(raw, list) else []
        )
        comment = str(body.get("comment", "")).strip()
        try:
            if not comment:
                raise ActionError("a silence needs a comment (shown beside the alerts it mutes)")
            matcher, devices = parse_matchers(texts)
            duration = parse_duration(str(body.get("duration", "")))
            ids = record_silence(web.store, matcher, devices, duration, user.name, comment, time.time())
        except ActionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        log.info("console: %s silenced %s for %.0fs (actions %s)", user.name, matcher, duration, ids)
        return JSONResponse({"actions": ids, "author": user.name})

    async def api_command(request: Request, session: Session, user: User) -> Response:
        body, refused = await operator_body(request, user)
        if refused is not None:
            return refused
        kind, device = str(body.get("kind", "")), str(body.get("device", ""))
        if kind not in COMMANDS:
            return JSONResponse({"error": f"kind must be one of {', '.join(COMMANDS)}"}, status_code=400)
        if web.store.device(device) is None:
            return JSONResponse({"error": f"no device {device!r}"}, status_code=404)
        comment = str(body.get("comment", "")) or COMMANDS[kind]
        now = time.time()
        action = record_command(
            web.store, kind, device, {}, user.name, comment, now, web.settings.command_ttl_s
        )
        log.info("console: %s sent %s to %s (action %d)", user.name, kind, device, action)
        return JSONResponse({"action": action, "author": user.name})

    async def metrics_endpoint(request: Request) -> Response:
        text = metrics.render(web.store, web.registry, web.ingestion, web.hub.streams)
        return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)

    routes = [
        Route("/", page("fleet")),
        Route("/alerts", page("alerts")),
        Route("/device/{name}", page("device")),
        Route("/history", page("history")),
        Route("/wall", page("wall")),
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", guarded(logout, action=True), methods=["POST"]),
        Route("/api/fleet", guarded(api_fleet)),
        Route("/api/alerts", guarded(api_alerts)),
        Route("/api/device/{name}", guarded(api_device)),
        Route("/api/history", guarded(api_history)),
        Route("/api/events", guarded(api_events)),
        Route("/api/ack", guarded(api_ack, action=True), methods=["POST"]),
        Route("/api/silence", guarded(api_silence, action=True), methods=["POST"]),
        Route("/api/command", guarded(api_command, action=True), methods=["POST"]),
        Route("/metrics", metrics_endpoint),
        Mount("/static", StaticFiles(directory=str(_STATIC)), name="static"),
    ]
    return _security_headers(Starlette(routes=routes))


def _local(path: str) -> str:
    """Only a path on this site: a `next` that names another host is an open redirect."""
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/") or path.startswith("//"):
        return "/"
    return path


def _event(change: Change) -> str:
    data = {"device": change.device, "key": change.key, **change.data}
    return f"event: {change.kind}\ndata: {json.dumps(data)}\n\n"


async def _stream(web: Web) -> AsyncIterator[str]:
    """One page's live stream until it goes away or the console stops; what is queued goes out in
    one write (a fold batch makes hundreds of changes at once)."""
    queue = web.hub.subscribe()
    try:
        yield "retry: 1000\n\n"
        idle = 0.0
        while not web.closing:
            try:
                first = await asyncio.wait_for(queue.get(), 1.0)
            except TimeoutError:
                idle += 1.0
                if idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield ": keepalive\n\n"
                continue
            idle = 0.0
            yield "".join(_event(change) for change in [first, *web.hub.drain(queue)])
    finally:
        web.hub.unsubscribe(queue)


class _Server(uvicorn.Server):
    """uvicorn inside the console's loop: the service owns SIGTERM/SIGINT, not uvicorn."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """The page's listening socket, bound before the service starts so a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def serve_web(web: Web, sock: socket.socket) -> None:
    """Serve the page on `sock` until cancelled; then live streams end and uvicorn shuts down cleanly."""
    config = uvicorn.Config(
        create_app(web), log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    finally:
        web.closing = True
        server.should_exit = True
        await task
