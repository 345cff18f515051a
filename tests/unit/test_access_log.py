"""The access log: gathered off the request's path, written once a second, no secrets."""

import io

from twisted.internet.task import Clock

from streamd.web.access import FLUSH_BYTES, LOG_FLUSH_BYTES, AccessLog, open_access_log


class _Request:
    def __init__(self, uri: bytes) -> None:
        self.uri = uri
        self.method = b"GET"
        self.clientproto = b"HTTP/1.1"
        self.code = 200
        self.sentLength = 12

    def getClientAddress(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 5555)

    def getHeader(self, name):
        return {b"referer": None, b"user-agent": b"curl/8"}.get(name)

    def getUser(self):
        return b""


def test_lines_are_gathered_and_written_once_a_second_without_tokens():
    out = io.StringIO()
    clock = Clock()
    clock.advance(1_700_000_000)
    log = AccessLog(out, clock)
    log.log(_Request(b"/streams/a?access_token=s3cr3t&limit=1"))
    log.log(_Request(b"/streams/b"))
    assert out.getvalue() == ""  # nothing written in the request's path
    clock.advance(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert '"GET /streams/a?access_token=REDACTED&limit=1 HTTP/1.1" 200 12' in lines[0]
    assert "s3cr3t" not in out.getvalue()
    assert lines[1].startswith('"127.0.0.1" - - [14/Nov/2023:22:13:20 +0000]')


def test_a_full_buffer_is_written_at_once():
    out = io.StringIO()
    log = AccessLog(out, Clock())
    while not out.getvalue():
        log.log(_Request(b"/streams/x" + b"y" * 100))
    assert len(out.getvalue()) >= FLUSH_BYTES


def test_file_and_off(tmp_path):
    path = tmp_path / "access.log"
    clock = Clock()
    log = open_access_log("file", str(path), clock, json_lines=True)
    log.log(_Request(b"/"))
    log.flush()
    import json

    line = json.loads(path.read_text())
    assert line["namespace"] == "streamd.access" and '"GET / HTTP/1.1"' in line["message"]
    assert open_access_log("off", str(path), clock, False) is None


def test_log_mode_writes_streamd_access_events():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        log = open_access_log("log", "", Clock(), json_lines=False)
        log.log(_Request(b"/streams/a?token=x"))
        log.flush()
    finally:
        globalLogPublisher.removeObserver(events.append)
    (event,) = [e for e in events if e.get("log_namespace") == "streamd.access"
                and "line" in e]
    assert '"GET /streams/a?token=REDACTED HTTP/1.1"' in event["line"]


def test_log_mode_hands_over_small_pieces_so_the_reactor_never_stalls_long():
    # Each line in the log is an event for Twisted's observers (about 20 µs each): a
    # 64 KiB batch of them held the reactor ~9 ms at once, and every stream waited.
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        log = open_access_log("log", "", Clock(), json_lines=False)
        for _ in range(200):
            log.log(_Request(b"/streams/x"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    batches = [e for e in events if e.get("log_namespace") == "streamd.access"]
    assert len(batches) >= 150  # most written before the second is up
    assert log.size <= LOG_FLUSH_BYTES < FLUSH_BYTES // 8
