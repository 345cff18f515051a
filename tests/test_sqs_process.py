"""
streamd as its own process (C{twistd -n streamd --config FILE}) against moto: what
SIGKILL and SIGTERM do to messages in hand. Waits are on log lines, process exits
and stream contents, each with a bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import pytest_twisted
from conftest import open_stream, within
from sqs_server import moto  # noqa: F401  (fixture)
from twisted.internet.threads import deferToThread

from streamd.testing.sqs import free_port

ensure = pytest_twisted.ensureDeferred
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StreamdProcess:
    """C{twistd -n streamd --config FILE} with this checkout on the path."""

    tls = False

    def __init__(self, tmp_path, config: str, workers: int = 1,
                 tls: tuple[str, str] | None = None) -> None:
        """C{tls}: (key, certificate) files: listen with TLS only (C{ssl:})."""
        self.port = free_port()
        self.workers = workers
        self.tls = tls is not None
        path = tmp_path / f"streamd-{self.port}.toml"
        listen = f"tcp:{self.port}:interface=127.0.0.1"
        if tls is not None:
            listen = f"ssl:{self.port}:interface=127.0.0.1:privateKey={tls[0]}:certKey={tls[1]}"
        path.write_text(f'listen = ["{listen}"]\nworkers = {workers}\n' + config)
        env = dict(os.environ, PYTHONPATH=ROOT, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "streamd", "--config", str(path)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            # Its own process group: crash() kills the parent and its workers at once.
            start_new_session=True,
        )
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        self.log: list[str] = []
        self._logged = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for raw in self.proc.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace")
            with self._logged:
                self.log.append(line)
                self._logged.notify_all()

    def wait_log(self, text: str, seconds: float = 20.0) -> bool:
        """Block (at most C{seconds}) until a log line contains C{text}; whether one did."""
        with self._logged:
            return self._logged.wait_for(lambda: any(text in line for line in self.log),
                                         seconds)

    def wait_started(self, seconds: float = 20.0) -> None:
        """Block until streamd listens (at most C{seconds}); kill it and fail if not."""
        if not self.wait_log("streamd listening on", seconds):
            self.proc.kill()
            raise AssertionError("streamd did not start:\n" + "".join(self.log[-20:]))

    async def started(self, seconds: float = 20.0) -> None:
        await deferToThread(self.wait_started, seconds)

    async def exited(self, seconds: float = 20.0) -> int:
        return await deferToThread(self.proc.wait, seconds)

    def crash(self) -> None:
        """SIGKILL to the process and, with workers, to every worker at the same instant."""
        if self.workers > 1:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.crash()
            self.proc.wait(10)
        elif self.workers > 1:  # workers left behind by a parent that died alone
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def processes():
    started: list[StreamdProcess] = []
    yield started
    for p in started:
        p.kill()


def stream_config(queue_url: str, endpoint: str, stream: str = "orders", **keys) -> str:
    """The table of a stream on this queue; C{keys} add to or override its keys."""
    table = {"source": "sqs", "queue_url": queue_url, "endpoint_url": endpoint,
             "region": "us-east-1", "wait_time_seconds": 1, **keys}
    lines = [f"[streams.{stream}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@ensure
async def test_sigkill_mid_stream_every_undeleted_message_comes_back(
        tmp_path, moto, processes):  # noqa: F811
    queue = moto.create_queue()
    sent = moto.send(queue, [json.dumps({"i": i}) for i in range(20)])
    first = StreamdProcess(tmp_path, stream_config(
        queue, moto.endpoint, visibility_timeout=2, ack="client", max_unacked=5))
    processes.append(first)
    await first.started()
    reader = await open_stream(first.url + "/streams/orders")
    await reader.wait_for(5)
    in_hand = {m["id"] for m in reader.messages()}
    assert moto.counts(queue)[1] >= 5  # received, not acknowledged, not deleted

    first.proc.send_signal(signal.SIGKILL)
    assert await first.exited() == -signal.SIGKILL
    reader.done.addErrback(lambda _: None)

    second = StreamdProcess(tmp_path, stream_config(queue, moto.endpoint))
    processes.append(second)
    await second.started()
    again = await open_stream(second.url + "/streams/orders")
    # The killed streamd's messages come back once their 2 s visibility timeout ends.
    await again.wait_for(20, seconds=20)
    got = {m["id"]: m for m in again.messages()}
    assert sorted(got) == sorted(sent)
    assert all(got[i]["attributes"]["ApproximateReceiveCount"] >= 2 for i in in_hand)
    again.close()


@ensure
async def test_sigterm_gives_back_messages_in_hand_at_once(tmp_path, moto, processes):  # noqa: F811
    queue = moto.create_queue()
    moto.send(queue, [json.dumps({"i": i}) for i in range(20)])
    streamd = StreamdProcess(tmp_path, stream_config(
        queue, moto.endpoint, visibility_timeout=120, ack="client", max_unacked=5,
        max_messages=5))
    processes.append(streamd)
    await streamd.started()
    reader = await open_stream(streamd.url + "/streams/orders")
    await reader.wait_for(5)
    assert moto.counts(queue) == (15, 5)

    streamd.proc.send_signal(signal.SIGTERM)
    # twistd shuts down cleanly, then exits by the signal it was sent (Twisted re-raises
    # it so a supervisor sees why it stopped).
    assert await streamd.exited() in (0, -signal.SIGTERM)
    assert any("Server Shut Down." in line for line in streamd.log)
    await within(reader.done)  # the response ended cleanly (terminating chunk)
    assert reader.items[-1] == {"shutdown": True}
    # Visible again now, not after the 120 s visibility timeout.
    assert moto.counts(queue) == (20, 0)


@ensure
async def test_sigterm_waits_for_receives_in_flight_and_gives_back_what_they_bring(
        tmp_path, moto, processes):  # noqa: F811
    """
    Two long polls wait on an empty queue when SIGTERM comes; 20 messages are sent
    after it. SQS (and moto) go on with a long poll whose caller hung up, so cancelling
    the polls left those messages hidden for the visibility timeout (issue 11). Now
    the polls end within shutdown_timeout and their messages are visible at once.
    """
    queue = moto.create_queue()
    streamd = StreamdProcess(tmp_path, "shutdown_timeout = 5\n" + stream_config(
        queue, moto.endpoint, wait_time_seconds=20, pollers=2, visibility_timeout=120))
    processes.append(streamd)
    await streamd.started()
    reader = await open_stream(streamd.url + "/streams/orders")
    moto.send(queue, ["warm-up"])
    await reader.wait_for(1)  # the pollers poll

    streamd.proc.send_signal(signal.SIGTERM)
    assert await deferToThread(streamd.wait_log, "Received SIGTERM")
    sent = moto.send(queue, [json.dumps({"i": i}) for i in range(20)])
    # Promptly: the long polls (20 s) are cut short, not waited out.
    assert await streamd.exited(5) in (0, -signal.SIGTERM)
    assert moto.counts(queue) == (20, 0)
    assert sorted(m["MessageId"] for m in moto.receive_all(queue, 20)) == sorted(sent)


@ensure
async def test_sigterm_under_load_leaves_no_message_hidden(tmp_path, moto, processes):  # noqa: F811
    """
    SIGTERM while two pollers receive as fast as a client reads: every message was
    either read by the client or is visible again, none hidden, none twice.
    """
    queue = moto.create_queue()
    sent = moto.send(queue, [json.dumps({"i": i}) for i in range(100)])
    streamd = StreamdProcess(tmp_path, stream_config(
        queue, moto.endpoint, pollers=2, visibility_timeout=120))
    processes.append(streamd)
    await streamd.started()
    reader = await open_stream(streamd.url + "/streams/orders")
    await reader.wait_for(20)

    streamd.proc.send_signal(signal.SIGTERM)
    assert await streamd.exited() in (0, -signal.SIGTERM)
    await within(reader.done)
    read = [m["id"] for m in reader.messages()]
    assert len(set(read)) == len(read), "a message was written twice"
    visible, hidden = moto.counts(queue)
    assert hidden == 0, f"{hidden} messages hidden after SIGTERM ({visible} visible)"
    rest = [m["MessageId"] for m in moto.receive_all(queue, visible)]
    assert sorted(read + rest) == sorted(sent)
