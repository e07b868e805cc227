"""Every ZeroMQ socket soundbus opens is made here, so its options are set in one place.

Options (all applied before bind/connect, as zmq.devices does):
- SNDHWM/RCVHWM: a bounded queue per peer; past it PUB drops (seen downstream as a
  sequence gap, never as a stall).
- LINGER: unsent messages are dropped on close after ``linger_ms`` so exit never hangs.
- RECONNECT_IVL / RECONNECT_IVL_MAX: a restarted peer is found again without any action.
- HEARTBEAT_IVL / HEARTBEAT_TIMEOUT: ZMTP pings detect a dead TCP peer.
- MAXMSGSIZE: a peer sending a larger message is disconnected by libzmq before we see it (and
  libzmq does not reconnect after that protocol error: common.transport.links does).
- CURVE: encryption plus client authentication through a ZAP allow-list (see common.keys),
  per direction: bound sockets with ``--curve-allow``, connecting ones with ``--curve-server``.

An address is a ZeroMQ endpoint; ``bind`` is chosen with a leading ``@`` and
``connect`` with ``>`` (the CZMQ convention), e.g. ``@tcp://*:5550``, ``>tcp://box:5550``.
Without a prefix PUB binds and SUB connects.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import zmq

from common.errors import UserError
from common.transport.keys import CurveConfig, apply_curve
from common.wire.codec import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

# Loopback defaults of the direct topology: capture -> convert -> classify -> tail.
DEFAULT_RAW = "tcp://127.0.0.1:5550"
DEFAULT_TENSOR = "tcp://127.0.0.1:5551"
DEFAULT_RESULT = "tcp://127.0.0.1:5552"
# Brokered topology: everyone connects to a proxy's two ports.
DEFAULT_PROXY_IN = "tcp://127.0.0.1:5560"  # publishers connect here (proxy XSUB)
DEFAULT_PROXY_OUT = "tcp://127.0.0.1:5561"  # subscribers connect here (proxy XPUB)


@dataclass
class SocketOptions:
    """Tunables shared by every socket; the defaults suit audio frames of 10-100 ms."""

    hwm: int = 1000  # messages queued per peer (~20 s of 20 ms frames)
    linger_ms: int = 200
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 500  # backoff cap: a restarted peer is back within 0.5 s
    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 3000
    max_msg_bytes: int = MAX_MESSAGE_BYTES
    curve: "CurveConfig | None" = None
    # Publishers only: refuse a send (zmq.Again) instead of dropping when a subscriber's queue is
    # full. For sources that can wait (files with --fast, replay) so nothing is lost.
    nodrop: bool = False


MAX_HWM = 1_000_000  # messages per peer; each may hold up to 16 MiB
_TCP = re.compile(r"^tcp://(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\*|\d{1,5})$")


def split_endpoint(addr: str, default_bind: bool) -> tuple[bool, str]:
    """('@tcp://...' -> bind, '>tcp://...' -> connect, plain -> ``default_bind``)."""
    if addr.startswith("@"):
        return True, addr[1:]
    if addr.startswith(">"):
        return False, addr[1:]
    return default_bind, addr


def check_endpoint(addr: str, bind: bool) -> None:
    """Refuse, with what to write instead, an address ZeroMQ would misread or that cannot work.

    ``tcp://HOST:PORT`` (port 1-65535; ``*`` only when binding), ``ipc://PATH``, ``inproc://NAME``.
    """
    example = "e.g. tcp://127.0.0.1:5550, @tcp://0.0.0.0:5550 or ipc:///run/soundbus/raw"
    if addr.startswith(("ipc://", "inproc://")):
        if len(addr.split("://", 1)[1]) == 0:
            raise UserError(f"address {addr!r} names no path; {example}.")
        return
    m = _TCP.match(addr)
    if not m:
        raise UserError(f"address {addr!r} is not a ZeroMQ endpoint soundbus uses; {example}.")
    port = m["port"]
    if port == "*":
        if not bind:
            raise UserError(f"address {addr!r}: a port of '*' only makes sense when binding; give the port number.")
    elif not 1 <= int(port) <= 65535:
        raise UserError(f"address {addr!r}: port {port} is outside 1-65535.")


def _apply(sock: zmq.Socket, opts: SocketOptions, binding: bool, endpoints: list[str]) -> None:
    sock.setsockopt(zmq.LINGER, opts.linger_ms)
    sock.setsockopt(zmq.SNDHWM, opts.hwm)
    sock.setsockopt(zmq.RCVHWM, opts.hwm)
    sock.setsockopt(zmq.RECONNECT_IVL, opts.reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, opts.reconnect_ivl_max_ms)
    sock.setsockopt(zmq.HEARTBEAT_IVL, opts.heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, opts.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, opts.heartbeat_timeout_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, opts.max_msg_bytes)
    if opts.nodrop and sock.type in (zmq.PUB, zmq.XPUB):
        sock.setsockopt(zmq.XPUB_NODROP, 1)
    if opts.curve is not None:
        _apply_curve(sock, opts.curve, binding, endpoints)


def _apply_curve(sock: zmq.Socket, curve: CurveConfig, binding: bool, endpoints: list[str]) -> None:
    """CURVE per direction: a bound socket is a server if an allow list is given, a connecting
    one a client if the server's key is given; otherwise it stays plain (e.g. a loopback hop)."""
    if (curve.allow_dir if binding else curve.server_public_file) is not None:
        apply_curve(sock, curve, server=binding)
        return
    remote = [e for e in endpoints if not re.search(r"(127\.0\.0\.1|localhost|\[::1\]|^[@>]?(ipc|inproc)://)", e)]
    if remote:
        need = "--curve-allow DIR" if binding else "--curve-server KEY"
        log.warning("%s is not encrypted: CURVE needs %s for it", ", ".join(remote), need)


