"""``soundbus web`` as a process: a bad flag is one sentence and exit 2; a token opens other hosts;
it runs without torch; it prints the address it serves and stops cleanly."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common.cli.main import run
from common.cli.process import ChildProcess
from tests.conftest import ROOT
from web.cli import register

TOKEN = "0123456789abcdef-token"


def web(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``soundbus web ARGS`` in this process (the same code path as the command: run() prints a UserError
    and returns 2); stops before serving anything when a flag is wrong."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            try:
                code = run(["web", *args], registers=[register])
            except SystemExit as e:  # argparse
                code = e.code
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


def one_sentence(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_bad_flags_are_one_sentence_and_exit_2(tmp_path: Path) -> None:
    env = {"SOUNDBUS_WEB_TOKEN": ""}
    r = subprocess.run([sys.executable, "-m", "web", "--listen", "0.0.0.0:0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, **env}, check=False)  # once as the real command
    one_sentence(r, "serves other hosts")
    one_sentence(web("--listen", "0.0.0.0:0", env=env), "serves other hosts", "--token-file", "SOUNDBUS_WEB_TOKEN")
    one_sentence(web("--listen", "[::]:0", env=env), "token")
    one_sentence(web("--listen", "localhost", env=env), "HOST:PORT")
    one_sentence(web("--listen", "127.0.0.1:70000", env=env), "0 to 65535")
    one_sentence(web("--listen", "no.such.host.invalid:8550", env=env), "--listen")
    one_sentence(web("--token-file", str(tmp_path / "missing")), "--token-file", "readable")
    short = tmp_path / "short"
    short.write_text("abc\n")
    one_sentence(web("--token-file", str(short)), "at least 16")
    one_sentence(web(env={"SOUNDBUS_WEB_TOKEN": "has a space in it!!"}), "without spaces")
    one_sentence(web("--tls-cert", str(short)), "--tls-key")
    one_sentence(web("--tls-cert", str(short), "--tls-key", str(short)), "PEM")
    one_sentence(web("--events-dir", str(tmp_path / "nope")), "--events-dir")
    one_sentence(web("--stream", "bad name"), "--stream")
    one_sentence(web("--stage-health", str(tmp_path / "no" / "dir" / "h.json")), "--stage-health")
    one_sentence(web("--input", "tcp://127.0.0.1"), "address")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        one_sentence(web("--listen", f"127.0.0.1:{s.getsockname()[1]}"), "in use")
    r = web("--update-hz", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def _torchless_env(tmp_path: Path) -> dict[str, str]:
    blocker = tmp_path / "blocked" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'torch' (blocked by the test)\")\n")
    return {"PYTHONPATH": f"{blocker.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_other_hosts_with_a_token_file_and_no_torch(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    p = ChildProcess([sys.executable, "-m", "web", "--listen", "0.0.0.0:0", "--token-file", str(token)], cwd=ROOT,
                     env={**_torchless_env(tmp_path), "SOUNDBUS_WEB_TOKEN": ""})
    try:
        line = p.wait_for(r"ready http://", timeout=60)
        port = int(re.search(r"ready http://\S+:(\d+)/", line).group(1))
        assert any("soundbus web: serving http://0.0.0.0:" in x for x in p.lines)
        assert any("plain HTTP" in x for x in p.lines)  # the token travels in clear: it says so
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=10)
        assert e.value.code == 401
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
        assert urllib.request.urlopen(req, timeout=10).status == 200
        assert TOKEN not in " ".join(p.argv)
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(15) == 0
    finally:
        p.stop()


def test_https_with_a_certificate_and_a_secure_cookie(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1"],
                   check=True, capture_output=True)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    p = ChildProcess([sys.executable, "-m", "web", "--listen", "127.0.0.1:0", "--token-file", str(token),
                      "--tls-cert", str(cert), "--tls-key", str(key)], cwd=ROOT)
    try:
        url = re.search(r"ready (https://\S+)", p.wait_for(r"ready https://", timeout=60)).group(1)
        ctx = ssl.create_default_context(cafile=str(cert))
        with pytest.raises(urllib.error.HTTPError) as e:  # the login page, over TLS
            urllib.request.urlopen(url, timeout=10, context=ctx)
        assert e.value.code == 401
        req = urllib.request.Request(url + "login", data=f"token={TOKEN}".encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), _NoRedirect())
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(req, timeout=10)
        assert e.value.code == 303 and "Secure" in e.value.headers["Set-Cookie"]
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP on the TLS port is not served
            urllib.request.urlopen(url.replace("https://", "http://"), timeout=10)
    finally:
        p.stop()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):  # the 303 itself is what the test reads
        return None
