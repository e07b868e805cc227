"""Who may look: loopback by default; any other address only with a token.

- The token comes from ``--token-file PATH`` or ``$SOUNDBUS_WEB_TOKEN``, never from argv
  (``ps`` shows every argument to every user). At least 16 characters, printable, no spaces.
- A browser presents it once on the login form; the server answers with a session cookie
  (HttpOnly, SameSite=Strict) holding HMAC-SHA256(token, "soundbus-web-session"), not the
  token. Scripts may send ``Authorization: Bearer TOKEN`` instead. Comparisons are constant-time.
- Without a token (loopback only) the ``Host`` header must name a loopback address, so a
  web page elsewhere cannot reach the view through DNS rebinding. With or without a token
  a WebSocket's ``Origin`` (when sent) must be this server, so another site's page open in
  the same browser cannot read the stream (cross-site WebSocket hijacking).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from common.errors import UserError

ENV_TOKEN = "SOUNDBUS_WEB_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_BYTES = 4096
COOKIE = "soundbus_web"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: Path | None, env: dict[str, str] | None = None) -> str | None:
    """The token from ``path`` (first line) or the environment; None if neither is given.
    Raises UserError for an unreadable file or a token too short or with spaces."""
    env = os.environ if env is None else env
    if path is None:
        text = env.get(ENV_TOKEN) or None
        where = f"${ENV_TOKEN}"
        if text is None:
            return None
    else:
        where = f"--token-file {path}"
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_TOKEN_BYTES + 1)
        except OSError as e:
            raise UserError(f"cannot read {where} ({e.strerror}); give a readable file holding the token.") from None
        if len(raw) > MAX_TOKEN_BYTES:
            raise UserError(f"{where} is larger than {MAX_TOKEN_BYTES} bytes; it should hold only the token.")
        try:
            text = raw.decode().strip("\r\n")
        except UnicodeDecodeError:
            raise UserError(f"{where} is not UTF-8 text.") from None
    if len(text) < MIN_TOKEN_CHARS or not text.isprintable() or any(c.isspace() for c in text):
        raise UserError(f"the token in {where} must be at least {MIN_TOKEN_CHARS} printable characters without "
                        "spaces (e.g. from `openssl rand -hex 16`).")
    return text


@dataclass(frozen=True)
class Access:
    """The access rules of one server (see the module docstring)."""

    token: str | None
    loopback_only: bool  # the server listens on loopback only
    tls: bool = False

    @property
    def session(self) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), b"soundbus-web-session", hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def allowed(self, headers: dict[str, str] | object, cookies: dict[str, str] | object) -> bool:
        """May this request see the view? (``headers``/``cookies``: mappings, as aiohttp gives them.)"""
        if self.token is None:
            return self.host_ok(headers.get("Host", ""))  # type: ignore[attr-defined]
        auth = headers.get("Authorization", "")  # type: ignore[attr-defined]
        if auth.startswith("Bearer ") and self.token_ok(auth[7:].strip()):
            return True
        cookie = cookies.get(COOKIE, "")  # type: ignore[attr-defined]
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session.encode())

    def host_ok(self, host_header: str) -> bool:
        """Without a token: the Host header must name a loopback address (DNS rebinding)."""
        if not self.loopback_only:
            return True
        return is_loopback(_host_of(host_header))

    @staticmethod
    def origin_ok(origin: str | None, host_header: str) -> bool:
        """A browser's Origin must be this server (no Origin: not a browser, allowed)."""
        if origin is None:
            return True
        try:
            o = urlsplit(origin)
        except ValueError:
            return False
        return o.scheme in ("http", "https") and bool(o.netloc) and o.netloc.lower() == host_header.lower()


def _host_of(host_header: str) -> str:
    """'127.0.0.1:8550' -> '127.0.0.1'; '[::1]:8550' -> '::1'."""
    h = host_header.strip()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else ""
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h
