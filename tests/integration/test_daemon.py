"""The twistd plugin, run as an operator runs it: a subprocess, real TCP, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streamd.testing.redis import free_port, redis_fixture  # noqa: F401
from tests.support.daemon import TWISTD, start, wait_for_line  # noqa: F401
from tests.support.h2 import certificate

# twistd as installed beside this Python (what `twistd` on PATH runs).






def test_serves_and_exits_cleanly_on_sigterm(tmp_path):
    proc, port = start(tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        stream = urllib.request.urlopen(base + "/streams/demo?limit=1", timeout=10)
        req = urllib.request.Request(base + "/streams/demo/messages", data=b'{"hello": 1}',
                                     headers={"Content-Type": "application/json"})
        assert json.load(urllib.request.urlopen(req, timeout=10)) == {"ids": ["1"]}
        assert json.loads(stream.readline()) == {"id": "1", "stream": "demo",
                                                 "data": {"hello": 1}}
        # An open stream at shutdown is told, then ended with the terminating chunk.
        open_stream = urllib.request.urlopen(base + "/streams/demo", timeout=10)
        info = json.load(urllib.request.urlopen(base + "/", timeout=10))
        assert info["open_streams"] == 1
        sse = urllib.request.urlopen(base + "/streams/demo?format=sse", timeout=10)
        assert sse.readline() == b": streamd\n"
        proc.send_signal(signal.SIGTERM)
        # Each open stream is told, then ended with its terminating chunk.
        assert json.loads(open_stream.readline()) == {"shutdown": True}
        assert open_stream.read() == b""  # a clean end, not a reset
        assert b"event: shutdown\ndata: true\n\n" in sse.read()
        # No new connections are accepted.
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(base + "/", timeout=5)
        # And the process exits 0 within shutdown_timeout (default 10 s).
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_over_tls_does_not_wait_for_a_reader_that_never_answers_close_notify(
        tmp_path, workers):
    # A reader that reads to the end of its stream and keeps its socket (Python's ssl
    # module does not answer a close_notify by itself): the process used to wait the
    # whole shutdown_timeout for the answer.
    key, cert = certificate()
    port = free_port()
    proc, _ = start(tmp_path, "--listen",
                    f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                    "--workers", workers, "--shutdown-timeout", "60")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), 10)) as tls:
            tls.settimeout(20)
            tls.sendall(b"GET /streams/demo HTTP/1.1\r\nHost: streamd\r\n\r\n")
            received = tls.recv(65536)
            assert received.startswith(b"HTTP/1.1 200 ")
            proc.send_signal(signal.SIGTERM)
            while chunk := tls.recv(65536):  # to the close_notify
                received += chunk
            assert received.endswith(b'{"shutdown":true}\n\r\n0\r\n\r\n')
            assert proc.wait(20) == 0  # not after 60 s: the socket is still open here
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    ("toml", "args", "named"),
    [
        ('heartbeat = "soon"\n', [], "heartbeat"),
        ("colour = 3\n", [], "colour"),
        ('[streams.orders]\nsource = "kafka"\n', [], "streams.orders.source"),
        ('[streams.orders]\nmax_pending = 0\n', [], "streams.orders.max_pending"),
        # A kind's own key: checked by the kind (settings are read without importing it).
        ('[streams.orders]\nsource = "sqs"\nqueue_url = "sqs://q"\n', [],
         "streams.orders.queue_url"),
        ("", ["--listen", "tcp:notaport"], "listen"),
        ("", ["--slow-policy", "wait"], "slow_policy"),
    ],
)
def test_bad_config_exits_nonzero_with_one_line_naming_the_key(tmp_path, toml, args, named):
    cfg = tmp_path / "streamd.toml"
    cfg.write_text(toml)
    proc = subprocess.run(
        [*TWISTD, "-n", "streamd", "--config", str(cfg), *args],
        cwd=tmp_path, capture_output=True, timeout=60,
    )
    assert proc.returncode != 0
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"streamd: config error: {named}:"), err


@pytest.fixture
def busy_port():
    """A loopback port that this test holds (bound and listening), so streamd cannot."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run_to_exit(tmp_path: Path, *args: str, seconds: float = 30.0):
    """
    Run C{twistd -n streamd ARGS} to its end, within C{seconds} (else the test fails);
    return it and its log.
    """
    log = tmp_path / "streamd.log"
    proc = subprocess.run(
        [*TWISTD, "--pidfile=", "-n", "--logfile", str(log), "streamd", *args],
        cwd=tmp_path, capture_output=True, timeout=seconds,
    )
    return proc, log.read_text()


def test_a_port_in_use_exits_nonzero_at_once_naming_the_endpoint(tmp_path, busy_port):
    busy = f"tcp:{busy_port}:interface=127.0.0.1"
    # At once: not after the shutdown timeout, nor never.
    proc, log = run_to_exit(tmp_path, "--listen", busy, seconds=15)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert f"streamd: cannot listen on {busy}:" in err, err
    assert "already in use" in err
    assert f"cannot listen on {busy}" in log


def test_one_busy_listen_of_two_stops_streamd_too(tmp_path, busy_port):
    free = "tcp:0:interface=127.0.0.1"
    busy = f"tcp:{busy_port}:interface=127.0.0.1"
    proc, log = run_to_exit(tmp_path, "--listen", free, "--listen", busy)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert f"streamd: cannot listen on {busy}:" in err and free not in err, err


def test_a_clean_shutdown_does_not_report_redis_down(tmp_path, redis):
    cfg = tmp_path / "streamd.toml"
    cfg.write_text(f'[redis]\nurl = "{redis.url}"\n'
                   '[streams.chat]\nsource = "redis-pubsub"\nchannels = ["chat"]\n'
                   '[streams.jobs]\nsource = "redis-list"\nkey = "jobs"\n'
                   '[streams.log]\nsource = "redis-stream"\nkey = "log"\n')
    proc, _ = start(tmp_path, "--config", str(cfg))
    log = tmp_path / "streamd.log"
    try:
        wait_for_line(proc, log, re.compile(rb"redis (default) \(.*\) is up"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Server Shut Down" in text
    assert "is down" not in text and "Traceback" not in text, text


def test_twistd_lists_the_plugin(tmp_path):
    out = subprocess.run([*TWISTD, "--help"], capture_output=True, timeout=60, cwd=tmp_path)
    assert re.search(rb"^\s+streamd\s", out.stdout, re.M)


def test_config_file_declares_streams_and_command_line_wins(tmp_path):
    cfg = tmp_path / "streamd.toml"
    cfg.write_text('heartbeat = 30\n[streams.alerts]\nsource = "memory"\nbuffer = 5\n')
    proc, port = start(tmp_path, "--config", str(cfg), "--heartbeat", "0.05")
    try:
        base = f"http://127.0.0.1:{port}"
        info = json.load(urllib.request.urlopen(base + "/", timeout=10))
        assert list(info["sources"]) == ["alerts"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/streams/other", timeout=10)
        assert e.value.code == 404
        stream = urllib.request.urlopen(base + "/streams/alerts", timeout=10)
        assert "heartbeat" in json.loads(stream.readline())  # 0.05 s from the CLI, not 30
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


if os.environ.get("STREAMD_SKIP_DAEMON"):  # pragma: no cover
    pytest.skip("daemon tests disabled", allow_module_level=True)
