"""
HTTP/2 in tests: a self-signed certificate (for C{serve(settings, tls=True)}), a raw
HTTP/2 client (the C{h2} library on a Twisted TLS connection) that decides, stream by
stream, whether to hand flow-control window back, and a real streamd process with a TLS
listener (L{StreamdProcess}).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
import time
from functools import lru_cache

import h2.config
import h2.connection
import h2.events
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from h2.settings import SettingCodes
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

from streamd.testing import memory_kib
from tests.support.web import TIMEOUT, Server, within


@lru_cache(maxsize=1)
def certificate() -> tuple[str, str]:
    """Paths of a key and a self-signed certificate for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )
    where = tempfile.mkdtemp(prefix="streamd-tls-")
    key_path, cert_path = os.path.join(where, "key.pem"), os.path.join(where, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class H2Response:
    """
    One request's response on an L{H2Client} connection.

    @ivar acknowledge: whether the client hands the window of received data back (a
        reading client); a client that does not is one that stopped reading this
        stream, and the server may send it only the stream's initial window.
    @ivar reset: the error code of the server's C{RST_STREAM}, if it reset the stream.
    """

    def __init__(self, client: H2Client, stream_id: int, acknowledge: bool) -> None:
        self.client = client
        self.stream_id = stream_id
        self.acknowledge = acknowledge
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.reset: int | None = None
        self.received = 0  # body bytes
        self.newlines = 0
        self.unacknowledged = 0  # flow-controlled bytes not handed back
        self.head = defer.Deferred()
        self.done = defer.Deferred()
        self._chunks: list[bytes] = []
        self._waiters: list[tuple[int, defer.Deferred]] = []

    @property
    def body(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def lines(self) -> list[bytes]:
        """The complete lines so far (not one still arriving)."""
        return [line for line in self.body.split(b"\n")[:-1] if line]

    def wait_lines(self, n: int, seconds: float = TIMEOUT) -> defer.Deferred:
        """Fires once the body holds at least C{n} line ends."""
        if self.newlines >= n:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((n, d))
        return within(d, seconds)

    def read_again(self) -> None:
        """Start acknowledging: hand back what was held, as a client that reads again."""
        self.acknowledge = True
        if self.unacknowledged:
            self.client.conn.acknowledge_received_data(self.unacknowledged, self.stream_id)
            self.unacknowledged = 0
            self.client.flush()

    def _data(self, data: bytes, flow_controlled: int) -> None:
        self._chunks.append(data)
        self.received += len(data)
        self.newlines += data.count(b"\n")
        if self.acknowledge:
            self.client.conn.acknowledge_received_data(flow_controlled, self.stream_id)
        else:
            self.unacknowledged += flow_controlled
        for n, d in list(self._waiters):
            if self.newlines >= n:
                self._waiters.remove((n, d))
                d.callback(None)


class H2Client(protocol.Protocol):
    """
    An HTTP/2 client connection. The connection-level window is opened wide at once,
    so that only the per-stream windows limit the server: what one stream's reader
    holds back cannot stall the others. C{window} is the initial window of every
    stream (C{SETTINGS_INITIAL_WINDOW_SIZE}; h2's default, 65,535 bytes, if None).
    """

    def __init__(self, window: int | None = None) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.window = window
        self.responses: dict[int, H2Response] = {}
        self.authority = b""
        self.lost = defer.Deferred()

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        if self.window is not None:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: self.window})
        self.conn.increment_flow_control_window(2**30)
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def get(self, path: str, acknowledge: bool = True) -> H2Response:
        stream_id = self.conn.get_next_available_stream_id()
        response = self.responses[stream_id] = H2Response(self, stream_id, acknowledge)
        self.conn.send_headers(stream_id, [
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", self.authority),
            (b":path", path.encode()), (b"accept", b"application/x-ndjson"),
        ], end_stream=True)
        self.flush()
        return response

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            response = self.responses.get(getattr(event, "stream_id", 0))
            if response is None:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                response.headers = dict(event.headers)
                response.status = int(response.headers[b":status"])
                response.head.callback(response)
            elif isinstance(event, h2.events.DataReceived):
                response._data(event.data, event.flow_controlled_length)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                if isinstance(event, h2.events.StreamReset):
                    response.reset = event.error_code
                if not response.done.called:
                    response.done.callback(response)
        self.flush()

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


async def h2_connect(server: Server | int, window: int | None = None) -> H2Client:
    """
    An L{H2Client} connected to C{server}'s TLS port (or to that port on 127.0.0.1),
    h2 negotiated by ALPN, trusting L{certificate}.
    """
    _, cert = certificate()
    with open(cert, "rb") as f:
        trust = ssl.Certificate.loadPEM(f.read())
    options = ssl.optionsForClientTLS("localhost", trustRoot=trust,
                                      acceptableProtocols=[b"h2"])
    port = server if isinstance(server, int) else server.tls_port.getHost().port
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    client = await within(endpoint.connect(protocol.Factory.forProtocol(
        lambda: H2Client(window))))
    client.authority = f"localhost:{port}".encode()
    return client


#: How the tests run C{twistd}: as installed beside this Python. With
#: C{STREAMD_TEST_TWISTED_H2=1} in the environment, HTTP/2 is served by Twisted's own
#: classes instead of L{streamd.web.h2}'s (to measure what that module changes; the
#: tests that need it then fail).
TWISTD = [sys.executable, "-c", """
import os
if os.environ.get("STREAMD_TEST_TWISTED_H2"):
    from twisted.web import http
    import streamd.web.site
    streamd.web.site.HTTPChannelSwitch = http._GenericHTTPChannelProtocol
from twisted.scripts.twistd import run
run()
"""]
LISTENING = re.compile(rb"streamd listening on (ssl|tcp):127\.0\.0\.1:(\d+)")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StreamdProcess:
    """
    A real C{twistd -n streamd} listening on loopback with TLS (L{certificate}: h2 by
    ALPN) and plain TCP (for publishing and status), killed by L{stop}.
    """

    def __init__(self, where: str, *args: str, seconds: float = 30.0) -> None:
        key, cert = certificate()
        self.log = os.path.join(where, "streamd.log")
        self.proc = subprocess.Popen(
            [*TWISTD, "--pidfile=", "-n", "--logfile", self.log, "streamd",
             "--listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
             "--listen", "tcp:0:interface=127.0.0.1", *args],
            cwd=where, env=dict(os.environ, PYTHONPATH=ROOT),
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        ports: dict[bytes, int] = {}
        deadline = time.monotonic() + seconds
        while len(ports) < 2:
            if os.path.exists(self.log):
                with open(self.log, "rb") as f:
                    ports = {kind: int(port) for kind, port in LISTENING.findall(f.read())}
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"streamd did not start: see {self.log}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.05)  # a bounded wait on the process, not a sleep
        self.tls_port = ports[b"ssl"]
        self.url = f"http://127.0.0.1:{ports[b'tcp']}"

    def memory_kib(self) -> dict[str, int]:
        """Its resident set now (VmRSS) and at its highest so far (VmHWM), in KiB."""
        return memory_kib(self.pid)

    def tracebacks(self) -> int:
        with open(self.log, errors="replace") as f:
            return f.read().count("Traceback")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
