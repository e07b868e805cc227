"""The web server on a real socket (its own thread and loop), driven by real HTTP and WebSocket clients.

Access (loopback Host, Origin, the token's login and cookie), every request and WebSocket
message validated, clips served from a real event store with path checks, 50 browsers at
once, browsers that vanish mid-stream, and one that stops reading (it gets skipped, never
queued for).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from events.schema import open_db
from web.auth import COOKIE, Access
from web.board import Board, Update
from web.history import StoreReader
from web.server import MAX_BAD_MSGS, MAX_SEND_BUFFER, WebServer, bind_socket

BANDS, RING = 64, 500
TOKEN = "s3cret-token-0123456789"
NS = 1_000_000_000
T0 = 1_700_000_000 * NS


class Served:
    """A WebServer on 127.0.0.1:(free port) over a Board the test writes to."""

    def __init__(self, access: Access | None = None, store: StoreReader | None = None, max_clients: int = 64) -> None:
        self.board = Board(RING, BANDS, 64)
        hello = {"version": 1, "bands": BANDS, "col_hz": 25, "ring": RING, "db": [-100, 0], "update_hz": 10,
                 "store": store is not None, "idle_s": 5}
        self.server = WebServer(self.board, access or Access(None, True), bind_socket("127.0.0.1", 0), hello, store,
                                10.0, max_clients)
        self.server.start()
        self.url = self.server.url.rstrip("/")
        self.ws_url = self.url.replace("http://", "ws://") + "/ws"
        self.host = self.url.split("//", 1)[1]

    def push(self, streams: int = 1, columns: int = 3, first: int = 0) -> None:
        """One update, as the stage's loop makes them."""
        cols = np.full((columns, BANDS), first % 256, np.uint8)
        self.board.apply(Update(columns={f"mic{i}": cols for i in range(streams)},
                                states={f"mic{i}": {"f": json.dumps({"k": first}).encode()} for i in range(streams)}))


@pytest.fixture
def served() -> Iterator:
    made: list[Served] = []

    def make(**kw) -> Served:
        made.append(Served(**kw))
        return made[-1]

    yield make
    for s in made:
        s.server.stop()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def get(url: str, **kw) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False, **kw) as r:
        return r.status, dict(r.headers), await r.read()


# ---------------------------------------------------------------------------------------
# the page, the API, access


