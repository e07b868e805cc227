"""CURVE keys and client authentication (ZAP) for links between machines.

Key files are the ones pyzmq's ``zmq.auth.create_certificates`` writes:
``NAME.key`` (public, safe to copy) and ``NAME.key_secret`` (keep on its box).
A binding socket is a CURVE server: it accepts only clients whose public ``.key``
file is in its allow directory (checked through ZAP by pyzmq's ``Authenticator``).
A connecting socket must know the server's public key.

Each allow directory gets its own ZAP domain, so two server sockets of one process
(the proxy's frontend and backend, say) can admit different clients. The allow list is
read when the socket is set up: restart the stage after adding a key.

The ZAP handler runs in a thread of ours rather than pyzmq's ``ThreadAuthenticator``:
that one keeps its sockets open until ``stop()`` is called, so a stage that just calls
``ctx.term()`` would hang forever. Ours closes its socket when the context terminates.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from common.errors import UserError
from zmq.auth.base import Authenticator
from zmq.utils import z85

log = logging.getLogger(__name__)


@dataclass
class CurveConfig:
    """CURVE keys for one socket. Servers (binders) authenticate clients against ``allow``.

    ``secret_file``: this side's ``.key_secret`` file (from ``soundbus keys``).
    ``server_public_file``: for a connecting socket, the public key of the side it connects to.
    ``allow_dir``: for a binding socket, a directory of client ``.key`` files allowed in.
    """

    secret_file: Path
    server_public_file: Path | None = None
    allow_dir: Path | None = None


_lock = threading.Lock()
_threads: dict[int, ZapThread] = {}  # id(context) -> its ZAP handler (checked against the context itself)


def create_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into ``directory``; returns (public, secret) paths.

    Refuses to overwrite an existing pair (the old public key may already be on other boxes).
    """
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"key name {name!r} must be a plain file name such as 'capture-box1'.")
    directory = Path(directory)
    for existing in (directory / f"{name}.key", directory / f"{name}.key_secret"):
        if existing.exists():
            raise UserError(f"{existing} already exists; pick another NAME or delete the old pair first.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        pub, sec = zmq.auth.create_certificates(str(directory), name)
        Path(sec).chmod(0o600)
    except OSError as e:
        raise UserError(f"cannot write keys into {directory} ({e.strerror}); choose a directory you can write to.") \
            from None
    return Path(pub), Path(sec)


def load_key(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys from a key file; UserError with advice when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"key file {path} does not exist; create one with `soundbus keys DIR NAME`.")
    try:
        pub, sec = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a key file written by `soundbus keys` ({e}).") from None
    if secret and not sec:
        raise UserError(f"{path} holds no secret key; pass the NAME.key_secret file, not NAME.key.")
    return pub, sec


def load_allow_dir(allow_dir: Path) -> dict[bytes, bool]:
    """Public keys allowed in: every ``*.key`` file of ``allow_dir`` (z85 key -> True)."""
    allow_dir = Path(allow_dir)
    if not allow_dir.is_dir():
        raise UserError(f"allow directory {allow_dir} does not exist; put the clients' .key files there.")
    allowed: dict[bytes, bool] = {}
    for f in sorted(allow_dir.glob("*.key")):
        pub, _ = load_key(f, secret=False)
        allowed[pub] = True
    if not allowed:
        log.warning("allow directory %s holds no .key files: every client will be refused", allow_dir)
    return allowed


class _AllowList(Authenticator):
    """pyzmq's Authenticator, logging every refused client (rate-limited) instead of at debug level."""

    def __init__(self, ctx: zmq.Context) -> None:
        super().__init__(ctx, log=logging.getLogger("soundbus.zap"))
        from common.observe.ratelog import RateLimitedLog

        self._refused = RateLimitedLog(log, every_s=10.0)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            key = z85.encode(client_key).decode()
            self._refused.warning(key, f"refused CURVE client {key} ({reason.decode()}): its .key is not allowed")
        return allowed, reason


class ZapThread(threading.Thread):
    """Answers ZAP requests of one context from allow lists keyed by ZAP domain."""

    def __init__(self, ctx: zmq.Context) -> None:
        super().__init__(name="soundbus-zap", daemon=True)
        self.auth = _AllowList(ctx)
        self._started = threading.Event()
        self._halt = threading.Event()
        self._error: BaseException | None = None

    def add_domain(self, domain: str, allowed: dict[bytes, bool]) -> None:
        # A dict assignment is atomic; the handler thread reads it per request.
        self.auth.certs[domain] = allowed

    def start_and_wait(self) -> None:
        self.start()
        self._started.wait(10)
        if self._error is not None:
            raise RuntimeError(f"ZAP handler failed to start: {self._error}")

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            self.auth.start()  # binds inproc://zeromq.zap.01 in this thread
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            self._error = e
            self._started.set()
            loop.close()
            return
        sock = self.auth.zap_socket
        self._started.set()
        try:
            while not self._halt.is_set():
                if not sock.poll(200):
                    continue
                reply = self.auth.handle_zap_message(sock.recv_multipart())
                if inspect.isawaitable(reply):  # pyzmq >= 25 makes the handler a coroutine
                    loop.run_until_complete(reply)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as e:
            if e.errno != zmq.ENOTSOCK:  # ENOTSOCK: ctx.destroy() closed our socket from another thread
                log.error("ZAP handler stopped: %s; CURVE clients can no longer be admitted", e)
        finally:
            sock.close(linger=0)
            self.auth.zap_socket = None
            loop.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def _zap_domain(ctx: zmq.Context, allow_dir: Path) -> str:
    """The ZAP domain for ``allow_dir`` in ``ctx``, starting the handler thread on first use."""
    allowed = load_allow_dir(allow_dir)
    domain = f"soundbus:{Path(allow_dir).resolve()}"[:254]
    with _lock:
        zap = _threads.get(id(ctx))
        # id() of a destroyed context may be reused by a new one: match the object itself.
        if zap is None or zap.auth.context is not ctx or not zap.is_alive():
            zap = ZapThread(ctx)
            zap.start_and_wait()
            _threads[id(ctx)] = zap
        zap.add_domain(domain, allowed)
    return domain


def apply_curve(sock: zmq.Socket, cfg: CurveConfig, server: bool) -> None:
    """Set CURVE options on ``sock`` (before bind/connect).

    Server: this side's secret key, plus the allow list of client keys (ZAP domain).
    Client: this side's key pair, plus the server's public key.
    """
    pub, sec = load_key(Path(cfg.secret_file), secret=True)
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    if server:
        if cfg.allow_dir is None:
            raise UserError(f"a binding CURVE socket needs --curve-allow DIR of client public keys.")
        sock.zap_domain = _zap_domain(sock.context, Path(cfg.allow_dir)).encode()
        # Without this, libzmq admits every client when no ZAP handler answers (e.g. it died).
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.curve_server = True
    else:
        if cfg.server_public_file is None:
            raise UserError(f"a connecting CURVE socket needs --curve-server KEY (the server's .key file).")
        server_pub, _ = load_key(Path(cfg.server_public_file), secret=False)
        sock.curve_serverkey = server_pub


def stop_authenticators() -> None:
    """Stop ZAP threads. Optional: a terminating context stops them too."""
    with _lock:
        threads = list(_threads.values())
        _threads.clear()
    for zap in threads:
        zap.stop()
