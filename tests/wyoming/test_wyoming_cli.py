"""``soundbus wyoming`` as a process on its own: its mDNS announcement, and clear refusals of bad flags."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("wyoming", reason="soundbus wyoming needs the wyoming extra: pip install -e '.[wyoming]'")

from tests.wyoming.conftest import ROOT, Stage, free_port  # noqa: E402

SERVICE = "_wyoming._tcp.local."


def test_zeroconf_announces_the_server_and_withdraws_it_at_exit(stages):
    """--zeroconf registers NAME._wyoming._tcp.local. with the server's address and port (what Home
    Assistant's discovery browses for); a browser here finds it, and sees it removed when the server stops."""
    zeroconf = pytest.importorskip("zeroconf")
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    name = f"soundbus-test-{os.getpid()}-{free_port()}"
    port = free_port()
    server = Stage("wyoming_server", "--uri", f"tcp://127.0.0.1:{port}", "--zeroconf", name,
                   "--output", f"@tcp://127.0.0.1:{free_port()}", "--input", f"tcp://127.0.0.1:{free_port()}")
    stages.append(server)
    line = server.wait_for(r"announced|announcement failed", 60)
    if "failed" in line:
        pytest.skip(f"no multicast on this machine: {line}")

    async def browse() -> None:
        zc = AsyncZeroconf(ip_version=zeroconf.IPVersion.V4Only)
        changes: asyncio.Queue = asyncio.Queue()
        full = f"{name}.{SERVICE}"

        def on_change(zeroconf, service_type, name, state_change):  # noqa: ARG001 - python-zeroconf's signature
            if name == full:
                changes.put_nowait(state_change.name)

        browser = AsyncServiceBrowser(zc.zeroconf, SERVICE, handlers=[on_change])
        try:
            assert await asyncio.wait_for(changes.get(), 30) == "Added"
            info = AsyncServiceInfo(SERVICE, full)
            assert await info.async_request(zc.zeroconf, 5000)
            assert info.port == port and info.parsed_addresses() == ["127.0.0.1"]
            await asyncio.to_thread(server.stop)
            assert await asyncio.wait_for(changes.get(), 30) == "Removed"
        finally:
            await browser.async_cancel()
            await zc.async_close()

    asyncio.run(browse())
    assert server.proc.returncode == 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wyoming_server", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args, says", [
    (["--uri", "http://localhost:10400"], "use tcp://HOST:PORT or unix://PATH"),
    (["--uri", "tcp://localhost"], "give a host and a port"),
    (["--uri", "unix:///tmp/x.sock", "--zeroconf"], "--zeroconf announces a TCP server"),
    (["--stream-prefix", "a/b"], "--stream-prefix"),
    (["--threshold", "2"], "outside"),
])
def test_bad_flags_exit_2_with_one_sentence(args, says):
    r = run_cli(*args)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_port_in_use_is_refused_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("--uri", f"tcp://127.0.0.1:{port}", "--output", f"@tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "cannot listen on" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_connections_are_bounded_in_number_and_in_silence(stages):
    """--max-clients 1: a second client gets a Wyoming error (busy) and is closed; --idle-timeout 1:
    a client that sends nothing more is closed, and its slot serves the next client."""
    from wyoming.event import async_read_event

    port = free_port()
    server = Stage("wyoming_server", "--uri", f"tcp://127.0.0.1:{port}", "--max-clients", "1", "--idle-timeout", "1",
                   "--output", f"@tcp://127.0.0.1:{free_port()}", "--input", f"tcp://127.0.0.1:{free_port()}")
    stages.append(server)
    server.wait_for(r"ready uri=", 60)

    async def scenario():
        first_r, first_w = await asyncio.open_connection("127.0.0.1", port)
        first_w.write(b'{"type": "describe"}\n')
        assert (await asyncio.wait_for(async_read_event(first_r), 10)).type == "info"
        second_r, second_w = await asyncio.open_connection("127.0.0.1", port)
        busy = await asyncio.wait_for(async_read_event(second_r), 10)
        assert busy.type == "error" and busy.data["code"] == "busy"
        assert await asyncio.wait_for(async_read_event(second_r), 10) is None  # closed
        assert await asyncio.wait_for(async_read_event(first_r), 15) is None  # silent: closed after ~1 s
        third_r, third_w = await asyncio.open_connection("127.0.0.1", port)  # the slot is free again
        third_w.write(b'{"type": "describe"}\n')
        assert (await asyncio.wait_for(async_read_event(third_r), 10)).type == "info"
        for w in (first_w, second_w, third_w):
            w.close()

    asyncio.run(scenario())


def test_without_the_wyoming_package_it_says_what_to_install(tmp_path):
    (tmp_path / "wyoming").mkdir()
    (tmp_path / "wyoming" / "__init__.py").write_text('raise ImportError("blocked by the test")\n')
    r = subprocess.run([sys.executable, "-m", "wyoming_server"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and "pip install 'soundbus[wyoming]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
