"""
A reconnect storm: thousands of readers connecting to a stream as fast as C{connect()}
goes, and the machine's count of connections a full listen queue turned away. Used by
tests/integration/test_backlog.py and bench/storm.py.
"""

from __future__ import annotations

import selectors
import socket
import time

#: Linux's value, for Pythons whose socket module does not name it.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def listen_overflows() -> int:
    """The machine's count of SYNs or connections a full listen queue turned away."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=True):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], map(int, values.split()[1:]), strict=True))
            return table["ListenOverflows"] + table["ListenDrops"]
    raise AssertionError("no TcpExt counters in /proc/net/netstat")


def storm(port: int, count: int, seconds: float = 120.0) -> tuple[int, int]:
    """
    Open C{count} readers of one stream as fast as connect() goes (from 127.0.0.2-9, so no
    source address runs out of ports), each a keep-alive C{GET}; then, once all are in,
    publish one message. Returns (readers answered 200, readers that got the message).
    """
    request = (b"GET /streams/storm HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Accept: application/x-ndjson\r\n\r\n")
    sel = selectors.DefaultSelector()
    got: dict[socket.socket, bytes] = {}
    for i in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((f"127.0.0.{2 + i % 8}", 0))
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE)
        got[s] = b""
    deadline = time.monotonic() + seconds
    published = False
    answered = lambda: sum(b" 200 " in v for v in got.values())  # noqa: E731
    reached = lambda: sum(b'"storm-1"' in v for v in got.values())  # noqa: E731
    try:
        while time.monotonic() < deadline and reached() < count:
            for key, events in sel.select(timeout=0.5):
                s = key.fileobj
                if events & selectors.EVENT_WRITE:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        sel.unregister(s)  # refused or reset: never answered
                        continue
                    s.send(request)
                    sel.modify(s, selectors.EVENT_READ)
                else:
                    try:
                        data = s.recv(65536)
                    except ConnectionError:
                        data = b""
                    if not data:
                        sel.unregister(s)
                    got[s] += data
            if not published and answered() == count:
                published = True
                with socket.create_connection(("127.0.0.1", port), timeout=10) as p:
                    p.sendall(b"POST /streams/storm/messages HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 9\r\n"
                              b'Connection: close\r\n\r\n"storm-1"')
                    while p.recv(65536):
                        pass
        return answered(), reached()
    finally:
        for s in got:
            s.close()