def test_page_static_and_security_headers(served) -> None:
    sv = served()

    async def go() -> None:
        status, headers, body = await get(sv.url + "/")
        assert status == 200 and b"/static/app.js" in body
        assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
        status, headers, body = await get(sv.url + "/static/app.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"WebSocket" in body
        for bad in ("/static/nope.js", "/static/..%2f__init__.py", "/static/../cli.py", "/clips/x", "/etc/passwd"):
            assert (await get(sv.url + bad))[0] == 404, bad
        async with aiohttp.ClientSession() as s, s.post(sv.url + "/api/state") as r:
            assert r.status == 405  # read-only
        status, _, body = await get(sv.url + "/api/state")
        assert status == 200 and json.loads(body)["server"]["clients"] == 0

    run(go())


def test_without_a_token_only_loopback_host_names_are_answered(served) -> None:
    sv = served()

    async def go() -> None:
        port = sv.host.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert (await get(sv.url + "/api/state", headers={"Host": host}))[0] == 200, host
        for path in ("/", "/api/state", "/ws"):  # DNS rebinding: a page of evil.example resolving to 127.0.0.1
            assert (await get(sv.url + path, headers={"Host": f"evil.example:{port}"}))[0] == 403, path

    run(go())


def test_a_websocket_from_another_site_is_refused(served) -> None:
    sv = served()

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await s.ws_connect(sv.ws_url, headers={"Origin": "http://evil.example"})
            assert e.value.status == 403
            async with s.ws_connect(sv.ws_url, headers={"Origin": sv.url}) as ws:  # the page's own origin
                assert (await ws.receive_json(timeout=10))["t"] == "hello"

    run(go())


def test_a_token_is_asked_for_and_then_a_session_cookie_opens_everything(served) -> None:
    sv = served(access=Access(TOKEN, loopback_only=False))

    async def go() -> None:
        status, _, body = await get(sv.url + "/")
        assert status == 401 and b'name="token"' in body and TOKEN.encode() not in body
        for path in ("/api/state", "/api/events", "/clips/1"):
            assert (await get(sv.url + path))[0] == 401, path
        assert (await get(sv.url + "/api/state", headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 200
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # cookies of an IP host
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await s.ws_connect(sv.ws_url)
            async with s.post(sv.url + "/login", data={"token": "wrong"}, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/?failed=1" and COOKIE not in r.cookies
            async with s.post(sv.url + "/login", data={"token": TOKEN}, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/"
                cookie = r.cookies[COOKIE]
                assert cookie["httponly"] and cookie["samesite"] == "Strict" and TOKEN not in cookie.value
            async with s.get(sv.url + "/") as r:
                assert r.status == 200 and b"/static/app.js" in await r.read()
            async with s.ws_connect(sv.ws_url) as ws:
                assert (await ws.receive_json(timeout=10))["t"] == "hello"
        async with aiohttp.ClientSession() as s:  # guessing is throttled
            codes = []
            for _ in range(7):
                async with s.post(sv.url + "/login", data={"token": "guess"}, allow_redirects=False) as r:
                    codes.append(r.status)
            assert codes[-1] == 429 and sv.server.counts["login_failed"] >= 5

    run(go())


# ---------------------------------------------------------------------------------------
# the event store: history and clips


def make_store(d: Path) -> Path:
    """A real event store (the events package's own schema) with three events and their clips."""
    conn = open_db(d, create=True)
    day = d / "clips" / "2023-11-14" / "mic1"
    day.mkdir(parents=True)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    sf.write(day / "1.flac", tone, 16000, subtype="PCM_24")
    (d / "outside.flac").write_bytes((day / "1.flac").read_bytes())
    os.symlink(d / "outside.flac", day / "3.flac")  # a clip path that leaves clips/ through a link
    rows = [(1, "mic1", "speech", "clips/2023-11-14/mic1/1.flac"), (2, "mic1", "dog", "../events.db"),
            (3, "mic2", "speech", "clips/2023-11-14/mic1/3.flac"), (4, "mic2", "speech", "")]
    conn.execute("BEGIN")
    for rid, stream, label, clip in rows:
        conn.execute("INSERT INTO events (id, stream, model, label, start_ns, end_ns, peak, mean, clip, status, "
                     "clip_status) VALUES (?, ?, 'vad', ?, ?, ?, 0.9, 0.8, ?, 'closed', ?)",
                     (rid, stream, label, T0 + rid * NS, T0 + rid * NS + NS // 2, clip, "written" if clip else ""))
    conn.execute("COMMIT")
    conn.close()
    return d


def test_history_is_read_only_and_every_parameter_checked(served, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    sv = served(store=StoreReader(store))

    async def go() -> None:
        status, _, body = await get(sv.url + "/api/events")
        rows = json.loads(body)["events"]
        assert status == 200 and [r["id"] for r in rows] == [4, 3, 2, 1]
        assert rows[3]["clip"] is True and rows[0]["clip"] is False  # a flag: paths never leave the server
        assert [r["id"] for r in json.loads((await get(sv.url + "/api/events?before=3&limit=1"))[2])["events"]] == [2]
        got = json.loads((await get(sv.url + "/api/events?stream=mic2&label=speech"))[2])["events"]
        assert [r["id"] for r in got] == [4, 3]
        for q in ("limit=0", "limit=501", "limit=x", "before=-1", "before=99999999999999999999", "stream=../x",
                  "stream=" + "a" * 65, "label=%0a", "model=a%20b", "sql=1", "limit=1&limit=2"):
            status, _, body = await get(sv.url + "/api/events?" + q)
            assert status == 400, (q, body)

    run(go())
    with open(store / "events.db", "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00"  # and nothing wrote to it: mode=ro


def test_clips_are_served_by_event_id_inside_the_clips_directory_only(served, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    sv = served(store=StoreReader(store))

    async def go() -> None:
        status, headers, body = await get(sv.url + "/clips/1")
        assert status == 200 and headers["Content-Type"] == "audio/flac"
        assert body == (store / "clips/2023-11-14/mic1/1.flac").read_bytes()
        status, headers, part = await get(sv.url + "/clips/1", headers={"Range": "bytes=0-99"})
        assert status == 206 and part == body[:100]  # the audio element seeks with ranges
        for eid in ("2", "3", "4", "999", "0"):  # ../events.db, a symlink out, no clip, no event
            assert (await get(sv.url + f"/clips/{eid}"))[0] == 404, eid

    run(go())


def test_a_store_that_is_not_there_yet_says_so(served, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    sv = served(store=StoreReader(tmp_path / "empty"))

    async def go() -> None:
        status, _, body = await get(sv.url + "/api/events")
        assert status == 503 and b"no event store" in body

    run(go())


# ---------------------------------------------------------------------------------------
# WebSocket: what browsers send, many browsers, vanishing browsers, slow browsers


def test_updates_reach_a_browser_and_pause_stops_them(served) -> None:
    sv = served()

    async def go() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(sv.ws_url) as ws:
            hello = await ws.receive_json(timeout=10)
            assert hello["t"] == "hello" and hello["bands"] == BANDS
            sv.push(columns=4, first=7)
            u = await ws.receive_json(timeout=10)
            spec = u["s"]["mic0"]["spec"]
            assert spec["n"] == 4 and base64.b64decode(spec["d"]) == bytes([7]) * (4 * BANDS)
            await ws.send_json({"t": "ping", "n": 41})
            while (m := await ws.receive_json(timeout=10))["t"] != "pong":
                pass
            assert m["n"] == 41
            await ws.send_json({"t": "pause"})
            await asyncio.sleep(0.3)
            for k in range(5):
                sv.push(first=k)
                await asyncio.sleep(0.05)
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive_json(timeout=0.7)
            await ws.send_json({"t": "resume"})
            u = await ws.receive_json(timeout=10)
            assert u["s"]["mic0"]["f"] == {"k": 4}  # the latest state, not the five in between
            assert u["s"]["mic0"]["spec"]["n"] == 15

    run(go())


BAD_MESSAGES = ["not json", "[]", "{}", '{"t": "ping", "n": "x"}', '{"t": "ping", "n": -1}', '{"t": "subscribe"}',
                '{"t": "pause", "extra": 1}', '{"t": "ping", "n": 99999999999999999999}', "\u0000" * 10]


def test_malformed_messages_are_answered_counted_and_a_persistent_sender_cut_off(served) -> None:
    sv = served()

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(sv.ws_url) as ws:
                await ws.receive_json(timeout=10)
                for text in BAD_MESSAGES[:5]:
                    await ws.send_str(text)
                    while (await ws.receive_json(timeout=10))["t"] != "error":
                        pass
                await ws.send_bytes(b"\x00\x01")  # binary: not part of the protocol
                await ws.send_json({"t": "ping", "n": 1})
                while (await ws.receive_json(timeout=10))["t"] != "pong":
                    pass  # still served
                for text in BAD_MESSAGES * 2:
                    await ws.send_str(text)
                closed = await _until_closed(ws)
                assert closed == aiohttp.WSCloseCode.POLICY_VIOLATION
            async with s.ws_connect(sv.ws_url) as ws:  # too large: aiohttp refuses it, the server lives on
                await ws.receive_json(timeout=10)
                await ws.send_str('{"t": "ping", "n": 1, "pad": "' + "x" * 4000 + '"}')
                assert await _until_closed(ws) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            async with s.ws_connect(sv.ws_url) as ws:  # a flood of valid messages is cut off too
                await ws.receive_json(timeout=10)
                for n in range(300):
                    await ws.send_json({"t": "ping", "n": n})
                assert await _until_closed(ws) == aiohttp.WSCloseCode.POLICY_VIOLATION
            async with s.ws_connect(sv.ws_url) as ws:
                assert (await ws.receive_json(timeout=10))["t"] == "hello"
        assert sv.server.counts["ws_bad"] > MAX_BAD_MSGS and sv.server.counts["ws_hung_up"] >= 2

    run(go())


async def _until_closed(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    while True:
        m = await ws.receive(timeout=10)
        if m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code
        if m.type is aiohttp.WSMsgType.ERROR:
            return ws.close_code


def test_fifty_browsers_at_once_and_half_of_them_vanish_mid_stream(served) -> None:
    sv = served(max_clients=50)

    async def browser(s: aiohttp.ClientSession, i: int, vanish: asyncio.Event) -> int:
        async with s.ws_connect(sv.ws_url) as ws:
            got = 0
            while True:
                if i % 2 and vanish.is_set():
                    ws._response.connection.transport.abort()  # the tab is killed: no close frame
                    return got
                try:
                    m = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if m.type is not aiohttp.WSMsgType.TEXT:
                    return got
                if json.loads(m.data)["t"] == "u":
                    got += 1

    async def go() -> None:
        vanish = asyncio.Event()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            tasks = [asyncio.create_task(browser(s, i, vanish)) for i in range(50)]
            for _ in range(200):
                if sv.server.stats()["clients"] == 50:
                    break
                await asyncio.sleep(0.05)
            assert sv.server.stats()["clients"] == 50
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:  # the 51st is refused, not queued
                await s.ws_connect(sv.ws_url)
            assert e.value.status == 503
            for k in range(20):
                sv.push(streams=16, first=k)
                await asyncio.sleep(0.1)
            vanish.set()
            for k in range(20, 40):
                sv.push(streams=16, first=k)
                await asyncio.sleep(0.1)
            for _ in range(100):
                if sv.server.stats()["clients"] == 25:
                    break
                await asyncio.sleep(0.05)
            assert sv.server.stats()["clients"] == 25
            await asyncio.sleep(0.3)
            for t in tasks[::2]:
                t.cancel()
            got = [t.result() for t in tasks[1::2]]
        assert min(got) > 0  # every browser was served before it vanished
        for _ in range(100):
            if sv.server.stats()["clients"] == 0:
                break
            await asyncio.sleep(0.05)
        assert sv.server.stats()["clients"] == 0
        status, _, _ = await get(sv.url + "/api/state")
        assert status == 200

    run(go())


def test_a_browser_that_stops_reading_is_not_queued_for(served) -> None:
    sv = served()
    sock = socket.create_connection(("127.0.0.1", int(sv.host.rsplit(":", 1)[1])))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: {sv.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    assert b" 101 " in sock.recv(1024).split(b"\r\n", 1)[0]
    try:
        k = 0
        for _ in range(60):  # 6 s of ~200 kB updates that nobody reads: the kernel's buffers fill first
            sv.push(streams=16, columns=200, first=k)
            k += 1
            time.sleep(0.1)
        (c,) = list(sv.server.clients)
        biggest = 16 * RING * BANDS * 4 // 3 + 16 * 200  # the largest update JSON: every column held, about
        for _ in range(20):  # the server holds at most its bound plus the message it was writing
            assert c.buffered() <= MAX_SEND_BUFFER + biggest
            sv.push(streams=16, columns=200, first=k)
            k += 1
            time.sleep(0.1)
        assert c.sent_msgs < k // 2  # most updates were never composed for it: it gets the latest later
    finally:
        sock.close()
    for _ in range(100):  # and once it is gone, it is forgotten
        if not sv.server.clients:
            break
        time.sleep(0.1)
    assert not sv.server.clients
