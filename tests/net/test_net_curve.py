"""CURVE both ways: a peer without an allowed key neither receives nor injects anything.

The broker is a real ``soundbus proxy`` process; the peers are real sockets made through
common.transport.sockets with the same options the stages use. Negative results are read only
after the refusal was observed (the proxy's ZAP log line, or the client's handshake-failed
monitor event) and after the allowed peers exchanged hundreds of messages since.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import time

import zmq
import zmq.auth

from common.wire import decode_parts
from common.transport.sockets import SocketOptions
from tests.conftest import ROOT, tcp
from tests.net.conftest import KeyRing, RawFeeder, Watch, client_sub, drain, start_proxy, watched_sub


def _z85(path) -> str:
    pub, _ = zmq.auth.load_certificate(str(path))
    return pub.decode()


def test_proxy_with_curve_admits_only_allowed_keys_both_ways(procs, keyring: KeyRing, ctx) -> None:
    proxy_key = keyring.pair("proxy", allowed=False)
    good_pub, good_sub = keyring.pair("good-pub", True), keyring.pair("good-sub", True)
    rogue_pub, rogue_sub = keyring.pair("rogue-pub", False), keyring.pair("rogue-sub", False)
    fe, be = tcp(), tcp()
    proxy = start_proxy(procs, "--frontend", fe, "--backend", be, *keyring.server_flags(proxy_key))
    proxy.wait_for("ready")

    sub_ok = client_sub(ctx, be, KeyRing.client_opts(good_sub, proxy_key), [b"raw/"])
    sub_rogue, watch_rogue = watched_sub(ctx, be, KeyRing.client_opts(rogue_sub, proxy_key), [b"raw/"])
    sub_plain, watch_plain = watched_sub(ctx, be, SocketOptions(), [b"raw/"])

    feeders = [
        RawFeeder(ctx, [">" + fe], ["good"], KeyRing.client_opts(good_pub, proxy_key)),
        RawFeeder(ctx, [">" + fe], ["rogue"], KeyRing.client_opts(rogue_pub, proxy_key)),
        RawFeeder(ctx, [">" + fe], ["plain"], SocketOptions()),
    ]
    watch_feed_plain = Watch(feeders[2].pub.socket)
    for f in feeders:
        f.start()
    try:
        # Every refusal happened (ZAP said no to both rogue keys; the plaintext peers failed the handshake) ...
        proxy.wait_for("refused CURVE client " + re.escape(_z85(rogue_sub.public)))
        proxy.wait_for("refused CURVE client " + re.escape(_z85(rogue_pub.public)))
        watch_rogue.wait(Watch.FAILED)
        watch_plain.wait(Watch.FAILED | zmq.EVENT_DISCONNECTED)
        watch_feed_plain.wait(Watch.FAILED | zmq.EVENT_DISCONNECTED)
        # ... then the allowed pair exchanges 300 more messages.
        got: list = []
        while len(got) < 300:
            assert sub_ok.poll(10_000), "allowed subscriber received nothing from the allowed publisher"
            got.append(decode_parts(sub_ok.recv_multipart()))
        got += [decode_parts(m) for m in drain(sub_ok)]
    finally:
        for f in feeders:
            f.stop()
    assert {m.stream for m in got} == {"good"}, "an unauthenticated publisher injected messages"
    seqs = [m.header.seq for m in got]
    assert seqs == sorted(seqs)
    assert drain(sub_rogue) == [], "a subscriber with a key not in the allow list received messages"
    assert drain(sub_plain) == [], "a plaintext subscriber received messages"
    for w in (watch_rogue, watch_plain, watch_feed_plain):
        w.close()
    assert proxy.stop() == 0, proxy.log()


def test_keys_command_writes_private_secret_and_refuses_to_overwrite(tmp_path) -> None:
    cmd = [sys.executable, "-m", "common.cli.net", "keys", str(tmp_path / "k"), "box1"]
    first = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert first.returncode == 0, first.stderr
    pub, sec = tmp_path / "k" / "box1.key", tmp_path / "k" / "box1.key_secret"
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(str(sec))
    assert secret and zmq.auth.load_certificate(str(pub)) == (public, None)
    assert "--curve-secret" in first.stdout and "--curve-allow" in first.stdout and "--curve-server" in first.stdout
    before = sec.read_bytes()
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert sec.read_bytes() == before


def test_curve_server_without_allow_dir_is_a_clear_error(procs, keyring: KeyRing) -> None:
    me = keyring.pair("proxy", allowed=False)
    p = start_proxy(procs, "--frontend", tcp(), "--backend", tcp(), "--curve-secret", str(me.secret))
    assert p.wait(20) != 0
    p.wait_for("--curve-allow")
    assert "Traceback" not in p.log()


def test_stage_input_bound_as_curve_server_takes_only_allowed_publishers(procs, keyring: KeyRing, ctx) -> None:
    """convert binds its input (``--input @ADDR``) as a CURVE server; captures connect to it."""
    from common.wire import Kind, topic_for
    from tests.conftest import start

    inference, good, rogue = keyring.pair("inference", True), keyring.pair("capture-good", True), keyring.pair("rogue", False)
    raw, tensor = tcp(), tcp()
    convert = start(procs, "convert", "--input", "@" + raw, "--output", "@" + tensor,
                    *keyring.server_flags(inference), "--curve-server", str(inference.public))
    convert.wait_for("ready")
    out = client_sub(ctx, tensor, KeyRing.client_opts(inference, inference), [topic_for(Kind.TENSOR)])
    caps = [
        start(procs, "capture", "--source", f"synth:tone#{name}", "--output", ">" + raw, "--wait-subscriber", "0",
              "--curve-secret", str(key.secret), "--curve-server", str(inference.public))
        for name, key in (("good", good), ("rogue", rogue))
    ]
    plain = start(procs, "capture", "--source", "synth:noise#plain", "--output", ">" + raw, "--wait-subscriber", "0")
    convert.wait_for("refused CURVE client " + re.escape(_z85(rogue.public)))
    got = []
    while len(got) < 60:  # ~2 s of the allowed capture, all after the rogue was refused
        assert out.poll(20_000), f"no tensors from the allowed capture:\n{convert.log()}"
        got.append(decode_parts(out.recv_multipart()))
    assert {m.stream for m in got} == {"good"}, "an unauthenticated capture injected a stream"
    assert plain.proc.poll() is None and all(c.proc.poll() is None for c in caps)


def test_two_server_sockets_in_one_process_keep_their_own_allow_lists(tmp_path, ctx) -> None:
    """One ZAP handler per process, one domain per allow directory (the proxy's two sides may differ)."""
    from common.transport.keys import create_keypair
    from common.transport.sockets import CurveConfig, open_socket

    server_pub, server_sec = create_keypair(tmp_path / "server", "server")
    client_pub, client_sec = create_keypair(tmp_path / "client", "client")
    allow_x, allow_y = tmp_path / "x", tmp_path / "y"
    allow_x.mkdir()
    allow_y.mkdir()
    (allow_x / "client.key").write_bytes(client_pub.read_bytes())
    addr_x, addr_y = tcp(), tcp()
    pub_x = open_socket(ctx, zmq.PUB, ["@" + addr_x], SocketOptions(curve=CurveConfig(server_sec, None, allow_x)))
    pub_y = open_socket(ctx, zmq.PUB, ["@" + addr_y], SocketOptions(curve=CurveConfig(server_sec, None, allow_y)))
    client = SocketOptions(curve=CurveConfig(client_sec, server_pub, None))
    sub_x = client_sub(ctx, addr_x, client, [b""])
    sub_y, wy = watched_sub(ctx, addr_y, client, [b""])
    wy.wait(Watch.FAILED)  # refused (it retries, so the event repeats after the monitor is attached)
    got, deadline = 0, time.monotonic() + 20
    while got < 20:
        assert time.monotonic() < deadline, "the client allowed by X received nothing from X"
        pub_x.send(b"x")
        pub_y.send(b"y")
        if sub_x.poll(50):
            assert sub_x.recv() == b"x"
            got += 1
    assert drain(sub_y) == []
    wy.close()
    for s in (pub_x, pub_y, sub_x, sub_y):
        s.close(0)


def test_curve_server_fails_closed_when_its_zap_handler_is_gone(tmp_path, ctx) -> None:
    """libzmq admits any client when no ZAP handler answers, unless ZAP_ENFORCE_DOMAIN is set: we set it."""
    from common.transport.keys import create_keypair, stop_authenticators
    from common.transport.sockets import CurveConfig, open_socket

    server_pub, server_sec = create_keypair(tmp_path / "server", "server")
    client_pub, client_sec = create_keypair(tmp_path / "client", "client")
    allow = tmp_path / "allow"
    allow.mkdir()
    (allow / "client.key").write_bytes(client_pub.read_bytes())
    addr = tcp()
    pub = open_socket(ctx, zmq.PUB, ["@" + addr], SocketOptions(curve=CurveConfig(server_sec, None, allow)))
    stop_authenticators()
    sub, watch = watched_sub(ctx, addr, SocketOptions(curve=CurveConfig(client_sec, server_pub, None)), [b""])
    watch.wait(Watch.FAILED | zmq.EVENT_DISCONNECTED)
    for _ in range(50):
        pub.send(b"x")
    assert drain(sub, quiet_ms=300) == [], "a CURVE server without its ZAP handler let a client in"
    watch.close()
    pub.close(0)
    sub.close(0)


def test_curve_is_per_direction_encrypted_input_plain_loopback_output(procs, keyring: KeyRing, ctx) -> None:
    """convert connects to a CURVE capture (--curve-server) and publishes plain on loopback (no --curve-allow)."""
    from common.wire import Kind, topic_for
    from tests.conftest import start

    capture_key, inference = keyring.pair("capture", False), keyring.pair("inference", True)
    raw, tensor = tcp(), tcp()
    cap = start(procs, "capture", "--source", "synth:tone#t", "--output", "@" + raw, "--wait-subscriber", "0",
                *keyring.server_flags(capture_key))
    cap.wait_for("ready")
    convert = start(procs, "convert", "--input", raw, "--output", "@" + tensor,
                    "--curve-secret", str(inference.secret), "--curve-server", str(capture_key.public))
    convert.wait_for("ready")
    plain = ctx.socket(zmq.SUB)  # no keys at all
    plain.setsockopt(zmq.LINGER, 0)
    plain.setsockopt(zmq.SUBSCRIBE, topic_for(Kind.TENSOR))
    plain.connect(tensor)
    assert plain.poll(20_000), f"no plain tensors on loopback:\n{convert.log()}"
    assert decode_parts(plain.recv_multipart()).stream == "t"
    # and the network side really is encrypted: a plain subscriber to the capture gets nothing
    sniff = ctx.socket(zmq.SUB)
    sniff.setsockopt(zmq.LINGER, 0)
    sniff.setsockopt(zmq.SUBSCRIBE, b"")
    sniff.connect(raw)
    assert not sniff.poll(1500), "a plaintext subscriber received from a CURVE capture"
    assert "not encrypted" not in convert.log()  # the plain side is loopback: no warning
    plain.close()
    sniff.close()


def test_curve_secret_alone_is_a_clear_error(procs, keyring: KeyRing) -> None:
    from tests.conftest import start

    me = keyring.pair("me", False)
    p = start(procs, "convert", "--input", tcp(), "--output", tcp(), "--curve-secret", str(me.secret))
    assert p.wait(30) == 2
    assert "--curve-allow" in p.log() and "--curve-server" in p.log()
