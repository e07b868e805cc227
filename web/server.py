"""The HTTP and WebSocket side (aiohttp), on its own thread and asyncio loop.

Routes (all GET unless said; everything but the page's static files needs access, web.auth):

    /                  the page (or the login form when a token is needed and not presented)
    POST /login        form field ``token`` -> session cookie, redirect to /
    /static/NAME       the page's script and style (shipped in the package, read at start)
    /ws                WebSocket: the server pushes updates (web.board); the browser may send
                       {"t": "ping", "n": N} | {"t": "pause"} | {"t": "resume"}
    /api/state         every stream's state, the recent events, the health (JSON)
    /api/events        the event store's history: ?limit=1..500&before=ID&stream=S&model=M&label=L
    /clips/ID          the clip of stored event ID (Range requests work: the audio element seeks)

Every input is checked: query parameters against an allow-list with types and bounds, form
bodies up to 4 KiB, WebSocket messages up to 1 KiB against typed Structs and at most
``MSG_RATE`` a second; a browser that keeps sending bad messages is disconnected (1008).
Each browser has a sender task that composes from the board only when the board changed,
at most ``update_hz`` times a second, and only while its socket's send buffer is nearly
empty: a slow browser is sent less often, never a queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from common.errors import UserError
from common.observe.ratelog import RateLimitedLog
from web.auth import COOKIE, Access
from web.board import Board, Cursor
from web.history import StoreReader, StoreUnavailable
from web.requests import CLIENT_DECODER, BadRequest, Pause, Ping, history_query

log = logging.getLogger("soundbus.web")

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
MAX_CLIENT_MSG = 1024  # bytes of one WebSocket message from a browser
MSG_RATE = 20.0  # messages a second a browser may send (burst of twice that)
MAX_BAD_MSGS = 10  # malformed messages before the server hangs up
MAX_SEND_BUFFER = 64 * 1024  # bytes waiting in a browser's socket before it is skipped
HEARTBEAT_S = 20.0
STORE_WORKERS = 2
MAX_STORE_CALLS = 8  # store reads in flight; more are answered 503
LOGIN_FAILURES = 5  # per LOGIN_WINDOW_S, all addresses together; then 429
LOGIN_WINDOW_S = 10.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; connect-src 'self'; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chromium send "Origin: null" with the login form
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


# -- one browser -----------------------------------------------------------------------------


class Client:
    """One connected browser: its socket, its place on the board, its manners."""

    def __init__(self, ws: web.WebSocketResponse, transport: Any) -> None:
        self.ws, self.transport = ws, transport
        self.cursor = Cursor()
        self.gen = -1  # the board generation last composed for
        self.paused = False
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.bad = 0
        self.allowance = 2 * MSG_RATE  # token bucket: messages it may still send now
        self.last_msg = time.monotonic()
        self.sent_msgs = 0
        self.skipped = 0  # turns skipped because its socket had not drained

    def spend(self) -> bool:
        """One message from the browser: False when it sends faster than MSG_RATE."""
        now = time.monotonic()
        self.allowance = min(2 * MSG_RATE, self.allowance + (now - self.last_msg) * MSG_RATE)
        self.last_msg = now
        if self.allowance < 1:
            return False
        self.allowance -= 1
        return True

    def buffered(self) -> int:
        t = self.transport
        return t.get_write_buffer_size() if t is not None and not t.is_closing() else 0


# -- the server ------------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one); a UserError says why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--listen {host}:{port}: cannot use the address {host!r} ({e.strerror}); give an IP "
                        "address of this machine, e.g. 127.0.0.1 or 0.0.0.0.") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        why = {98: "the port is in use by another process; choose another with --listen HOST:PORT",
               99: "no interface of this machine has that address; use 127.0.0.1, 0.0.0.0 or one of its own",
               13: "permission denied (ports below 1024 need root); choose a port above 1024"}
        raise UserError(f"cannot listen on {host}:{port}: {why.get(e.errno, e.strerror)}.") from None
    return sock


class WebServer:
    """aiohttp on a thread of its own; ``start`` returns once it serves, ``stop`` once it has stopped."""

    def __init__(self, board: Board, access: Access, sock: socket.socket, hello: dict[str, Any],
                 store: StoreReader | None = None, update_hz: float = 10.0, max_clients: int = 64,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.board, self.access, self.sock, self.store = board, access, sock, store
        self.hello = msgspec.json.encode({"t": "hello", **hello})
        self.interval = 1.0 / update_hz
        self.max_clients = max_clients
        self.ssl_context = ssl_context
        self.static = {name: (STATIC / name).read_bytes() for name in STATIC_FILES}
        self.index = (STATIC / "index.html").read_bytes()
        self.clients: set[Client] = set()
        self.counts: dict[str, int] = {"clients_refused": 0, "ws_bad": 0, "ws_hung_up": 0, "http": 0,
                                       "http_bad": 0, "http_denied": 0, "login_failed": 0, "store_busy": 0,
                                       "ws_no_pong": 0}
        self._login_failures: list[float] = []
        self._store_calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._gen = 0
        self._changed: asyncio.Event | None = None
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(STORE_WORKERS, thread_name_prefix="web-store")
        self._warn = RateLimitedLog(log)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if ssl_context else 'http'}://{shown}:{port}/"

    # -- life ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._main, name="web-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError("the web server did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except Exception as e:  # noqa: BLE001 - handed to start(), which raises it in the stage's thread
            self._error = e
            self._started.set()
            log.error("web server failed: %s", e)
            return
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def _serve(self) -> None:
        self._changed = asyncio.Event()
        app = web.Application(client_max_size=4096, middlewares=[self._middleware])
        app.router.add_get("/", self._page)
        app.router.add_post("/login", self._login)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_get(r"/clips/{id:\d{1,19}}", self._clip)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock, ssl_context=self.ssl_context).start()
        self.board.on_change = self._board_changed

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every browser (1001 going away), stop serving, join the thread."""
        loop = self._loop
        if loop is None or self._thread is None:
            return
        self.board.on_change = None
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                fut.result(timeout_s)
            except (concurrent.futures.TimeoutError, RuntimeError) as e:
                log.warning("web server did not stop cleanly: %s", e)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _shutdown(self) -> None:
        for c in list(self.clients):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.ws.close(code=1001, message=b"server stopping"), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()

    def stats(self) -> dict[str, Any]:
        """Counters for the health panel (read from the stage's thread: plain ints)."""
        clients = list(self.clients)
        return {"clients": len(clients), "url": self.url, **self.counts,
                "clients_skipped_turns": sum(c.skipped for c in clients)}

    # -- board changes: from the stage's thread to this loop -------------------------------

    def _board_changed(self) -> None:
        """Called by the stage's thread: schedule one wake-up (never more than one pending)."""
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed while stopping
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        self._gen += 1
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    # -- HTTP ------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.counts["http"] += 1
        public = request.path in ("/", "/login") or request.path.startswith("/static/")
        if not public and not self.access.allowed(request.headers, request.cookies):
            self.counts["http_denied"] += 1
            resp: web.StreamResponse = web.json_response({"error": "not allowed: log in on the page first"},
                                                         status=401 if self.access.token else 403)
        elif request.path in ("/", "/login") and not self.access.host_ok(request.headers.get("Host", "")):
            self.counts["http_denied"] += 1
            resp = web.Response(status=403, text="this view answers only to a loopback address")
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as e:  # 404, 400, redirects: raised by aiohttp or the handlers
                if e.status >= 400:
                    self.counts["http_bad"] += 1
                e.headers.update(SECURITY_HEADERS)
                raise
        if not resp.prepared:  # a WebSocket (prepared) has sent its headers already
            resp.headers.update(SECURITY_HEADERS)
        return resp

    async def _page(self, request: web.Request) -> web.Response:
        if self.access.token is not None and not self.access.allowed(request.headers, request.cookies):
            failed = request.query.get("failed") == "1"
            return web.Response(body=login_page(failed), content_type="text/html", status=401)
        return web.Response(body=self.index, content_type="text/html")

    async def _login(self, request: web.Request) -> web.Response:
        if self.access.token is None:
            raise web.HTTPFound("/")
        if not Access.origin_ok(request.headers.get("Origin"), request.host):
            raise web.HTTPForbidden(text="login from another site refused")
        now = time.monotonic()
        self._login_failures = [t for t in self._login_failures if now - t < LOGIN_WINDOW_S]
        if len(self._login_failures) >= LOGIN_FAILURES:
            raise web.HTTPTooManyRequests(text="too many failed logins; wait a few seconds")
        try:
            form = await request.post()
        except (ValueError, web.HTTPException):
            raise web.HTTPBadRequest(text="send the login form") from None
        token = form.get("token")
        if not isinstance(token, str) or not self.access.token_ok(token.strip()):
            self._login_failures.append(now)
            self.counts["login_failed"] += 1
            await asyncio.sleep(0.5)
            raise web.HTTPSeeOther("/?failed=1")
        resp = web.HTTPSeeOther("/")
        resp.set_cookie(COOKIE, self.access.session, httponly=True, samesite="Strict", path="/",
                        secure=self.access.tls)
        raise resp

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=self.static[name], content_type=STATIC_FILES[name])

    async def _state(self, request: web.Request) -> web.Response:
        snap = self.board.snapshot()
        snap["server"] = self.stats()
        return web.Response(body=msgspec.json.encode(snap), content_type="application/json")

    async def _events(self, request: web.Request) -> web.Response:
        try:
            q = history_query(request.query)
        except BadRequest as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        if self.store is None:
            return web.json_response({"events": [], "store": None})
        rows = await self._read_store(self.store.history, q)
        return web.Response(body=msgspec.json.encode({"events": rows, "store": str(self.store.dir)}),
                            content_type="application/json")

    async def _clip(self, request: web.Request) -> web.StreamResponse:
        event_id = int(request.match_info["id"])
        if self.store is None or not 1 <= event_id < 2**63:
            raise web.HTTPNotFound(text="no clip: the view was started without --events-dir")
        found = await self._read_store(self.store.clip, event_id)
        if found is None:
            raise web.HTTPNotFound(text=f"event {event_id} has no clip")
        path, media = found
        resp = web.FileResponse(path, headers={"Content-Type": media})
        return resp

    async def _read_store(self, fn: Any, arg: Any) -> Any:
        if self._store_calls >= MAX_STORE_CALLS:
            self.counts["store_busy"] += 1
            raise web.HTTPServiceUnavailable(text="the event store is busy; try again")
        self._store_calls += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)
        except StoreUnavailable as e:
            self._warn.warning("store_unavailable", f"event store: {e}")
            raise web.HTTPServiceUnavailable(text=str(e)) from None
        finally:
            self._store_calls -= 1

    # -- WebSocket ---------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if not Access.origin_ok(request.headers.get("Origin"), request.host):
            self.counts["http_denied"] += 1
            raise web.HTTPForbidden(text="WebSocket from another site refused")
        if len(self.clients) >= self.max_clients:
            self.counts["clients_refused"] += 1
            raise web.HTTPServiceUnavailable(text=f"{self.max_clients} browsers are connected already")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_CLIENT_MSG, compress=False,
                                   writer_limit=MAX_SEND_BUFFER)
        await ws.prepare(request)
        client = Client(ws, request.transport)
        self.clients.add(client)
        sender = asyncio.create_task(self._send_loop(client))
        try:
            await ws.send_frame(self.hello, WSMsgType.TEXT)
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_message(client, msg.data)
                elif msg.type is WSMsgType.ERROR:  # too large, bad framing, no pong: aiohttp closes it
                    if isinstance(ws.exception(), asyncio.TimeoutError):
                        self.counts["ws_no_pong"] += 1
                    else:
                        self._bad(client, f"{ws.exception()}")
                    break
                else:
                    self._bad(client, "binary message")
                if client.bad > MAX_BAD_MSGS or not client.spend():
                    self.counts["ws_hung_up"] += 1
                    await ws.close(code=1008, message=b"too many messages, or too many bad ones")
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self.clients.discard(client)
        return ws

    def _bad(self, client: Client, why: str) -> None:
        client.bad += 1
        self.counts["ws_bad"] += 1
        self._warn.warning("ws_bad", f"a browser sent a bad WebSocket message: {why[:120]}")

    async def _on_message(self, client: Client, data: str) -> None:
        try:
            msg = CLIENT_DECODER.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self._bad(client, str(e))
            await client.ws.send_frame(msgspec.json.encode({"t": "error", "why": str(e)[:200]}), WSMsgType.TEXT)
            return
        if type(msg) is Ping:
            await client.ws.send_frame(msgspec.json.encode({"t": "pong", "n": msg.n}), WSMsgType.TEXT)
        elif type(msg) is Pause:
            client.paused = True
            client.resumed.clear()
        else:
            client.paused = False
            client.resumed.set()

    async def _send_loop(self, c: Client) -> None:
        """Compose for ``c`` when the board changed, at most every ``interval``, while its socket drains."""
        ws = c.ws
        next_at = 0.0
        while not ws.closed:
            while c.gen == self._gen:
                assert self._changed is not None
                await self._changed.wait()
            if c.paused:
                await c.resumed.wait()
                continue
            if c.buffered() > MAX_SEND_BUFFER:  # still sending the last one: skip, take the latest later
                c.skipped += 1
                await asyncio.sleep(self.interval)
                continue
            c.gen = self._gen
            payload = self.board.compose(c.cursor, time.time_ns())
            if payload is not None:
                await ws.send_frame(payload, WSMsgType.TEXT)
                c.sent_msgs += 1
            now = time.monotonic()
            next_at = max(next_at + self.interval, now)
            await asyncio.sleep(next_at - now)


def login_page(failed: bool) -> bytes:
    """The login form (no script: a plain form POST)."""
    note = '<p class="err">That token is not right.</p>' if failed else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>soundbus: log in</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/style.css"></head>'
        '<body class="login"><form method="post" action="/login"><h1>soundbus</h1>'
        '<p>This view needs the token it was started with (<code>--token-file</code> or '
        '<code>SOUNDBUS_WEB_TOKEN</code>).</p>'
        f'{note}<input type="password" name="token" autocomplete="current-password" autofocus '
        'aria-label="token"> <button type="submit">Open</button></form></body></html>'
    ).encode()

