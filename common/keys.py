"""CURVE keys and client authentication (ZAP) for links between machines.

Key files are the ones pyzmq's ``zmq.auth.create_certificates`` writes:
``NAME.key`` (public, safe to copy) and ``NAME.key_secret`` (keep on its box).
A binding socket is a CURVE server: it accepts only clients whose public ``.key``
file is in its allow directory (ZAP, via zmq.auth's ThreadAuthenticator).
A connecting socket must know the server's public key.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

if TYPE_CHECKING:
    from common.sockets import CurveConfig

log = logging.getLogger(__name__)

_authenticators: dict[int, ThreadAuthenticator] = {}
_lock = threading.Lock()


def create_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into ``directory``; returns (public, secret) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    pub, sec = zmq.auth.create_certificates(str(directory), name)
    Path(sec).chmod(0o600)
    return Path(pub), Path(sec)


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise SystemExit(f"soundbus: key file {path} does not exist; create one with `soundbus keys DIR NAME`.")
    pub, sec = zmq.auth.load_certificate(str(path))
    if secret and sec is None:
        raise SystemExit(f"soundbus: {path} holds no secret key; pass the NAME.key_secret file, not NAME.key.")
    return pub, sec


def _authenticator(ctx: zmq.Context, allow_dir: Path) -> None:
    with _lock:
        auth = _authenticators.get(id(ctx))
        if auth is None:
            auth = ThreadAuthenticator(ctx, log=logging.getLogger("soundbus.zap"))
            auth.start()
            _authenticators[id(ctx)] = auth
        if not allow_dir.is_dir():
            raise SystemExit(f"soundbus: allow directory {allow_dir} does not exist; put the clients' .key files there.")
        auth.configure_curve(domain="*", location=str(allow_dir))


def apply_curve(sock: zmq.Socket, cfg: "CurveConfig", server: bool) -> None:
    """Set CURVE options on ``sock`` (before bind/connect)."""
    pub, sec = _load(Path(cfg.secret_file), secret=True)
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    if server:
        if cfg.allow_dir is None:
            raise SystemExit("soundbus: a binding CURVE socket needs --curve-allow DIR of client public keys.")
        _authenticator(sock.context, Path(cfg.allow_dir))
        sock.curve_server = True
    else:
        if cfg.server_public_file is None:
            raise SystemExit("soundbus: a connecting CURVE socket needs --curve-server KEY (the server's .key file).")
        server_pub, _ = _load(Path(cfg.server_public_file), secret=False)
        sock.curve_serverkey = server_pub


def stop_authenticators() -> None:
    """Stop ZAP threads (call before terminating a context)."""
    with _lock:
        for auth in _authenticators.values():
            auth.stop()
        _authenticators.clear()