def open_socket(
    ctx: zmq.Context,
    socket_type: int,
    endpoints: Iterable[str],
    opts: SocketOptions | None = None,
    default_bind: bool | None = None,
    before_links: Callable[[zmq.Socket], None] | None = None,
) -> zmq.Socket:
    """Create a socket, set every option, then bind/connect each endpoint.

    ``default_bind``: what an endpoint without ``@``/``>`` does; PUB/XPUB/XSUB bind,
    SUB connects unless told otherwise. ``before_links(sock)`` runs before any bind or connect
    (a socket monitor attached later can miss the first handshake).
    """
    opts = opts or SocketOptions()
    if default_bind is None:
        default_bind = socket_type in (zmq.PUB, zmq.XPUB, zmq.XSUB)
    endpoints = list(endpoints)
    for e in endpoints:
        check_endpoint(*reversed(split_endpoint(e, default_bind)))
    sock = ctx.socket(socket_type)
    try:
        any_bind = any(split_endpoint(e, default_bind)[0] for e in endpoints)
        _apply(sock, opts, any_bind, endpoints)
        if before_links is not None:
            before_links(sock)
        for e in endpoints:
            bind, addr = split_endpoint(e, default_bind)
            if bind:
                try:
                    sock.bind(addr)
                except zmq.ZMQError as err:
                    raise UserError(_bind_advice(addr, err)) from None
            else:
                try:
                    sock.connect(addr)
                except zmq.ZMQError as err:
                    raise UserError(f"cannot connect to {addr} ({err.strerror}); check the address.") from None
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def open_pub(ctx: zmq.Context, endpoints: Iterable[str], opts: SocketOptions | None = None) -> zmq.Socket:
    """A publisher (binds by default; ``>addr`` connects, e.g. to a proxy)."""
    return open_socket(ctx, zmq.PUB, endpoints, opts, default_bind=True)


def open_sub(
    ctx: zmq.Context,
    endpoints: Iterable[str],
    prefixes: Iterable[bytes],
    opts: SocketOptions | None = None,
    before_links: Callable[[zmq.Socket], None] | None = None,
) -> zmq.Socket:
    """A subscriber to ``prefixes`` (filtered at the publisher); connects by default."""
    sock = open_socket(ctx, zmq.SUB, endpoints, opts, default_bind=False, before_links=before_links)
    for p in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, p)
    return sock


def _bind_advice(addr: str, err: zmq.ZMQError) -> str:
    """One sentence for a failed bind, naming the likely cause."""
    if err.errno == zmq.EADDRINUSE:
        return (f"cannot bind {addr}: the port is in use by another process; choose another port with the "
                "address flag, or stop that process.")
    if err.errno == zmq.EADDRNOTAVAIL:
        return f"cannot bind {addr}: no interface of this machine has that address; use 0.0.0.0 or one of its own."
    if err.errno == zmq.EACCES:
        return f"cannot bind {addr}: permission denied (ports below 1024 need root); choose a port above 1024."
    return f"cannot bind {addr} ({err.strerror}); check the address."
